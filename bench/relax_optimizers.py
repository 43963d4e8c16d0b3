"""FIRE, BFGS and LBFGS on the same DiffCSP samples: steps, seconds, final energy, same minimum?

The first 4 samples of the first 3 test crystals of the committed k = 20 files (Carbon-24 at
10 GPa, as in the relax benchmark; Perov-5 at 0 GPa), each relaxed by the three optimisers of
`diffcsp.relax` (fmax 0.1 eV/Å, ≤ 300 steps, one worker, one torch thread). "same" is pymatgen's
default StructureMatcher between the BFGS/LBFGS result and the FIRE result.

    python bench/relax_optimizers.py --out bench/results/relax/optimizers.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("carbon_24", ROOT / "bench/results/carbon_24/k20_first25_steps250.json.gz", 10.0),
         ("perov_5", ROOT / "bench/results/perov_5/k20_first100_steps250.json.gz", 0.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/relax/optimizers.json")
    ap.add_argument("--crystals", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from diffcsp.predictions import Predictions
    from diffcsp.relax import OPTIMIZERS, load_potential, relax_structures

    load_potential()
    rows, totals = [], {}
    for name, path, pressure in CASES:
        preds = Predictions.load(path)
        inputs = [s for c in preds.crystals[: args.crystals] for s in c["samples"][: args.k]]
        results = {}
        for opt in OPTIMIZERS:
            start = time.perf_counter()
            results[opt] = relax_structures(inputs, fmax=0.1, steps=300, workers=1, progress=False, pressure=pressure,
                                            optimizer=opt)
            totals[f"{name}/{opt}"] = round(time.perf_counter() - start, 1)
            print(f"{name} {opt}: {totals[f'{name}/{opt}']} s", flush=True)
        matcher = StructureMatcher()
        for j in range(len(inputs)):
            row = {"dataset": name, "sample": j, "pressure_GPa": pressure}
            fire = results["fire"][j]
            for opt in OPTIMIZERS:
                r = results[opt][j]
                same = None
                if opt != "fire" and r.structure is not None and fire.structure is not None:
                    try:
                        same = bool(matcher.fit(r.structure, fire.structure))
                    except Exception:
                        same = None
                row[opt] = {"status": r.status, "steps": r.steps, "seconds": round(r.seconds, 2),
                            "energy_per_atom": r.energy_per_atom, "same_as_fire": same}
            rows.append(row)
    summary = {}
    for name, _, _ in CASES:
        ok = [r for r in rows if r["dataset"] == name and all(r[o]["energy_per_atom"] is not None for o in OPTIMIZERS)]
        for opt in OPTIMIZERS:
            summary[f"{name}/{opt}"] = {
                "relaxations": len(ok), "steps": sum(r[opt]["steps"] for r in ok), "wall_seconds": totals[f"{name}/{opt}"],
                "lower_than_fire_by_1meV": sum(r[opt]["energy_per_atom"] < r["fire"]["energy_per_atom"] - 1e-3 for r in ok),
                "higher_than_fire_by_1meV": sum(r[opt]["energy_per_atom"] > r["fire"]["energy_per_atom"] + 1e-3 for r in ok),
                "same_minimum_as_fire": sum(bool(r[opt]["same_as_fire"]) for r in ok) if opt != "fire" else None}
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    for key, value in summary.items():
        print(key, value)


if __name__ == "__main__":
    main()
