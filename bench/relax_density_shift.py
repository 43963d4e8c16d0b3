#!/usr/bin/env python
"""How much CHGNet relaxation changes the density of the ground truths in a relax-benchmark journal.

    python bench/relax_density_shift.py bench/results/relax_carbon_bfgs/work.jsonl.gz \
        bench/results/carbon_24/k20_first200_fast.json.gz

The journal (written by bench/relax_benchmark.py) holds each test crystal's relaxed ground truth;
the predictions file it was run on holds the dataset's ground truth. The ratio says how much of a
density shift after relaxation is the potential's own (e.g. CHGNet against the dataset's DFT).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffcsp.fileio import read_journal
from diffcsp.predictions import Predictions, dict_to_structure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("journal", type=Path)
    ap.add_argument("predictions", type=Path, help="the predictions file the benchmark was run on (its ground truths)")
    args = ap.parse_args()
    dataset = {c["id"]: dict_to_structure(c["ground_truth"]).density for c in Predictions.load(args.predictions).crystals}
    pairs = {}  # one per test crystal: every method's record carries the same relaxed ground truth
    for record in read_journal(args.journal):
        relaxed = (record.get("ground_truth") or {}).get("relaxed")  # PyXtal records carry none
        if relaxed is not None and record["id"] in dataset:
            pairs[record["id"]] = (dataset[record["id"]], dict_to_structure(relaxed).density)
    before, after = np.array(list(pairs.values())).T
    print(f"{len(pairs)} ground truths: dataset {before.mean():.3f} g/cm³, relaxed {after.mean():.3f} g/cm³, "
          f"mean ratio {np.mean(after / before):.4f}")


if __name__ == "__main__":
    main()
