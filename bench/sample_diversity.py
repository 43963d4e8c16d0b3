#!/usr/bin/env python
"""How many distinct structures a crystal's k samples are, by the benchmark's own matcher.

    python bench/sample_diversity.py bench/results/carbon_24/k20_first200_fast_wide400ft400.json.gz \
        bench/results/carbon_24/k20_first200_cool250_wide400ft400.json.gz --workers 2 \
        --json bench/results/carbon_24/k20_first200_diversity_fast_vs_cool250.json

A sampler that makes each sample more precise can also make the samples of one composition
collapse onto fewer structures; with k samples the match rate then grows more slowly with k.
This measures the collapse directly: the samples of each crystal are grouped greedily (a sample
joins the first group whose first member StructureMatcher, with the CSP benchmark's tolerances
stol 0.5 / ltol 0.3 / angle_tol 10, matches it; otherwise it starts a group), and the number of
groups is the number of distinct structures. Greedy grouping is not a partition into equivalence
classes (matching is not transitive), but it is the same rule for every file compared. Pairs
that exceed the match timeout count as different (reported).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def _groups(samples: list[dict], timeout: float) -> tuple[int, int]:
    """(distinct structures among the samples, timed-out comparisons)."""
    from diffcsp.metrics import rms_distance_limited
    from diffcsp.predictions import dict_to_structure

    structures = [dict_to_structure(s) for s in samples]
    heads: list = []
    timeouts = 0
    for s in structures:
        for head in heads:
            rmse, timed_out = rms_distance_limited(s, head, timeout)
            timeouts += timed_out
            if rmse is not None:
                break
        else:
            heads.append(s)
    return len(heads), timeouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", nargs="+", type=Path, help="predictions files with k > 1 samples per crystal")
    ap.add_argument("--limit", type=int, default=None, help="first N crystals of each file")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per comparison")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()

    from diffcsp.fileio import write_json
    from diffcsp.parallel import run_in_pool, run_inline
    from diffcsp.predictions import Predictions

    summary = {}
    for path in args.predictions:
        preds = Predictions.load(path)
        crystals = preds.crystals[: args.limit]
        tasks = [(c["samples"], args.timeout) for c in crystals]
        with tqdm(total=len(tasks), desc=f"grouping {path.name}", unit="crystal") as bar:
            results = (run_in_pool(_groups, tasks, args.workers, bar, preload=["diffcsp.metrics"])
                       if args.workers > 1 else run_inline(_groups, tasks, bar))
        distinct = np.array([r[0] for r in results])
        summary[str(path)] = {
            "crystals": len(crystals), "samples_per_crystal": preds.num_samples,
            "distinct_mean": float(distinct.mean()), "distinct_median": float(np.median(distinct)),
            "all_one_structure": float((distinct == 1).mean()), "timeouts": int(sum(r[1] for r in results)),
            "distinct_per_crystal": distinct.tolist(),
        }
        print(f"{path}: {distinct.mean():.2f} distinct structures per crystal on average "
              f"(median {np.median(distinct):g}) among {preds.num_samples} samples; "
              f"all samples one structure for {100 * (distinct == 1).mean():.1f} % of {len(crystals)} crystals")
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
