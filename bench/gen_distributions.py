#!/usr/bin/env python
"""Distributions of generated crystals against the reference split, in one PNG.

Four panels: distinct elements per cell (the W(#elements) metric), density (W(density)), atoms
per cell, and the three lattice lengths pooled. The Wasserstein numbers say *how far* two
distributions are; the picture says *where* they differ (too many one-element cells, a density
shoulder, cells that are too long).

    python bench/gen_distributions.py bench/results/perov_5_gen-fast2000/generated/generated.json.gz \\
        --out bench/results/perov_5_gen-fast2000/distributions.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from diffcsp.data import load_split
from diffcsp.gen_metrics import num_elements, structural_validity
from diffcsp.predictions import Predictions, dict_to_structure


def properties(structures: list[Structure]) -> dict[str, np.ndarray]:
    """The per-crystal quantities plotted (lattice lengths pooled over a, b and c)."""
    return {
        "elements": np.array([num_elements(s) for s in structures]),
        "density": np.array([s.density for s in structures]),
        "atoms": np.array([len(s) for s in structures]),
        "lengths": np.concatenate([s.lattice.abc for s in structures]) if structures else np.array([]),
    }


def plot(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import atomic_write

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = (("elements", "distinct elements per cell", True), ("density", "density (g/cm³)", False),
              ("atoms", "atoms per cell", True), ("lengths", "lattice lengths a, b, c (Å)", False))
    for ax, (key, label, discrete) in zip(axes, panels):
        both = np.concatenate([gen[key], ref[key]])
        if discrete:
            bins = np.arange(both.min() - 0.5, both.max() + 1.5)
        else:  # the reference's range, widened a little; generated outliers are counted in the end bins
            lo, hi = np.percentile(ref[key], [0.5, 99.5])
            pad = 0.15 * (hi - lo)
            bins = np.linspace(lo - pad, hi + pad, 41)
        for values, name, style in ((ref[key], f"reference ({len(ref['atoms'])})", dict(color="0.55")),
                                    (gen[key], f"generated ({len(gen['atoms'])})", dict(color="tab:red", histtype="step", lw=1.8))):
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, label=name, **style)
        ax.set_xlabel(label)
    axes[0].set_ylabel("fraction")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(out, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generated", type=Path, help="generated.json.gz from `diffcsp generate`")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--data-dir", type=Path)
    args = ap.parse_args()

    preds = Predictions.load(args.generated)
    structures = [dict_to_structure(d) for d in preds.generated]
    valid = [s for s in structures if structural_validity(s)]
    reference = load_split(preds.dataset, preds.split, args.data_dir).structures()
    title = (f"{preds.dataset}: {len(valid)} structurally valid of {len(structures)} generated crystals "
             f"against the {preds.split} split")
    plot(properties(valid), properties(reference), title, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
