#!/usr/bin/env python
"""Copy a trained run's exported model into the package as a bundled model, with a model card.

    python bench/bundle_model.py runs/perov_5_cpu_fast600 --name perov_5_cpu \
        --suited-for "ABX3 perovskites, 5 atoms per cell" \
        --metrics bench/results/perov_5/k1_all_paper_fast600.metrics.json \
        --metrics bench/results/perov_5/k1_all_fast_fast600.metrics.json \
        --metrics bench/results/perov_5/k20_first200_fast_fast600.metrics.json \
        --notes bench/model_notes/perov_5_cpu.md

The weights are re-exported from ``RUN/model`` (safetensors + config.json); the card records the
data protocol, the training recipe as the run's config has it, training time, one row per metrics
file of `diffcsp evaluate` (with the sampler read from its predictions file) and the notes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from diffcsp.checkpoint import BUNDLED_DIR, export_model, load_model
from diffcsp.fileio import write_text
from diffcsp.predictions import Predictions
from diffcsp.registry import get_dataset
from diffcsp.sampler import sampler_preset
from diffcsp.training import CPU_MODEL, PAPER_MODEL

ROOT = Path(__file__).resolve().parents[1]


def _optimiser(config: dict) -> str:
    """The training recipe in words, from the run's config (the card must not claim another one)."""
    schedule = (f"ReduceLROnPlateau (factor {config['lr_factor']}, patience {config['lr_patience']}, min {config['min_lr']})"
                if config.get("lr_schedule", "plateau") == "plateau" else "warm-up then cosine decay")
    ema = f", EMA of the weights (decay {config['ema_decay']})" if config.get("ema_decay") else ""
    precision = f", {config['precision']} autocast" if config.get("precision", "fp32") != "fp32" else ""
    return f"Adam lr {config['lr']}, {schedule}, gradient clipping by value {config['grad_clip']}{ema}{precision}"


def _command(config: dict, run: Path) -> str:
    """The `diffcsp train` command that reproduces the run (flags only where they differ from the defaults)."""
    cmd = f"diffcsp train --dataset {config['dataset']} --preset {config['preset']}"
    cmd += " --task gen" if config.get("task") == "gen" else ""
    cmd += f" --init-from {config['init_from']}" if config.get("init_from") else ""
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"), ("--lr-schedule", "lr_schedule"),
                      ("--ema-decay", "ema_decay"), ("--precision", "precision")):
        if config.get(key) not in (None, "plateau", "fp32", 0, 0.0):
            cmd += f" {flag} {config[key]}"
    preset_model = CPU_MODEL if config["preset"] == "cpu" else PAPER_MODEL
    for flag, key in (("--hidden", "hidden"), ("--num-layers", "num_layers"), ("--num-freqs", "num_freqs")):
        if config["model"].get(key, preset_model[key]) != preset_model[key]:
            cmd += f" {flag} {config['model'][key]}"
    return cmd + f" --out {run}"


def _sampler(predictions: Path) -> tuple[str, int | None]:
    """How a predictions file was sampled (from its header), and its crystal limit.

    A file sampled with exactly the settings of its dataset's ``auto`` preset is labelled as the
    default, whatever name it recorded (older files record none)."""
    path = predictions if predictions.is_absolute() else ROOT / predictions
    if not path.is_file():
        return "not recorded (predictions file missing)", None
    preds = Predictions.load(path)
    meta = preds.meta
    kappa = meta.get("corrector_temperature", 1.0)  # files written before κ existed: the paper's 1
    auto = sampler_preset("auto", preds.dataset, preds.task)
    auto_gamma = get_dataset(preds.dataset).step_lr(preds.task, preds.num_samples) * auto.step_lr_scale
    is_auto = (meta["steps"] == (auto.steps or meta["model"]["timesteps"]) and kappa == auto.corrector_temperature
               and meta.get("predictor_temperature", 1.0) == 1.0  # no preset cools the predictor
               and meta.get("method", "pc") == auto.method and meta.get("schedule", "uniform") == auto.schedule
               and math.isclose(meta["step_lr"], auto_gamma, rel_tol=1e-9))
    name = meta.get("sampler") or ("paper" if kappa == 1 else "")
    if name not in ("", "custom", "auto") and sampler_preset(name, preds.dataset, preds.task).corrector_temperature != kappa:
        name = "custom"  # files from before `custom` was recorded name the preset an explicit κ overrode
    if is_auto:
        name = f"{name} (= default `auto`)" if name not in ("", "custom", "auto") else "default `auto`"
    text = ", ".join(part for part in (name, f"{meta['steps']} steps", "" if kappa == 1 else f"κ = {kappa:g}") if part)
    return text, meta.get("limit")


def _repo_relative(metrics: dict) -> dict:
    """The metrics with their predictions path relative to the repository (the generation
    benchmark records absolute ones), so a shipped config names no path of this machine."""
    path = Path(metrics.get("predictions", ""))
    if path.is_absolute() and path.is_relative_to(ROOT):
        metrics["predictions"] = str(path.relative_to(ROOT))
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--suited-for", required=True, help="one line: which compositions the model is for")
    ap.add_argument("--metrics", type=Path, action="append", default=[], help="JSON from `diffcsp evaluate --json` (repeatable)")
    ap.add_argument("--notes", type=Path, help="Markdown appended to the card (comparison with the paper, how to use it)")
    args = ap.parse_args()

    run = args.run
    config = json.loads((run / "config.json").read_text())
    protocol = json.loads((run / "protocol.json").read_text())
    meta = json.loads((run / "model" / "config.json").read_text())["meta"]
    metrics = [_repo_relative(json.loads(p.read_text())) for p in args.metrics]
    model = load_model(run / "model")
    meta.update(suited_for=args.suited_for, protocol_detail={k: protocol[k] for k in ("name", "train", "val", "train_size", "val_size")},
                metrics=metrics)
    out = export_model(model, BUNDLED_DIR / args.name, meta=meta)
    cfg = model.config
    lines = [
        f"# Model card: `{args.name}`", "",
        f"**Suited for:** {args.suited_for}. Trained on {cfg.dataset} ({len(cfg.elements)} element{'s' if len(cfg.elements) != 1 else ''}, "
        f"cells of {', '.join(str(n) for n, c in enumerate(cfg.num_atoms_hist) if c)} atoms); "
        f"at most {cfg.max_atoms} atoms per cell are accepted. Outside that, predictions are unreliable.", "",
        "## Training",
        f"- Task: {cfg.task.upper()} (DiffCSP, joint diffusion of lattice and fractional coordinates"
        f"{', and of one-hot atom types: ab initio generation' if cfg.task == 'gen' else ''}).",
        f"- Data protocol: **{protocol['name']}** — train: {protocol['train']} ({protocol['train_size']} crystals); "
        f"validation / model selection: {protocol['val']} ({protocol['val_size']}). The official train split was not "
        "available; the official test split was used for reporting only.",
        f"- Network: CSPNet, hidden {cfg.hidden}, {cfg.num_layers} layers, {cfg.num_freqs} Fourier frequencies, "
        f"time embedding {cfg.time_dim} (paper: 512 / 6 / 128 / 256). T = {cfg.timesteps}, σ from {cfg.sigma_begin} to {cfg.sigma_end}.",
        f"- Optimiser: {_optimiser(config)}; batch {config['batch_size']}, {meta.get('epochs')} epochs, seed {config['seed']}.",
        f"- Training time: {meta.get('train_seconds')} s of epoch time on a 2-core CPU (no GPU); best validation loss "
        f"{meta.get('best_val_loss'):.4f}.",
        f"- Command: `{_command(config, run)}`",
        *([f"- Fine-tuned: the run started from the weights of `{config['init_from']}` (fresh optimiser, schedule "
           "and EMA); the epochs and time above are this stage's only, the notes below describe the earlier stages."]
          if config.get("init_from") else []),
        "",
        "## Metrics (`diffcsp evaluate`; protocol: docs/method.md §Evaluation)", "",
    ]
    csp = [m for m in metrics if m.get("task", "csp") == "csp"]
    gen = [m for m in metrics if m.get("task") == "gen"]
    if csp:
        lines += ["| split | crystals | k | sampler | rule | match rate (%) | RMSE | valid (%) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in csp:
            k = m.get("k", 1)
            mr, rmse, valid = (m["match_rate"], m["rmse"], m["valid_rate"]) if k == 1 else (m["match_rate_k"], m["rmse_k"], m["valid_rate_k"])
            sampler, limit = _sampler(Path(m["predictions"]))
            lines.append(f"| {m['dataset']}/{m['split']} | {'all' if limit is None else 'first'} {m['n']} | {k} | {sampler} | "
                         f"{m.get('rule', 'structure')} | {100 * mr:.2f} | {'–' if rmse is None else f'{rmse:.4f}'} | {100 * valid:.1f} |")
    if gen:  # ab initio generation: the six numbers of the paper's generation table, against the reference split
        lines += ["| reference | crystals generated | sampler | rule | validity struct (%) | validity comp (%) | COV-R (%) | "
                  "COV-P (%) | W(density) | W(#elements) | composition scaler |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in gen:
            sampler, _ = _sampler(Path(m["predictions"]))
            lines.append(f"| {m['dataset']}/{m['split']} | {m['n']} | {sampler} | {m.get('rule', 'structure')} | {100 * m['struct_valid']:.2f} | "
                         f"{100 * m['comp_valid']:.2f} | {100 * m['cov_recall']:.2f} | {100 * m['cov_precision']:.2f} | "
                         f"{m['wdist_density']:.4f} | {m['wdist_num_elems']:.4f} | {m['comp_scaler']} |")
    if metrics:
        lines += ["", "See BENCHMARKS.md for the full protocol, commands and timings."]
    else:
        lines.append("Not evaluated yet.")
    if args.notes:
        lines += ["", args.notes.read_text().strip()]
    write_text(out / "MODEL_CARD.md", "\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"bundled {run} as {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
