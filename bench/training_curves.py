"""Validation loss against training compute (or epochs) for several runs, in one plot.

Each run's ``metrics.csv`` gives the validation loss per epoch. The x axis is CPU seconds
(``cpu_seconds``, this process's CPU time over all its threads, which stays comparable when the
machine is shared), or the epoch with ``--x epoch`` (data seen rather than compute);
for a run recorded before that column existed, ``--cpu-per-epoch RUN=SECONDS`` supplies the
per-epoch CPU time measured for the same settings on the machine being compared (e.g. from
another run of the same network, batch size and precision). ``--ymax`` sets the top of the loss
axis (the first epochs' losses are far higher than the rest).

    python bench/training_curves.py runs/perov_5_cpu runs/perov_5_cpu_fast \\
        --cpu-per-epoch runs/perov_5_cpu=2.16 --target 0.8240 --out bench/results/training/perov_5.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load(run: Path, cpu_per_epoch: float | None, per_epoch: bool = False) -> tuple[list[float], list[float], str]:
    """(x, validation losses, label); x is cumulative CPU seconds, or the epoch with ``per_epoch``."""
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    cfg = json.loads((run / "config.json").read_text())
    model = cfg.get("model", {})
    label = (f"{run.name}: hidden {model.get('hidden', '?')}, batch {cfg['batch_size']}, lr {cfg['lr']:g} {cfg.get('lr_schedule', 'plateau')}, "
             f"EMA {cfg.get('ema_decay', 0) or 'off'}, {cfg.get('precision', 'fp32')}")
    if per_epoch:
        return [float(r["epoch"]) for r in rows], [float(r["val_loss"]) for r in rows], label
    seconds, total = [], 0.0
    for r in rows:
        total += cpu_per_epoch if cpu_per_epoch is not None else float(r["cpu_seconds"])
        seconds.append(total)
    return seconds, [float(r["val_loss"]) for r in rows], label


def fp32_val_loss(run: Path) -> float:
    """The validation loss of a run's best checkpoint recomputed in float32, with the noise the
    training loop uses for validation (a run trained with bf16 validated under autocast)."""
    import torch

    from diffcsp.checkpoint import load_model
    from diffcsp.training import VALIDATION_SEED, eval_loader, load_run_config, resolve_protocol

    cfg = load_run_config(run)
    _, val, _ = resolve_protocol(cfg, progress=False)
    model = load_model(run / "checkpoints" / "best.ckpt")
    total, count = 0.0, 0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(VALIDATION_SEED)
        for batch in eval_loader(val, cfg.batch_size):
            total += float(model.loss(batch)["loss"]) * batch.num_graphs
            count += batch.num_graphs
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--cpu-per-epoch", action="append", default=[], help="RUN=SECONDS for runs without cpu_seconds (CPU-seconds axis only)")
    p.add_argument("--target", type=float, default=None, help="draw this validation loss and report when each run reaches it")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--x", choices=("cpu", "epoch"), default="cpu",
                   help="x axis: training CPU seconds (compute) or epochs (data seen)")
    p.add_argument("--ymax", type=float, default=1.3, help="top of the loss axis (early losses are far higher)")
    p.add_argument("--fp32-val", action="append", default=[], type=Path,
                   help="also recompute this run's best validation loss in float32 (for bf16 runs)")
    args = p.parse_args()
    for run in args.fp32_val:
        print(f"{run}: best checkpoint's validation loss in float32: {fp32_val_loss(run):.4f}")
    fixed = {Path(k): float(v) for k, v in (item.split("=", 1) for item in args.cpu_per_epoch)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import save_png

    fig, ax = plt.subplots(figsize=(8, 4.5))
    lowest = float("inf")
    for run in args.runs:
        seconds, losses, label = load(run, fixed.get(run), per_epoch=args.x == "epoch")
        ax.plot(seconds, losses, label=label, lw=1.2)
        best = min(losses)
        lowest = min(lowest, best)
        reach = next((s for s, v in zip(seconds, losses) if args.target is not None and v <= args.target), None)
        def at(x: float) -> str:
            return f"after {x:.0f} CPU s" if args.x == "cpu" else f"at epoch {x:.0f}"

        reached = f"reaches {args.target:.4f} {at(reach)}" if reach is not None else "does not reach the target"
        total = f"{seconds[-1]:.0f} CPU s" if args.x == "cpu" else f"{len(seconds)} epochs"
        print(f"{run}: best val loss {best:.4f} {at(seconds[losses.index(best)])}; {reached}; {total} in all")
    if args.target is not None:
        ax.axhline(args.target, color="k", ls=":", lw=1, label=f"target {args.target:g}")
    ax.set_xlabel("training CPU seconds (process CPU time, all threads)" if args.x == "cpu" else "epoch")
    ax.set_ylabel("validation loss")
    top = min(args.ymax, ax.get_ylim()[1])
    ax.set_ylim(top=top)
    if lowest < top:  # every loss above --ymax: keep matplotlib's bottom rather than invert the axis
        ax.set_ylim(bottom=lowest - 0.05 * (top - lowest))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
