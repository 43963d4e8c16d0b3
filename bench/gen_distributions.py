#!/usr/bin/env python
"""Distributions of generated crystals against the reference split, in one PNG.

Five panels: distinct elements per cell (the W(#elements) metric), density (W(density)), atoms
per cell, the three lattice lengths pooled, and every atom's nearest-neighbour distance. The
Wasserstein numbers say *how far* two distributions are; the picture says *where* they differ
(too many one-element cells, a density shoulder, cells that are too long, bonds that are smeared
where the reference has sharp bond lengths).

Given a CSP predictions file (`diffcsp sample`) instead, it plots each crystal's first sample
against the ground truths of the same file: how realistic the predicted structures are, whether
or not they match.

    python bench/gen_distributions.py bench/results/perov_5_gen-fast2000/generated/generated.json.gz \\
        --out bench/results/perov_5_gen-fast2000/distributions.png

``--bond-window 1.38,1.58`` also prints the share of atoms whose nearest neighbour lies in that
window (Carbon-24's sp²/sp³ C–C bonds), for the generated set and the reference.
The distinct-element fractions of both sets are always printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from diffcsp.data import load_split
from diffcsp.gen_metrics import num_elements, structural_validity
from diffcsp.predictions import Predictions, dict_to_structure


def nearest_neighbour_distances(structure: Structure) -> np.ndarray:
    """Each atom's distance to its nearest neighbour (Å), periodic images included.

    The minimum image over the 27 neighbouring cells (pymatgen's ``distance_matrix``) and the
    atom's own images one lattice step away; exact for the reduced cells of our datasets.
    """
    frac_steps = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)])
    self_image = float(np.linalg.norm(frac_steps @ structure.lattice.matrix, axis=1).min())
    dm = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
    return np.minimum(dm.min(axis=1), self_image)


def parse_window(text: str) -> tuple[float, float]:
    """``"LO,HI"`` (Å) as a pair of floats."""
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


def share_in_window(nn: np.ndarray, window: tuple[float, float]) -> float:
    """Share of nearest-neighbour distances strictly inside ``window``: how many atoms sit at a
    proper bond length (e.g. Carbon-24's sp²/sp³ C–C bonds, 1.38–1.58 Å)."""
    lo, hi = window
    return float(((nn > lo) & (nn < hi)).mean())


def properties(structures: list[Structure]) -> dict[str, np.ndarray]:
    """The quantities plotted: per crystal, and per atom for "nn" (lattice lengths pooled over a, b, c)."""
    empty = np.array([])
    return {
        "elements": np.array([num_elements(s) for s in structures]),
        "density": np.array([s.density for s in structures]),
        "atoms": np.array([len(s) for s in structures]),
        "lengths": np.concatenate([s.lattice.abc for s in structures]) if structures else empty,
        "nn": np.concatenate([nearest_neighbour_distances(s) for s in structures]) if structures else empty,
    }


def plot(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], title: str, out: Path,
         gen_label: str = "generated", ref_label: str = "reference") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import save_png

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    panels = (("elements", "distinct elements per cell", True), ("density", "density (g/cm³)", False),
              ("atoms", "atoms per cell", True), ("lengths", "lattice lengths a, b, c (Å)", False),
              ("nn", "nearest-neighbour distance per atom (Å)", False))
    for ax, (key, label, discrete) in zip(axes, panels):
        both = np.concatenate([gen[key], ref[key]])
        if discrete:
            bins = np.arange(both.min() - 0.5, both.max() + 1.5)
        else:  # the reference's range, widened a little; generated outliers are counted in the end bins
            lo, hi = np.percentile(ref[key], [0.5, 99.5])
            pad = 0.15 * (hi - lo)
            # bond lengths of a real crystal sit in narrow peaks: show ±25 % around them
            lo, hi = (0.75 * lo, 1.25 * hi) if key == "nn" else (lo - pad, hi + pad)
            bins = np.linspace(lo, hi, 41 if key != "nn" else 61)
        for values, name, style in ((ref[key], f"{ref_label} ({len(ref['atoms'])})", dict(color="0.55")),
                                    (gen[key], f"{gen_label} ({len(gen['atoms'])})", dict(color="tab:red", histtype="step", lw=1.8))):
            ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, label=name, **style)
        ax.set_xlabel(label)
    axes[0].set_ylabel("fraction")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_png(fig, out)


def compared_sets(preds: Predictions, data_dir: Path | None = None):
    """(structures, reference, legend labels, what, against what) for a generation or CSP file."""
    if preds.task == "csp":
        structures = [dict_to_structure(c["samples"][0]) for c in preds.crystals if c["samples"]]
        reference = [dict_to_structure(c["ground_truth"]) for c in preds.crystals]
        return structures, reference, ("first samples", "ground truths"), "CSP first samples", \
            f"their ground truths ({preds.split} split)"
    structures = [dict_to_structure(d) for d in preds.generated]
    reference = load_split(preds.dataset, preds.split, data_dir).structures()
    return structures, reference, ("generated", "reference"), "generated crystals", f"the {preds.split} split"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generated", type=Path, help="generated.json.gz from `diffcsp generate`, or CSP predictions from `diffcsp sample`")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--bond-window", help="LO,HI in Å: also print the share of nearest-neighbour distances inside "
                    "(e.g. 1.38,1.58 for Carbon-24's sp²/sp³ C–C bonds)")
    args = ap.parse_args()

    preds = Predictions.load(args.generated)
    structures, reference, labels, what, where = compared_sets(preds, args.data_dir)
    valid = [s for s in structures if structural_validity(s)]
    title = f"{preds.dataset}: {len(valid)} structurally valid of {len(structures)} {what} against {where}"
    gen, ref = properties(valid), properties(reference)
    plot(gen, ref, title, args.out, *labels)
    print(f"wrote {args.out}")
    # the discrete panel as numbers too: W(#elements) is read off these fractions
    fractions = {name: {int(n): round(float(np.mean(p["elements"] == n)), 4) for n in np.unique(p["elements"])}
                 for name, p in zip(labels, (gen, ref))}
    print(json.dumps({"distinct_elements_per_cell": fractions}))
    if args.bond_window:
        window = parse_window(args.bond_window)
        share = {name: share_in_window(p["nn"], window) for name, p in zip(labels, (gen, ref))}
        print(json.dumps({"bond_window": list(window), "share_of_atoms": share}))


if __name__ == "__main__":
    main()
