#!/usr/bin/env python
"""How far each generated crystal lies from its nearest reference crystal: what COV-P thresholds.

COV-P counts the generated crystals whose CrystalNN structure fingerprint lies within the
dataset's cut-off (Carbon-24: 0.2) of some reference crystal, and whose composition fingerprint
lies within its own cut-off of some reference crystal. This script looks at the structure part
only, so its share within the cut-off is COV-P exactly for single-element datasets (Carbon-24)
and an upper bound of it otherwise. One number hides whether the
misses are near misses (a sharper sampler would pull them in) or far off (another structure
altogether, which no sharpening fixes). This script prints, for each kept generated file, the
share within several distances, the quantiles, the share within the cut-off by cell size, and
the share of atoms at a proper bond length for near and far crystals, and plots the histograms.

    python bench/gen_nearest.py --dataset carbon_24 --reference heldout \\
        bench/results/gen_sampler/carbon_24_wide600ft600.pc_1000_uniform_corrector.json.gz \\
        bench/results/gen_sampler/carbon_24_wide600ft600.pc_1000_uniform_corrector_temp0.3.json.gz \\
        --out bench/results/gen_sampler/carbon_24_wide600ft600_nearest

``--reference heldout`` is the training protocol's held-out crystals (never trained on; the
test split is not looked at), ``--reference test`` the test split.

``--real`` adds a calibration row: real crystals the model learnt from, scored as if they had
been generated (against held-out: the training crystals; against test: the training and the
held-out crystals together). A generator that reproduced the data it learnt from would score
about that, and it says which cell sizes a small reference covers at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import hardware  # noqa: E402
from gen_distributions import nearest_neighbour_distances, parse_window, share_in_window  # noqa: E402

SIZE_BINS = [(1, 8), (9, 12), (13, 16), (17, 24), (25, 1000)]
DISTANCES = [0.1, 0.2, 0.3, 0.4]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated", nargs="*", type=Path, help="generated files (diffcsp generate, gen_sampler.py)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--reference", default="heldout", help="'heldout' (training protocol) or a split name")
    p.add_argument("--workers", type=int, default=1, help="processes for the CrystalNN fingerprints")
    p.add_argument("--bond-window", default="1.38,1.58", help="LO,HI in Å for the nearest-neighbour share")
    p.add_argument("--real", action="store_true", help="add real crystals (the training data) as a calibration row")
    p.add_argument("--out", required=True, type=Path, help="output stem: writes STEM.json and STEM.png")
    args = p.parse_args()
    if args.real and args.reference not in ("heldout", "test"):
        p.error("--real needs --reference heldout or test: other splits may hold the real crystals themselves")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.spatial.distance import cdist

    from diffcsp.data import load_split
    from diffcsp.fileio import save_png, write_json
    from diffcsp.gen_metrics import analyse_generated, reference_cache_path, reference_fingerprints
    from diffcsp.predictions import Predictions, dict_to_structure
    from diffcsp.registry import get_dataset
    from diffcsp.training import TrainConfig, resolve_protocol

    train, heldout, _ = resolve_protocol(TrainConfig.from_preset(args.dataset, "unused"), progress=False)
    if args.reference == "heldout":
        table, cache = heldout, "protocol-heldout"
        real_parts = {"protocol-train": train}  # the crystals the model learnt from
    else:
        table, cache = load_split(args.dataset, args.reference), args.reference
        real_parts = {"protocol-train": train, "protocol-heldout": heldout}  # all the model learnt from
    reference = table.structures()
    ref_fps, _ = reference_fingerprints(reference, reference_cache_path(args.dataset, cache, len(reference)),
                                        workers=args.workers, progress=False)
    ref = np.nan_to_num(np.stack([f for f in ref_fps if f is not None]).astype(float))
    cutoff = get_dataset(args.dataset).coverage_cutoffs[0]
    lo, hi = parse_window(args.bond_window)
    rows, fig = [], plt.figure(figsize=(7, 4))
    sets: list[tuple[str, list, list]] = []  # (name, structures, structure fingerprints)
    for path in args.generated:
        structures = [dict_to_structure(g) for g in Predictions.load(path).generated]
        sets.append((str(path), structures, analyse_generated(structures, workers=args.workers, progress=False).struct_fps))
    if args.real:
        real, fps = [], []
        for part, part_table in real_parts.items():  # each part has its own cache (gen_sampler.py's)
            structures = part_table.structures()
            real += structures
            fps += reference_fingerprints(structures, reference_cache_path(args.dataset, part, len(structures)),
                                          workers=args.workers, progress=False)[0]
        sets.append((f"real crystals ({' + '.join(real_parts)}, {len(real)})", real, fps))
    for label, structures, fps in sets:
        # a crystal without a fingerprint is a miss for COV-P: infinitely far here
        nearest = np.full(len(structures), np.inf)
        keep = [i for i, f in enumerate(fps) if f is not None]
        if keep:
            gen = np.nan_to_num(np.stack([fps[i] for i in keep]).astype(float))
            nearest[keep] = cdist(gen, ref).min(1)
        sizes = np.array([len(s) for s in structures])
        bonds = [nearest_neighbour_distances(s) for s in structures]
        near = nearest <= cutoff
        name = Path(label).name.removesuffix(".json.gz")
        row = {"file": label, "n": len(structures), "cutoff": cutoff,
               "within": {f"{d:g}": float((nearest <= d).mean()) for d in DISTANCES},
               "without_fingerprint": int(np.isinf(nearest).sum()),
               # an order statistic, so crystals without a fingerprint (inf) rank last instead of giving NaN
               "quantiles": {f"{q:g}": float(np.quantile(nearest, q, method="inverted_cdf")) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
               "within_cutoff_by_atoms": {f"{a}-{b}": {"n": int(m.sum()), "share": float(near[m].mean()) if m.any() else None}
                                          for a, b in SIZE_BINS if (m := (sizes >= a) & (sizes <= b)).any()},
               "bonds_in_window_near": share_in_window(np.concatenate([b for b, k in zip(bonds, near) if k]), (lo, hi))
               if near.any() else None,
               "bonds_in_window_far": share_in_window(np.concatenate([b for b, k in zip(bonds, near) if not k]), (lo, hi))
               if not near.all() else None}
        rows.append(row)
        within = "  ".join(f"≤{d}: {100 * v:5.1f} %" for d, v in row["within"].items())
        print(f"{name}\n  {within}  median {row['quantiles']['0.5']:.3f}\n  within {cutoff:g} by atoms: "
              + ", ".join(f"{k} ({v['n']}): {100 * v['share']:.0f} %" for k, v in row["within_cutoff_by_atoms"].items())
              + f"\n  atoms with the nearest neighbour in {lo}-{hi} Å: near {row['bonds_in_window_near']}, "
              f"far {row['bonds_in_window_far']}", flush=True)
        plt.hist(np.minimum(nearest, 1.0), bins=np.linspace(0, 1.0, 41), histtype="step", density=True,
                 label=name.split(".", 1)[-1])
    plt.axvline(cutoff, color="k", ls="--", lw=1, label=f"COV cut-off {cutoff:g}")
    plt.xlabel(f"structure-fingerprint distance to the nearest {args.reference} crystal (clipped at 1)")
    plt.ylabel("probability density")
    plt.legend(fontsize=7)
    save_png(fig, args.out.with_suffix(".png"))
    write_json(args.out.with_suffix(".json"), {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "dataset": args.dataset,
        "reference": args.reference, "reference_n": len(reference), "bond_window": [lo, hi],
        "hardware": hardware(), "date": time.strftime("%Y-%m-%d"), "rows": rows})
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
