#!/usr/bin/env python
"""What a perfect memoriser would score on CSP: a random training crystal of the same composition.

    python bench/retrieval_baseline.py --dataset carbon_24 --limit 200 \
        --json bench/results/carbon_24/retrieval_first200.json

Why: on Carbon-24 the composition is only "C_N", so CSP is close to generation conditioned on
the number of atoms. A model that had learnt its training set perfectly would, given C_N, return
one of its training crystals with N atoms, and whether that matches a test crystal depends only
on how alike real carbon structures are under StructureMatcher's tolerances. This script
computes that model's expected scores exactly, without sampling: for each test crystal every
training crystal of the same composition is compared with it (official matcher,
stol 0.5 / angle_tol 10 / ltol 0.3), and

- expected one-sample match rate = mean over test crystals of (matching candidates / candidates);
- expected RMSE = the RMSE of the matching pairs, weighted by the chance of drawing each;
- expected k-sample match rate = mean of 1 − (1 − p)^k (k independent draws).

The candidates are the crystals our models train on: the official validation split minus the
held-out rows of the run given with ``--run`` (all of it without ``--run``), or the split named by
``--train-split`` (``train`` for mp_20_mini). A training crystal
that matches a test crystal with a small RMSE is a near-duplicate of it; the script also
reports how many test crystals have one (RMSE < 0.1), which is what lets a memorising model
score a precise match.

With ``--samples PREDICTIONS`` it measures instead how close a model is to that memoriser: the
first sample of each of the first N crystals is compared with every training crystal of its
composition, and the report gives how many samples are a near-duplicate (RMSE < 0.1) of some
training crystal and the distribution of the distance to the nearest one:

    python bench/retrieval_baseline.py --samples bench/results/carbon_24/k1_all_fast.json.gz \
        --limit 100 --run runs/carbon_24_cpu --json bench/results/carbon_24/nearest_train_k1_first100.json
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffcsp.data import load_split
from diffcsp.fileio import write_text
from diffcsp.metrics import make_matcher, rms_distance


def candidates_by_composition(table, exclude: set[str]) -> dict[str, list]:
    """Training crystals (Structures) grouped by their composition (formula with the atom count, e.g. C12)."""
    groups: dict[str, list] = collections.defaultdict(list)
    for i in range(len(table)):
        rec = table.record(i)
        if rec.id not in exclude:
            structure = rec.to_structure()
            groups[structure.composition.formula].append(structure)
    return groups


def rmse_to_candidates(structure, groups, matcher) -> list[float | None]:
    """RMSE of ``structure`` against every training crystal of its composition (None: no match)."""
    return [rms_distance(candidate, structure, matcher) for candidate in groups.get(structure.composition.formula, [])]


def nearest_training(predictions: Path, limit: int, groups, matcher) -> dict:
    """How far a model's first samples are from the nearest training crystal."""
    from diffcsp.predictions import Predictions, dict_to_structure

    crystals = Predictions.load(predictions).crystals[:limit]
    nearest = []
    for c in tqdm(crystals, desc="samples", unit="sample"):
        matched = [r for r in rmse_to_candidates(dict_to_structure(c["samples"][0]), groups, matcher) if r is not None]
        nearest.append(min(matched) if matched else None)
    found = [r for r in nearest if r is not None]
    return {"predictions": str(predictions), "samples": len(nearest),
            "match_some_training_crystal": len(found) / len(nearest),
            "near_duplicate_of_a_training_crystal_rmse_lt_0.1": sum(r < 0.1 for r in found) / len(nearest),
            "nearest_rmse_quartiles": [float(q) for q in np.quantile(found, [0.25, 0.5, 0.75])] if found else None,
            "nearest_rmse": nearest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="carbon_24")
    ap.add_argument("--limit", type=int, default=200, help="first N test crystals")
    ap.add_argument("--train-split", default="val", help="split the models train on (val under the val→test "
                    "protocol; train where the dataset has one, e.g. mp_20_mini)")
    ap.add_argument("--run", type=Path, help="training run whose held-out validation rows are excluded")
    ap.add_argument("--k", type=int, default=20, help="also report the expected match rate of k draws")
    ap.add_argument("--model-csv", type=Path, action="append", default=[],
                    help="per-crystal CSV of `diffcsp evaluate` to put the model's numbers beside (repeatable)")
    ap.add_argument("--samples", type=Path, help="predictions file: measure its samples' distance to the training set")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    t0 = time.time()
    train = load_split(args.dataset, args.train_split, data_dir=args.data_dir)
    exclude: set[str] = set()
    if args.run is not None:
        exclude = set(json.loads((args.run / "protocol.json").read_text()).get("held_out_ids", []))
    groups = candidates_by_composition(train, exclude)
    matcher = make_matcher()
    if args.samples is not None:
        result = nearest_training(args.samples, args.limit, groups, matcher)
        result["seconds"] = round(time.time() - t0, 1)
        print(json.dumps({k: v for k, v in result.items() if k != "nearest_rmse"}, indent=2))
        if args.json:
            write_text(args.json, json.dumps(result, indent=1) + "\n")
        return

    test = load_split(args.dataset, "test", data_dir=args.data_dir)
    per_crystal = []
    n_test = min(args.limit, len(test))
    for t in tqdm(range(n_test), desc="test crystals", unit="crystal"):
        gt = test.record(t).to_structure()
        rmses = rmse_to_candidates(gt, groups, matcher)
        matched = [r for r in rmses if r is not None]
        per_crystal.append({"id": test.record(t).id, "formula": gt.composition.formula, "candidates": len(rmses),
                            "matched": len(matched), "rmse": matched})

    p = np.array([c["matched"] / c["candidates"] if c["candidates"] else 0.0 for c in per_crystal])
    weights = [(1.0 / c["candidates"], r) for c in per_crystal for r in c["rmse"]]
    expected_rmse = sum(w * r for w, r in weights) / sum(w for w, _ in weights) if weights else None
    all_pairs = [r for c in per_crystal for r in c["rmse"]]
    summary = {
        "dataset": args.dataset,
        "test_crystals": n_test,
        "candidates": f"{args.train_split} split" + (f" minus the {len(exclude)} rows held out by {args.run}" if exclude else ""),
        "candidate_count": sum(len(g) for g in groups.values()),
        "pairs_compared": int(sum(c["candidates"] for c in per_crystal)),
        "expected_match_rate_k1": float(p.mean()),
        "expected_rmse_k1": expected_rmse,
        f"expected_match_rate_k{args.k}": float(np.mean(1 - (1 - p) ** args.k)),
        "test_crystals_with_any_match": int(sum(c["matched"] > 0 for c in per_crystal)),
        "test_crystals_with_near_duplicate_rmse_lt_0.1": int(sum(any(r < 0.1 for r in c["rmse"]) for c in per_crystal)),
        "matched_pairs": len(all_pairs),
        "matched_pairs_rmse_quartiles": [float(q) for q in np.quantile(all_pairs, [0.25, 0.5, 0.75])] if all_pairs else None,
        "seconds": round(time.time() - t0, 1),
    }
    ids = {c["id"] for c in per_crystal}
    for path in args.model_csv:  # the model's scores on the same test crystals
        rows = [r for r in csv.DictReader(path.open()) if r["id"] in ids]
        k1 = [float(r["rmse_k1"]) for r in rows if r["matched_k1"] == "True"]
        summary[f"model:{path.name}"] = {"crystals": len(rows), "match_rate_k1": len(k1) / len(rows) if rows else None,
                                         "rmse_k1": float(np.mean(k1)) if k1 else None,
                                         "matches_rmse_lt_0.1": sum(r < 0.1 for r in k1)}
    print(json.dumps(summary, indent=2))
    if args.json:
        write_text(args.json, json.dumps({"summary": summary, "per_crystal": per_crystal}, indent=1) + "\n")


if __name__ == "__main__":
    main()
