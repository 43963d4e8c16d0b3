#!/usr/bin/env python
"""Match rate against the number of samples k, for several evaluations on one plot.

    python bench/match_vs_k.py \
        bench/results/carbon_24/k20_first200_fast_wide400ft400.metrics.json=fast \
        bench/results/carbon_24/k20_first200_cool250_wide400ft400.metrics.json="250 steps, κ = 0.3" \
        --out bench/results/carbon_24/k20_first200_fast_vs_cool250.match_vs_k.png

Each argument is a JSON written by ``diffcsp evaluate --json`` for a k > 1 predictions file,
optionally followed by ``=LABEL``. ``diffcsp evaluate --plot`` draws one such curve; comparing
samplers asks for them side by side, because a sampler that is more precise per sample can be
less diverse, and only the curve's slope shows that. Curves of different crystal sets are refused:
their difference would say more about the crystals than about the samplers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import labelled_metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", nargs="+", help="METRICS.json[=LABEL]")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from diffcsp.fileio import save_png

    fig, ax = plt.subplots(figsize=(6, 4))
    files = labelled_metrics(args.metrics, same=("dataset", "split", "n"))
    for path, label, metrics in files:
        curve = metrics.get("match_rate_curve")
        if not curve:
            raise SystemExit(f"error: {path} has no match-rate curve (evaluated with k = 1?)")
        ks, rates = zip(*curve)
        rmse = metrics.get("rmse_k")
        ax.plot(ks, [100 * r for r in rates], marker="o", markersize=3,
                label=f"{label or Path(path).stem} (k = {ks[-1]}: {100 * rates[-1]:.1f} %"
                      + ("" if rmse is None else f", RMSE {rmse:.3f}") + ")")
    dataset, split, n = (files[0][2].get(key) for key in ("dataset", "split", "n"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("samples per crystal k")
    ax.set_ylabel("match rate (%)")
    ax.set_title(args.title or f"{dataset} {split}, first {n} crystals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
