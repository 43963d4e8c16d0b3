#!/usr/bin/env python
"""The paper's ablations on one budget: train every model variant, sample, evaluate, tabulate.

For each dataset (Perov-5 and Carbon-24 by default) and each variant of ``diffcsp train
--variant`` (joint, lattice-then-coords, coords-then-lattice, no-fourier, no-o3), with the same
preset, seed, epochs, batch size, EMA decay and learning-rate schedule for every variant:

    diffcsp train  --dataset D --preset cpu --variant V --epochs E --seed S --ema-decay X --lr-schedule P --out runs/ablation-D-V
    diffcsp sample -c runs/ablation-D-V/model --dataset D --split test -k 1 --sampler fast [--limit N] --out OUT/D/V.k1.json.gz
    diffcsp evaluate OUT/D/V.k1.json.gz --json OUT/D/V.k1.metrics.json --csv OUT/D/V.k1.per_crystal.csv

then writes OUT/ablations{-TAG}.md and .csv (match rate, RMSE, validity per dataset and variant,
with training time and parameter count) and OUT/ablations{-TAG}.png (bar charts of match rate
and RMSE). Metrics use `diffcsp evaluate`'s default, the DiffCSP authors' ("official") rule,
k = 1. Carbon-24 is evaluated on its first 500 test crystals (``--carbon-test-limit``).

Resuming: a variant whose run has an exported model is not retrained, a run killed during
training is continued with ``diffcsp train --resume``, and existing predictions / metrics files
are reused, so rerunning the same command after a kill finishes the job. A run directory made
with other settings (epochs, seed, ...) is refused rather than mixed into the table.

Example (the full benchmark; see the end of this docstring for its cost):

    python bench/ablations.py --epochs 100 --threads 1 --workers 2

and a smoke test of the whole pipeline on a tiny budget:

    python bench/ablations.py --epochs 2 --limit 64 --test-limit 8 --runs /tmp/abl-runs --out /tmp/abl --tag smoke

Cost, measured on the project's shared 2-core machine (so wall times are pessimistic): a
Perov-5 epoch of the cpu preset takes ~2.2 CPU-seconds (7–9 s wall under load), a Carbon-24
epoch about twice that; the `fast` sampler (50 steps) needs ~0.1 s per Perov-5 crystal for
`joint` and ~1.5× that for the two-stage variants (two chains, the corrector only in the
coordinate chain); the official-rule evaluation of all 3,785 Perov-5 test crystals took
2,829 s with one worker under load (CrystalNN fingerprints dominate), so --test-limit is the
knob that bounds the run time.

Data protocol: as for `diffcsp train` (val→test when the official train split is absent).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import REPO, hardware, run  # noqa: E402  (the same runner and report helpers)

from diffcsp.fileio import atomic_write, save_png  # noqa: E402
from diffcsp.variants import VARIANTS  # noqa: E402

#: training settings that must be equal for every variant of one table
BUDGET_KEYS = ("preset", "epochs", "batch_size", "lr", "seed", "ema_decay", "lr_schedule", "precision", "limit")
DATASETS = ("perov_5", "carbon_24")
LABELS = {"joint": "joint (DiffCSP)", "lattice-then-coords": "L → F", "coords-then-lattice": "F → L",
          "no-fourier": "w/o Fourier", "no-o3": "w/o O(3) (L as input)"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: perov_5,carbon_24)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, help="epochs for every variant (default: the preset's for each dataset)")
    ap.add_argument("--batch-size", type=int, help="batch size for every variant (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema-decay", type=float, default=0.0, help="the same for every variant (default 0: off)")
    ap.add_argument("--lr-schedule", default="plateau", choices=["plateau", "cosine"])
    ap.add_argument("--lr", type=float, help="learning rate for every variant (default: diffcsp train's)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                    help="training precision for every variant (bf16 only where the hardware has it)")
    ap.add_argument("--limit", type=int, help="train on the first N training crystals only (smoke runs)")
    ap.add_argument("--sampler", default="fast", help="sampler preset of `diffcsp sample` (default fast: 50 steps)")
    ap.add_argument("--steps", type=int, help="override the sampler preset's number of steps")
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test crystals of every dataset")
    ap.add_argument("--carbon-test-limit", type=int, default=500, help="first N Carbon-24 test crystals (default 500)")
    ap.add_argument("--threads", type=int, help="torch threads for training and sampling")
    ap.add_argument("--workers", type=int, help="StructureMatcher worker processes")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--runs", type=Path, default=REPO / "runs", help="parent of the run directories (ablation-D-V)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ablations")
    ap.add_argument("--tag", default="", help="suffix of the table and chart names")
    args = ap.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def test_limit(args: argparse.Namespace, dataset: str) -> int | None:
    limits = [n for n in (args.test_limit, args.carbon_test_limit if dataset == "carbon_24" else None) if n]
    return min(limits) if limits else None


def expected_budget(args: argparse.Namespace, dataset: str) -> dict:
    from diffcsp.training import TrainConfig

    cfg = TrainConfig.from_preset(dataset, "unused", preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                                  seed=args.seed, ema_decay=args.ema_decay, lr_schedule=args.lr_schedule, limit=args.limit,
                                  lr=args.lr, precision=args.precision)
    return {key: getattr(cfg, key) for key in BUDGET_KEYS}


def train_variant(args: argparse.Namespace, dataset: str, variant: str, run_dir: Path, log: list[dict]) -> None:
    """Train, continue a killed run, or reuse a finished one (after checking its budget)."""
    exe = [sys.executable, "-m", "diffcsp"]
    common = ["--quiet"] + (["--threads", str(args.threads)] if args.threads else [])
    config_path = run_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        budget = {key: config.get(key) for key in BUDGET_KEYS}
        want = expected_budget(args, dataset)
        if budget != want or config["model"].get("variant", "joint") != variant:
            diff = {k: (budget[k], want[k]) for k in BUDGET_KEYS if budget[k] != want[k]}
            sys.exit(f"{run_dir} was trained with other settings {diff or config['model'].get('variant')} "
                     "(found, wanted); remove it or choose another --runs")
        if (run_dir / "model" / "model.safetensors").is_file():
            log.append({"command": f"# {run_dir}: finished run reused", "seconds": 0})
            return
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            run(exe + ["train", "--resume", str(run_dir)] + common, log)
            return
    cmd = exe + ["train", "--dataset", dataset, "--preset", args.preset, "--variant", variant, "--seed", str(args.seed),
                 "--ema-decay", str(args.ema_decay), "--lr-schedule", args.lr_schedule, "--precision", args.precision,
                 "--out", str(run_dir)] + common
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--limit", args.limit),
                        ("--lr", args.lr), ("--data-dir", args.data_dir)):
        if value is not None:
            cmd += [flag, str(value)]
    run(cmd, log)


def sample_and_evaluate(args: argparse.Namespace, dataset: str, run_dir: Path, stem: Path, log: list[dict]) -> dict:
    from diffcsp.predictions import Predictions

    exe = [sys.executable, "-m", "diffcsp"]
    preds, metrics = Path(f"{stem}.json.gz"), Path(f"{stem}.metrics.json")
    limit = test_limit(args, dataset)
    model_file = run_dir / "model" / "model.safetensors"
    if preds.is_file() and preds.stat().st_mtime < model_file.stat().st_mtime:
        preds.unlink()  # sampled from an earlier model of this run directory: sample again
    if preds.is_file():
        meta = Predictions.load(preds).meta
        # the preset asked for (files from before 2026-12-02 record it as "sampler")
        found = (meta.get("sampler_preset", meta.get("sampler")), meta.get("limit"), meta["steps"] if args.steps else None)
        if found != (args.sampler, limit, args.steps):
            sys.exit(f"{preds} was sampled with other settings (sampler, test limit, steps) {found}, wanted "
                     f"{(args.sampler, limit, args.steps)}; remove it or choose another --out")
        log.append({"command": f"# {preds}: existing predictions reused", "seconds": meta.get("sampling_seconds")})
    else:
        cmd = exe + ["sample", "-c", str(run_dir / "model"), "--dataset", dataset, "--split", "test", "-k", "1",
                     "--sampler", args.sampler, "--out", str(preds)]
        for flag, value in (("--steps", args.steps), ("--limit", limit), ("--threads", args.threads),
                            ("--data-dir", args.data_dir)):
            if value is not None:
                cmd += [flag, str(value)]
        run(cmd, log)
    if not metrics.is_file() or metrics.stat().st_mtime < preds.stat().st_mtime:
        cmd = exe + ["evaluate", str(preds), "--json", str(metrics), "--csv", f"{stem}.per_crystal.csv"]
        for flag, value in (("--workers", args.workers), ("--data-dir", args.data_dir)):
            if value is not None:
                cmd += [flag, str(value)]
        run(cmd, log)
    else:
        log.append({"command": f"# {metrics}: existing evaluation reused", "seconds": 0})
    meta = Predictions.load(preds).meta
    return {**json.loads(metrics.read_text()), "sampling_seconds": meta.get("sampling_seconds"), "test_limit": limit}


def parameter_count(run_dir: Path) -> int:
    from diffcsp.checkpoint import load_model

    return sum(p.numel() for p in load_model(run_dir / "model").parameters())


def write_table(rows: list[dict], path_csv: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path_csv, "w") as handle:
        handle.write(buffer.getvalue())


def plot(rows: list[dict], path_png: Path) -> None:
    """Grouped bars: one group per variant, one bar per dataset; match rate and RMSE panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by_key = {(r["dataset"], r["variant"]): r for r in rows}
    x = np.arange(len(variants))
    width = 0.8 / len(datasets)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for panel, (key, label) in zip(axes, [("match_rate_pct", "match rate (%)"), ("rmse", "RMSE (lower is better)")]):
        for i, dataset in enumerate(datasets):
            values = [by_key.get((dataset, v), {}).get(key) for v in variants]
            heights = [float(v) if v not in (None, "") else 0.0 for v in values]
            bars = panel.bar(x + (i - (len(datasets) - 1) / 2) * width, heights, width, label=dataset)
            for bar, value in zip(bars, values):
                shown = "–" if value in (None, "") else (f"{float(value):.1f}" if key == "match_rate_pct" else f"{float(value):.3f}")
                panel.annotate(shown, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                               fontsize=7)
        panel.set_xticks(x, [LABELS.get(v, v) for v in variants], rotation=20, ha="right", fontsize=8)
        panel.set_ylabel(label)
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("DiffCSP ablations, k = 1 (official metric rule), same training budget per variant", fontsize=10)
    save_png(fig, path_png, dpi=120)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    rows = []
    for dataset in args.datasets:
        (args.out / dataset).mkdir(parents=True, exist_ok=True)
        for variant in args.variants:
            run_dir = args.runs / f"ablation-{dataset}-{variant}"
            train_variant(args, dataset, variant, run_dir, log)
            result = sample_and_evaluate(args, dataset, run_dir, args.out / dataset / f"{variant}.k1", log)
            meta = json.loads((run_dir / "model" / "config.json").read_text())["meta"]
            rmse = result["rmse"]
            rows.append({"dataset": dataset, "variant": variant, "test_crystals": result["n"],
                         "match_rate_pct": round(100 * result["match_rate"], 2),
                         "rmse": "" if rmse is None else round(rmse, 4),
                         "valid_pct": round(100 * result["valid_rate"], 1), "rule": result["rule"],
                         "epochs": meta.get("epochs"), "best_val_loss": meta.get("best_val_loss"),
                         "train_seconds": meta.get("train_seconds"), "sampling_seconds": result["sampling_seconds"],
                         "parameters": parameter_count(run_dir)})
    tag = f"-{args.tag}" if args.tag else ""
    stem = args.out / f"ablations{tag}"
    write_table(rows, Path(f"{stem}.csv"))
    plot(rows, Path(f"{stem}.png"))
    budget = {d: expected_budget(args, d) for d in args.datasets}
    sampler = f"`--sampler {args.sampler}`" + (f" with {args.steps} steps" if args.steps else "")
    lines = [f"# DiffCSP ablations ({dt.date.today().isoformat()})", "",
             "Every variant of a dataset was trained with the same budget and evaluated on the same test crystals "
             "(k = 1, the official metric rule of `diffcsp evaluate`).", "",
             f"- **Hardware**: {hardware()}",
             *(f"- **{d}**: preset `{b['preset']}`, {b['epochs']} epochs, batch {b['batch_size']}, seed {b['seed']}, "
               f"learning rate {b['lr']}, EMA decay {b['ema_decay']}, `{b['lr_schedule']}` learning-rate schedule, "
               f"{b['precision']} training"
               + (f", first {b['limit']} training crystals" if b["limit"] else "")
               + f"; test: {'first ' + str(test_limit(args, d)) if test_limit(args, d) else 'all'} crystals"
               for d, b in budget.items()),
             f"- **Sampling**: {sampler}; the two-stage variants run two full reverse chains (first component, then "
             "the second with the first fixed).", "",
             "| dataset | variant | test crystals | match rate (%) | RMSE | valid (%) | epochs | best val loss | "
             "training (s) | sampling (s) | parameters |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        best = f"{r['best_val_loss']:.4f}" if isinstance(r["best_val_loss"], float) else "–"
        lines.append(f"| {r['dataset']} | {LABELS.get(r['variant'], r['variant'])} | {r['test_crystals']} | "
                     f"{r['match_rate_pct']:.2f} | {r['rmse'] if r['rmse'] != '' else '–'} | {r['valid_pct']} | "
                     f"{r['epochs']} | {best} | {r['train_seconds']} | {r['sampling_seconds']} | {r['parameters']:,} |")
    lines += ["", f"Chart: `{Path(f'{stem}.png').name}`; per-crystal results: `DATASET/VARIANT.k1.per_crystal.csv`.",
              "", "## Commands", "", "```"]
    lines += [f"{e['command']}    # {e['seconds']} s" for e in log] + ["```", ""]
    with atomic_write(Path(f"{stem}.md"), "w") as handle:
        handle.write("\n".join(lines))
    print(f"table written to {stem}.md / .csv, chart to {stem}.png")


if __name__ == "__main__":
    main()
