#!/usr/bin/env python
"""Turn k CSP samples into one answer by the model's own denoising loss, and score the choice.

    python bench/model_rank.py --run carbon_24 --dataset carbon_24 --split heldout -k 10 \\
        --sampler fast --threads 2 --workers 2 --out bench/results/model_rank/carbon_24_heldout_fast_k10

For every crystal the script draws k samples (`predict_split`, resumable), then scores each
sample by the training loss the model makes on it as if it were a clean crystal
(:func:`diffcsp.scoring.denoising_losses`: fixed noise levels ``--levels``, the same noise for
every sample of a crystal), lattice and coordinate parts apart. A sample the model finds
typical — sharp bonds, a training-like arrangement — should be recovered well.
Several selection rules (the lowest loss over some levels, and the first sample as the
baseline) are scored with the official CSP metrics: each rule's pick stands as the k = 1 answer.
"Any of k" (the oracle) bounds what any selection can reach.

Outputs, next to ``--out``: ``.samples.json.gz`` (the k samples), ``.scores.npz`` (per crystal,
sample and level: lattice and coordinate losses), ``.eval.json`` (per-sample RMSE, cached),
``.csv`` and ``.json`` (one row per rule, with protocol and hardware). Each stage is reused when
its file exists, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import hardware  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="CSP model: run dir, exported model or bundled name")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="heldout", help="test, val, or heldout (the training protocol's validation crystals)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--sampler", default="fast")
    p.add_argument("--steps", type=int)
    p.add_argument("--step-lr", type=float)
    p.add_argument("--corrector-temperature", type=float)
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", default="5,20,50,100,200,400,700")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--subsets", default="2,4", help="also choose among only the first K' samples, for each K' listed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from diffcsp.checkpoint import load_model
    from diffcsp.data import load_split
    from diffcsp.fileio import write_json, write_text
    from diffcsp.metrics import evaluate_predictions
    from diffcsp.predict import predict_split
    from diffcsp.predictions import Predictions
    from diffcsp.scoring import denoising_losses

    torch.set_num_threads(args.threads)
    model = load_model(args.run)
    if model.is_gen:
        sys.exit("model_rank.py scores CSP models only")
    model.eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    seconds: dict[str, float] = {}

    samples_path = out.with_name(out.name + ".samples.json.gz")
    if samples_path.exists():
        preds = Predictions.load(samples_path)
    else:
        if args.split == "heldout":
            from diffcsp.training import TrainConfig, resolve_protocol

            _, table, _ = resolve_protocol(TrainConfig.from_preset(args.dataset, "unused"), progress=False)
        else:
            table = load_split(args.dataset, args.split)
        if args.limit:
            table = table.subset(np.arange(min(args.limit, len(table))))
        journal = samples_path.with_name(samples_path.name + ".partial.pt")
        preds = predict_split(model, table, args.k, steps=args.steps, step_lr=args.step_lr, seed=args.seed, sampler=args.sampler,
                              corrector_temperature=args.corrector_temperature, journal=journal)
        preds.meta.update(checkpoint=args.run, split=args.split)
        preds.save(samples_path)
        journal.unlink(missing_ok=True)
    seconds["sampling"] = preds.meta["sampling_seconds"]
    crystals = preds.crystals
    k = preds.num_samples

    scores_path = out.with_name(out.name + ".scores.npz")
    if scores_path.exists():
        saved = np.load(scores_path)
        loss_l, loss_f = saved["lattice"], saved["coord"]
    else:
        start = time.perf_counter()
        loss_l, loss_f = np.zeros((len(crystals), k, len(levels))), np.zeros((len(crystals), k, len(levels)))
        with torch.no_grad():
            for j in range(k):
                l_j, f_j = denoising_losses(model, [c["samples"][j] for c in crystals], levels, args.draws, args.seed)
                loss_l[:, j], loss_f[:, j] = l_j, f_j
                print(f"scored sample {j + 1} of {k}", flush=True)
        seconds["scoring"] = round(time.perf_counter() - start, 1)
        tmp = scores_path.with_name(scores_path.stem + ".tmp.npz")
        np.savez_compressed(tmp, lattice=loss_l, coord=loss_f, levels=np.array(levels))
        tmp.replace(scores_path)

    eval_path = out.with_name(out.name + ".eval.json")
    if eval_path.exists():
        rmse = json.loads(eval_path.read_text())["sample_rmse"]
    else:
        start = time.perf_counter()
        report = evaluate_predictions(preds, workers=args.workers)
        rmse = [r.sample_rmse if (r.gt_valid or r.rule != "official") else [None] * k for r in report.rows]
        seconds["evaluation"] = round(time.perf_counter() - start, 1)
        write_json(eval_path, {"rule": report.rule, "sample_rmse": rmse})

    def score_pick(pick: np.ndarray) -> dict:
        got = [rmse[i][int(j)] for i, j in enumerate(pick)]
        hits = [g for g in got if g is not None]
        return {"match_rate": round(100 * len(hits) / len(got), 2), "rmse": round(float(np.mean(hits)), 4) if hits else None}

    cost = model.config
    total = cost.cost_lattice * loss_l + cost.cost_coord * loss_f
    low = [i for i, t in enumerate(levels) if t <= 50]
    high = [i for i, t in enumerate(levels) if t >= 200]
    rows = []
    for kk in sorted({k, *(int(x) for x in args.subsets.split(",") if 1 < int(x) < k)}):
        tot, lf, ll = total[:, :kk], loss_f[:, :kk], loss_l[:, :kk]
        rules = {
            "lowest loss, all levels": tot.mean(-1).argmin(1),
            "lowest loss, t <= 50": tot[..., low].mean(-1).argmin(1),
            "lowest loss, t >= 200": tot[..., high].mean(-1).argmin(1),
            "lowest coordinate loss, t <= 50": lf[..., low].mean(-1).argmin(1),
            "lowest lattice loss, all levels": ll.mean(-1).argmin(1),
            "highest loss, all levels (control)": tot.mean(-1).argmax(1),
        }
        if kk == k:
            for i, t in enumerate(levels):
                rules[f"lowest loss at t = {t}"] = tot[..., i].argmin(1)
        rows += [{"candidates": kk, "rule": name, **score_pick(pick)} for name, pick in rules.items()]
        any_k = [min((r for r in rr[:kk] if r is not None), default=None) for rr in rmse]
        rows.append({"candidates": kk, "rule": "any (oracle; RMSE of the best match)",
                     "match_rate": round(100 * sum(a is not None for a in any_k) / len(any_k), 2),
                     "rmse": round(float(np.mean([a for a in any_k if a is not None])), 4)})
    rows.insert(0, {"candidates": 1, "rule": "first sample (k = 1 baseline)", **score_pick(np.zeros(len(crystals), dtype=int))})
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(out.with_suffix(".json"), {"command": " ".join(sys.argv), "hardware": hardware(), "n": len(crystals),
                                          "k": k, "levels": levels, "draws": args.draws, "seconds": seconds,
                                          "sampler": preds.meta.get("sampler"), "rule": "official", "rows": rows})
    write_text(out.with_name(out.name + ".txt"), "\n".join(f"{r['candidates']:3d} {r['rule']:40s} {r['match_rate']:6.2f} %  {r['rmse']}" for r in rows) + "\n")
    for r in rows:
        print(f"{r['candidates']:3d} {r['rule']:40s} {r['match_rate']:6.2f} %  {r['rmse']}")


if __name__ == "__main__":
    main()
