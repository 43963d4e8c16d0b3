#!/usr/bin/env python
"""Generation metrics of CSP samples: are predicted structures realistic, matched or not?

Coverage (COV-R/COV-P) asks whether a crystal lies within a CrystalNN-fingerprint distance of
some reference crystal (0.2 for Carbon-24 and Perov-5). Applied to the *first samples of a CSP
predictions file* against the ground truths of the same file (the test split), it separates two
causes of a low generation coverage: if even CSP samples, which are given the right composition
and atom count, are rarely within the cut-off, the model's local geometry is too imprecise and
the generation sampler is not to blame.

    python bench/csp_coverage.py bench/results/carbon_24/k1_all_fast.json.gz --limit 1000 \\
        --json bench/results/carbon_24/k1_all_fast.coverage.json

``--as-generated val`` scores the first N crystals *of the validation split* (our training data)
instead of the samples: the coverage of a perfect memoriser, which returns training crystals.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from diffcsp.fileio import write_json
from diffcsp.gen_metrics import evaluate_generation, reference_cache_path
from diffcsp.predictions import Predictions, dict_to_structure
from diffcsp.registry import get_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="CSP predictions file from `diffcsp sample`")
    ap.add_argument("--limit", type=int, help="first N crystals' samples (all ground truths stay the reference)")
    ap.add_argument("--as-generated", metavar="SPLIT", help="score the first N crystals of this split of the dataset "
                    "(e.g. val, the training data) instead of the samples")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", type=Path, help="write the metrics here")
    args = ap.parse_args()

    preds = Predictions.load(args.predictions)
    if preds.task != "csp":
        raise SystemExit(f"{args.predictions} holds {preds.task} results; give a CSP predictions file")
    reference = [dict_to_structure(c["ground_truth"]) for c in preds.crystals]
    if args.as_generated:
        from diffcsp.data import load_split

        table = load_split(preds.dataset, args.as_generated)
        samples = table.structures(range(min(args.limit or len(table), len(table))))
        what = f"the first {len(samples)} crystals of the {args.as_generated} split"
    else:
        samples = [dict_to_structure(c["samples"][0]) for c in preds.crystals[: args.limit] if c["samples"]]
        what = f"first sample of each of the first {len(samples)} crystals"
    start = time.perf_counter()
    cache = reference_cache_path(preds.dataset, preds.split, len(reference))
    metrics = evaluate_generation(samples, reference, *get_dataset(preds.dataset).coverage_cutoffs,
                                  workers=args.workers, cache_path=cache)
    metrics.update(predictions=str(args.predictions), samples=what, reference=f"all {len(reference)} ground truths of the file",
                   eval_seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(metrics, indent=1))
    if args.json:
        write_json(args.json, metrics)


if __name__ == "__main__":
    main()
