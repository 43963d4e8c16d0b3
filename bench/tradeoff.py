#!/usr/bin/env python
"""Match rate against RMSE, one point per evaluation, on one plot: the trade-off of sampler settings.

    python bench/tradeoff.py \
        bench/results/carbon_24/k1_all_fast_wide400ft400.metrics.json=fast \
        bench/results/carbon_24/k1_all_cool500k05_wide400ft400.metrics.json="500 steps, κ = 0.5" \
        --reference "paper=17.54,0.2759" --goal 20,0.30 \
        --out bench/results/carbon_24/k1_all_tradeoff.png

Each argument is a JSON written by ``diffcsp evaluate --json``, optionally followed by ``=LABEL``.
On Carbon-24 a sampler that matches more crystals matches them less precisely, and a table of
five settings hides which ones are dominated; a plot shows the frontier at a glance. Each point
carries ±1 standard error of its match rate (binomial, √(p(1−p)/n)), because settings a point
apart are within the noise of 2,030 crystals. ``--reference NAME=MATCH,RMSE`` adds a published
point (percent, RMSE) and ``--goal MATCH,RMSE`` shades the region that meets both halves of a goal
(match rate at least MATCH %, RMSE at most RMSE).

Evaluations of different crystal sets, k or metric rules are refused: their difference would say
more about the crystals or the rule than about the samplers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import labelled_metrics  # noqa: E402

#: What the plotted evaluations must share: one crystal set, one k and one metric rule.
PROTOCOL = ("dataset", "split", "n", "k", "rule")


def parse_point(text: str) -> tuple[float, float]:
    """``"17.54,0.2759"`` → (17.54, 0.2759): a match rate in percent and an RMSE."""
    try:
        match, rmse = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MATCH,RMSE (e.g. 17.54,0.2759), got {text!r}") from None
    return match, rmse


def load_points(items: list[str]) -> tuple[list[dict], tuple]:
    """(points, the crystal set they share) from ``METRICS.json[=LABEL]`` arguments.

    A point is ``{"label", "match" (%), "se" (%), "rmse"}``; raises ``SystemExit`` with one
    ``error:`` line when a file is not a CSP evaluation, has no RMSE (nothing matched) or the files
    disagree on what they evaluate."""
    points = []
    files = labelled_metrics(items, same=PROTOCOL)
    for path, label, metrics in files:
        if metrics.get("task", "csp") != "csp" or "match_rate" not in metrics:
            raise SystemExit(f"error: {path} is not a CSP evaluation (no match rate)")
        if metrics.get("rmse") is None:
            raise SystemExit(f"error: {path} has no RMSE (no crystal matched), so it has no place on this plot")
        p = metrics["match_rate"]
        points.append({"label": label or Path(path).name.removesuffix(".metrics.json"), "match": 100 * p,
                       "se": 100 * math.sqrt(p * (1 - p) / metrics["n"]), "rmse": metrics["rmse"]})
    return points, tuple(files[0][2].get(key) for key in PROTOCOL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", nargs="+", help="METRICS.json[=LABEL]")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--reference", action="append", default=[], help="NAME=MATCH,RMSE: a published point (repeatable)")
    ap.add_argument("--goal", type=parse_point, help="MATCH,RMSE: shade the region with match rate ≥ MATCH %% and RMSE ≤ RMSE")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    references = []
    for item in args.reference:
        name, sep, point = item.rpartition("=")  # the name may hold "=" (κ = 1), the point never
        if not sep:
            ap.error(f"--reference expects NAME=MATCH,RMSE, got {item!r}")
        try:
            references.append((name, *parse_point(point)))
        except argparse.ArgumentTypeError as exc:
            ap.error(f"--reference: {exc}")
    points, (dataset, split, n, k, rule) = load_points(args.metrics)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import save_png

    fig, ax = plt.subplots(figsize=(6.5, 4.5 + 0.2 * (len(points) + len(references) + bool(args.goal))))
    for p in points:
        ax.errorbar(p["match"], p["rmse"], xerr=p["se"], fmt="o", capsize=3, label=f"{p['label']}: {p['match']:.2f} % / {p['rmse']:.4f}")
    for name, match, rmse in references:
        ax.plot(match, rmse, marker="*", markersize=12, linestyle="none", color="black", label=f"{name}: {match:.2f} % / {rmse:.4f}")
    if args.goal:
        match, rmse = args.goal
        # the region beyond the goal on both axes, drawn up to the plot's edges once they are known
        xmax = max([p["match"] + p["se"] for p in points] + [r[1] for r in references] + [match]) + 1
        ymin = min([p["rmse"] for p in points] + [r[2] for r in references] + [rmse]) - 0.02
        ax.fill_between([match, xmax], ymin, rmse, color="tab:green", alpha=0.12, label=f"goal: ≥ {match:g} % and ≤ {rmse:g}")
    ax.set_xlabel("match rate (%), ±1 standard error")
    ax.set_ylabel("RMSE (matched crystals)")
    ax.set_title(args.title or f"{dataset} {split}, {n} crystals, k = {k}, {rule} rule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below the axes: no point hidden
    save_png(fig, args.out)
    print("| setting | match rate | ± s.e. | RMSE |\n| --- | --- | --- | --- |")
    for p in points:
        print(f"| {p['label']} | {p['match']:.2f} % | {p['se']:.2f} | {p['rmse']:.4f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
