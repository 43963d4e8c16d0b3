#!/usr/bin/env python
"""How much of Perov-5's one-sample match rate is decidable from the composition at all.

    python bench/perov_site_swap.py bench/results/perov_5/k20_first200_fast_wide600.json.gz \
        --json bench/results/perov_5/site_swap_first200_wide600.json

Perov-5 (Castelli et al.) enumerates every ordered pair of 52 metals on the A and B sites of a
cubic perovskite with 7 anion sets: 52 × 52 × 7 = 18,928 crystals, exactly the size of
train + val + test. So for A ≠ B the composition ABX₃ occurs twice, once with A on the corner
site and once with the two cations swapped, and the two are different crystals (the anions
sit beside the body-centre cation). A model that is given only the composition cannot know
which of the two a test crystal is; the best any such model can do with one sample is 1/2 for
those crystals and 1 for the A = B ones. This script:

1. checks the enumeration on the splits that are here (the formula column names A first, B
   second; every composition occurs at most twice, and twice only as an A/B swap);
2. computes that ceiling for the whole test split under the official rule (SMACT-failing
   compositions can never count);
3. for each crystal of a k-sample predictions file, counts how many samples match the ground
   truth and how many match the ground truth with its two cations swapped (same matcher as
   the benchmark), which shows whether the model's misses are the swap or something else.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import numpy as np
from pymatgen.core import Composition
from tqdm import tqdm

from diffcsp.fileio import write_text
from diffcsp.gen_metrics import smact_validity
from diffcsp.metrics import make_matcher, rms_distance
from diffcsp.predictions import Predictions, dict_to_structure
from diffcsp.registry import default_data_dir

ELEMENT = re.compile(r"[A-Z][a-z]?")


def cations(formula: str) -> tuple[str, str]:
    """A and B of a Perov-5 formula column value (``TiOsOFN`` → Ti, Os)."""
    a, b = ELEMENT.findall(formula)[:2]
    return a, b


def swapped(structure, a: str, b: str):
    """The ground truth with its A and B cations exchanged (positions and lattice kept)."""
    out = structure.copy()
    out.replace_species({a: b, b: a})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="a Perov-5 test predictions file (any k)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import pandas as pd

    data_dir = args.data_dir or default_data_dir()
    frames = {s: pd.read_csv(data_dir / "perov_5" / f"{s}.csv") for s in ("val", "test")}
    # 1. the enumeration
    keys = collections.Counter()
    pairs_by_key: dict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
    for frame in frames.values():
        for formula in frame["formula"]:
            a, b = cations(formula)
            key = Composition(formula).alphabetical_formula
            keys[key] += 1
            pairs_by_key[key].add((a, b, formula[len(a) + len(b):]))
    twice = [k for k, n in keys.items() if n == 2]
    swaps = sum(1 for k in twice if {(a, b) for a, b, _ in pairs_by_key[k]} == {(a, b) for b, a, _ in pairs_by_key[k]})
    metals = {x for f in pd.concat(frames.values())["formula"] for x in cations(f)}
    # 2. the ceiling on the whole test split, official rule
    test = frames["test"]
    same_cation = np.array([cations(f)[0] == cations(f)[1] for f in test["formula"]])
    smact_ok = np.array([smact_validity(Composition(f)) for f in test["formula"]])
    ceiling = float(np.mean(smact_ok * np.where(same_cation, 1.0, 0.5)))

    # 3. what the samples match
    preds = Predictions.load(args.predictions)
    if preds.dataset != "perov_5":
        raise SystemExit("error: this analysis is for Perov-5 predictions")
    formula_of = dict(zip(test["material_id"].astype(str), test["formula"]))  # the CSV's A-first formula
    matcher = make_matcher()
    per_crystal = []
    for c in tqdm(preds.crystals, desc="matching", unit="crystal"):
        gt = dict_to_structure(c["ground_truth"])
        a, b = cations(formula_of[str(c["id"])])
        twin = swapped(gt, a, b) if a != b else None
        hits_gt = hits_swap = 0
        for s in c["samples"]:
            sample = dict_to_structure(s)
            if rms_distance(sample, gt, matcher) is not None:
                hits_gt += 1
            elif twin is not None and rms_distance(sample, twin, matcher) is not None:
                hits_swap += 1
        per_crystal.append({"id": c["id"], "formula": c["formula"], "same_cation": a == b, "samples": len(c["samples"]),
                            "match_gt": hits_gt, "match_swap": hits_swap})
    k = np.array([r["samples"] for r in per_crystal], dtype=float)
    p_gt = np.array([r["match_gt"] for r in per_crystal]) / k
    p_swap = np.array([r["match_swap"] for r in per_crystal]) / k
    result = {
        "enumeration": {"metals": len(metals), "anion_sets": len({x for s in pairs_by_key.values() for *_, x in s}),
                        "full_size_52x52x7": 52 * 52 * 7, "val_test_rows": sum(len(f) for f in frames.values()),
                        "compositions_seen_twice": len(twice), "of_which_an_A_B_swap": swaps,
                        "compositions_seen_more_than_twice": sum(1 for n in keys.values() if n > 2)},
        "test_split": {"crystals": len(test), "A_equals_B": int(same_cation.sum()), "smact_fail": int((~smact_ok).sum()),
                       "one_sample_ceiling_official_rule": ceiling},
        "samples": {"file": str(args.predictions), "crystals": len(per_crystal), "k": int(k.max()),
                    "mean_fraction_matching_gt": float(p_gt.mean()), "mean_fraction_matching_swap": float(p_swap.mean()),
                    "mean_fraction_neither": float(1 - p_gt.mean() - p_swap.mean()),
                    "crystals_with_gt_fraction_ge_0.8": int((p_gt >= 0.8).sum()),
                    "crystals_with_gt_fraction_between_0.2_and_0.8": int(((p_gt > 0.2) & (p_gt < 0.8)).sum()),
                    "crystals_with_gt_fraction_le_0.2": int((p_gt <= 0.2).sum())},
        "per_crystal": per_crystal,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_crystal"}, indent=1))
    if args.json:
        write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
