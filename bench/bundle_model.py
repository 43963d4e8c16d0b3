#!/usr/bin/env python
"""Copy a trained run's exported model into the package as a bundled model, with a model card.

    python bench/bundle_model.py runs/perov_5_cpu --name perov_5_cpu \
        --metrics bench/results/perov_5/k1.metrics.json --suited-for "ABX3 perovskites, 5 atoms per cell"

The weights are re-exported from ``RUN/model`` (safetensors + config.json); the card records the
data protocol, settings, training time and the metrics file produced by `diffcsp evaluate`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffcsp.checkpoint import BUNDLED_DIR, export_model, load_model
from diffcsp.fileio import write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--suited-for", required=True, help="one line: which compositions the model is for")
    ap.add_argument("--metrics", type=Path, action="append", default=[], help="JSON from `diffcsp evaluate --json` (repeatable)")
    args = ap.parse_args()

    run = args.run
    config = json.loads((run / "config.json").read_text())
    protocol = json.loads((run / "protocol.json").read_text())
    meta = json.loads((run / "model" / "config.json").read_text())["meta"]
    metrics = [json.loads(p.read_text()) for p in args.metrics]
    model = load_model(run / "model")
    meta.update(suited_for=args.suited_for, protocol_detail={k: protocol[k] for k in ("name", "train", "val", "train_size", "val_size")},
                metrics=metrics)
    out = export_model(model, BUNDLED_DIR / args.name, meta=meta)
    cfg = model.config
    lines = [
        f"# Model card: `{args.name}`", "",
        f"**Suited for:** {args.suited_for}. Trained on {cfg.dataset} ({len(cfg.elements)} elements, "
        f"cells of {', '.join(str(n) for n, c in enumerate(cfg.num_atoms_hist) if c)} atoms); "
        f"at most {cfg.max_atoms} atoms per cell are accepted. Outside that, predictions are unreliable.", "",
        "## Training",
        f"- Task: {cfg.task.upper()} (DiffCSP, joint diffusion of lattice and fractional coordinates).",
        f"- Data protocol: **{protocol['name']}** — train: {protocol['train']} ({protocol['train_size']} crystals); "
        f"validation / model selection: {protocol['val']} ({protocol['val_size']}). The official train split was not "
        "available; the official test split was used for reporting only.",
        f"- Network: CSPNet, hidden {cfg.hidden}, {cfg.num_layers} layers, {cfg.num_freqs} Fourier frequencies, "
        f"time embedding {cfg.time_dim} (paper: 512 / 6 / 128 / 256). T = {cfg.timesteps}, σ from {cfg.sigma_begin} to {cfg.sigma_end}.",
        f"- Optimiser: Adam lr {config['lr']}, ReduceLROnPlateau (factor {config['lr_factor']}, patience {config['lr_patience']}, "
        f"min {config['min_lr']}), gradient clipping by value {config['grad_clip']}; batch {config['batch_size']}, "
        f"{meta.get('epochs')} epochs, seed {config['seed']}.",
        f"- Training time: {meta.get('train_seconds')} s of epoch time on a 2-core CPU (no GPU); best validation loss "
        f"{meta.get('best_val_loss'):.4f}.",
        f"- Command: `diffcsp train --dataset {cfg.dataset} --preset {config['preset']}"
        f"{' --task gen' if cfg.task == 'gen' else ''} --out {run}`", "",
        "## Metrics (`diffcsp evaluate`; protocol: docs/method.md §Evaluation)", "",
    ]
    if metrics:
        lines += ["| split | crystals | k | match rate (%) | RMSE | valid (%) |", "| --- | --- | --- | --- | --- | --- |"]
        for m in metrics:
            k = m.get("k", 1)
            mr, rmse, valid = (m["match_rate"], m["rmse"], m["valid_rate"]) if k == 1 else (m["match_rate_k"], m["rmse_k"], m["valid_rate_k"])
            lines.append(f"| {m['dataset']}/{m['split']} | {m['n']} | {k} | {100 * mr:.2f} | "
                         f"{'–' if rmse is None else f'{rmse:.4f}'} | {100 * valid:.1f} |")
        lines += ["", "See BENCHMARKS.md for the full protocol, commands and timings."]
    else:
        lines.append("Not evaluated yet.")
    write_text(out / "MODEL_CARD.md", "\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"bundled {run} as {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
