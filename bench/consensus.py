#!/usr/bin/env python
"""Pick one structure per crystal from k samples by consensus, and write it as a k = 1 file.

    python bench/consensus.py bench/results/perov_5/k20_first200_fast_wide600.json.gz --k 10 \
        --out bench/results/perov_5/consensus10_first200_wide600.json.gz
    diffcsp evaluate bench/results/perov_5/consensus10_first200_wide600.json.gz --json ...

For each crystal, every pair of its first k samples is compared with the benchmark's matcher
(CDVAE tolerances, the same as the match-rate judgement); the chosen sample is the one that
matches the most other samples (ties: the earliest), i.e. the most frequently predicted
structure. Structurally invalid samples are never preferred. The output is scored by the
standard evaluator unchanged, so "consensus top-1" stands beside "first sample" (k = 1) and
"top-1 by CHGNet energy" (`diffcsp relax`) as one more way to turn k samples into one answer.
It needs no model and no potential, only the samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffcsp.metrics import is_structurally_valid, make_matcher
from diffcsp.predictions import Predictions, dict_to_structure


def consensus_index(samples: list[dict], matcher) -> tuple[int, int]:
    """Index of the sample equivalent to the most others, and how many it matches (itself included)."""
    structures = [dict_to_structure(s) for s in samples]
    valid = [is_structurally_valid(s) for s in structures]
    k = len(structures)
    same = np.eye(k, dtype=bool)
    for i in range(k):
        for j in range(i + 1, k):
            if valid[i] and valid[j]:
                try:
                    same[i, j] = same[j, i] = bool(matcher.fit(structures[i], structures[j]))
                except Exception:  # pymatgen failures count as "different", as in the evaluator
                    pass
    support = np.where(valid, same.sum(axis=1), -1)
    best = int(np.argmax(support))  # argmax takes the first of ties: the earliest sample
    return best, int(support[best])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="a k > 1 predictions file (`diffcsp sample -k K`)")
    ap.add_argument("--k", type=int, help="use the first K samples of each crystal (default: all)")
    ap.add_argument("--limit", type=int, help="first N crystals only")
    ap.add_argument("--out", type=Path, required=True, help="k = 1 predictions file to write")
    args = ap.parse_args()

    preds = Predictions.load(args.predictions)
    k = args.k or preds.num_samples
    if k > preds.num_samples:
        raise SystemExit(f"error: --k {k} but the file has {preds.num_samples} samples per crystal")
    matcher = make_matcher()
    crystals, supports, t0 = [], [], time.perf_counter()
    for c in tqdm(preds.crystals[: args.limit], desc="consensus", unit="crystal"):
        samples = c["samples"][:k]
        j, support = consensus_index(samples, matcher)
        supports.append(support)
        crystals.append({**c, "samples": [{**samples[j], "sample_index": j, "support": support}]})
    meta = {**preds.meta, "selection": f"consensus of the first {k} samples (the sample matching the most others)",
            "selection_seconds": round(time.perf_counter() - t0, 1)}
    Predictions(preds.task, preds.dataset, preds.split, 1, meta=meta, crystals=crystals).save(args.out)
    print(f"wrote {args.out}: {len(crystals)} crystals, mean support {np.mean(supports):.2f} of {k}, "
          f"first sample chosen for {sum(c['samples'][0]['sample_index'] == 0 for c in crystals)}, "
          f"{meta['selection_seconds']} s")


if __name__ == "__main__":
    main()
