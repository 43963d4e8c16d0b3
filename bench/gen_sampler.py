#!/usr/bin/env python
"""Ab initio generation quality against sampler settings, scored without the test split.

Every setting generates the same number of crystals with the same model and seed (so the same
atom counts), and each set is scored with the official generation metrics
(:func:`diffcsp.gen_metrics.evaluate_generation`, CDVAE's composition scaler) against two
references the model was trained or selected on, never the test split, so a setting can be
chosen here and then measured once on test with `bench/gen_benchmark.py`:

* ``heldout``: the training protocol's held-out validation crystals (never trained on);
* ``train``: the crystals the model was trained on (val.csv minus the held-out part);
  ``--reference heldout`` skips it (its fingerprints are the slow part when not cached).

COV-R depends on how many crystals are generated and on the reference's size, so compare rows
of one run, not with the test-split tables. Also reported: the share of atoms whose nearest
neighbour lies in ``--bond-window`` (for Carbon-24, the sp²/sp³ C–C bond lengths).

    python bench/gen_sampler.py --run runs/carbon_24_gen_wide600_ft450 --dataset carbon_24 -n 300 \\
        --setting pc:1000 --setting pc:1000:temp0.7 --out bench/results/gen_sampler/carbon_24

Settings use the syntax of `bench/sampler_curve.py` (``METHOD:STEPS[:SCHEDULE][:lrX][:tempK][:ptempT][:belowN|aboveN]``,
γ = the dataset's ab initio corrector step). Generated files are kept next to the report
(``STEM.<setting>.json.gz``) and reused when the script is run again, so a killed run resumes
at the first setting without one.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import hardware  # noqa: E402
from gen_distributions import nearest_neighbour_distances, parse_window, share_in_window  # noqa: E402
from sampler_curve import Setting, temperature_window  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="generation model: run dir, exported model dir or bundled name")
    p.add_argument("--dataset", required=True)
    p.add_argument("-n", type=int, default=300, help="crystals generated per setting")
    p.add_argument("--setting", action="append", required=True, help="METHOD:STEPS[:SCHEDULE][:lrX][:tempK][:ptempT]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="processes for the CrystalNN fingerprints")
    p.add_argument("--bond-window", default="1.38,1.58", help="LO,HI in Å for the nearest-neighbour share")
    p.add_argument("--out", required=True, help="output stem: writes STEM.csv, STEM.json and the generated files")
    p.add_argument("--reference", action="append", choices=("heldout", "train"),
                   help="score against this reference only (repeatable; default both). The training crystals' "
                        "fingerprints take ~10 min to compute for Carbon-24 on two cores when not cached")
    args = p.parse_args()

    from diffcsp.checkpoint import load_model
    from diffcsp.fileio import atomic_write, write_json
    from diffcsp.gen_metrics import analyse_generated, evaluate_generation, reference_cache_path
    from diffcsp.predict import default_step_lr, generate
    from diffcsp.predictions import Predictions, dict_to_structure
    from diffcsp.registry import get_dataset
    from diffcsp.training import TrainConfig, resolve_protocol

    torch.set_num_threads(args.threads)
    model = load_model(args.run, task="gen")
    train, heldout, _ = resolve_protocol(TrainConfig.from_preset(args.dataset, "unused"), progress=False)
    parts = {"heldout": heldout, "train": train}
    references = {name: parts[name].structures() for name in (args.reference or parts)}
    cutoffs = get_dataset(args.dataset).coverage_cutoffs
    lo, hi = parse_window(args.bond_window)
    gamma = default_step_lr(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for text in args.setting:
        setting = Setting.parse(text)
        step_lr = gamma * setting.lr_scale if setting.corrector else 0.0
        path = out.parent / f"{out.name}.{setting.name.replace(':', '_')}.json.gz"
        preds = Predictions.load(path) if path.is_file() else None
        if preds is None or len(preds.generated) != args.n:
            with temperature_window(model, setting.window):
                preds, _ = generate(model, args.n, steps=setting.steps, step_lr=step_lr, seed=args.seed, sampler="paper",
                                    method=setting.method, schedule=setting.schedule, rho=setting.rho,
                                    corrector_temperature=setting.temperature,
                                    predictor_temperature=setting.predictor_temperature)
            preds.meta.update(checkpoint=str(args.run))
            preds.save(path)
        structures = [dict_to_structure(g) for g in preds.generated]
        nearest = np.concatenate([nearest_neighbour_distances(s) for s in structures])
        row = {"setting": setting.name, "steps": preds.meta["steps"], "step_lr": step_lr, "temperature": setting.temperature,
               "predictor_temperature": setting.predictor_temperature,
               "temperature_window": setting.window, "n": args.n, "seconds_per_crystal": preds.meta["seconds_per_crystal_sample"],
               "bonds_in_window": share_in_window(nearest, (lo, hi))}
        analysis = analyse_generated(structures, workers=args.workers, progress=False)  # once for both references
        for name, ref in references.items():
            m = evaluate_generation(structures, ref, *cutoffs, workers=args.workers, progress=False, analysis=analysis,
                                    cache_path=reference_cache_path(args.dataset, f"protocol-{name}", len(ref)))
            row["struct_valid"] = m["struct_valid"]  # the same against either reference
            row.update({f"{name}_{k}": m[k] for k in ("cov_recall", "cov_precision", "wdist_density")})
        rows.append(row)
        print(f"{setting.name:32s} bonds {100 * row['bonds_in_window']:5.1f} %  " + "  ".join(
            f"{r}: COV-R {100 * row[f'{r}_cov_recall']:5.1f} COV-P {100 * row[f'{r}_cov_precision']:5.1f} "
            f"W(ρ) {row[f'{r}_wdist_density']:.3f}" for r in references), flush=True)
        with atomic_write(out.with_suffix(".csv"), "w") as handle:  # rewritten after every setting
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write_json(out.with_suffix(".json"), {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "model": str(args.run),
        "dataset": args.dataset, "references": {k: len(v) for k, v in references.items()}, "seed": args.seed,
        "bond_window": [lo, hi], "threads": args.threads, "hardware": hardware(),
        "date": time.strftime("%Y-%m-%d"), "rows": rows,
    })
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
