#!/usr/bin/env python
"""Turn k CSP samples into one answer by the model's own denoising loss, and score the choice.

    python bench/model_rank.py --run carbon_24 --dataset carbon_24 --split heldout -k 10 \\
        --sampler fast --threads 2 --workers 2 --out bench/results/model_rank/carbon_24_heldout_fast_k10

For every crystal the script draws k samples (`predict_split`, resumable), then scores each
sample by the training loss the model makes on it as if it were a clean crystal
(:func:`denoising_losses`): at fixed noise levels ``--levels`` it noises the sample and measures
how well the network recovers the noise, lattice and coordinate parts apart. The noise of level
t, draw d depends only on (seed, t, d) and the crystal's atom count, so the samples of one
crystal meet the same noise (common random numbers) and their scores differ by what the samples
differ in. A sample the model finds typical — sharp bonds, a training-like arrangement — should
be recovered well; whether that picks the right structure is what this script measures (on the
test split it does not: BENCHMARKS.md, "Choosing one of k samples by the model's own loss").
Several selection rules (the lowest loss over some levels, and the first sample as the
baseline) are scored with the official CSP metrics: each rule's pick stands as the k = 1 answer.
"Any of k" (the oracle) bounds what any selection can reach.

``--samples FILE`` (repeatable) scores the samples of existing `diffcsp sample` files instead,
pooled per crystal in the order given (e.g. k = 1 runs with seeds 0, 1, 2 make a pool of three).
Outputs, next to ``--out``: ``.samples.json.gz`` (the k samples, unless ``--samples``),
``.scores.npz`` (per crystal, sample and level: lattice and coordinate losses), ``.eval.json`` (per-sample RMSE, cached),
``.csv`` and ``.json`` (one row per rule, with protocol and hardware). Each stage is reused when
its file exists, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import csp_table, hardware  # noqa: E402

from diffcsp.batching import batch_from_arrays  # noqa: E402


#: noise levels (of T = 1000) at which samples are scored: from nearly clean to mostly noise
DEFAULT_LEVELS = (5, 20, 50, 100, 200, 400, 700)


def _arrays(crystal: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, frac_coords, lattice) of a pymatgen Structure or a predictions-file dict."""
    if isinstance(crystal, dict):
        return (np.asarray(crystal["numbers"]), np.asarray(crystal["frac_coords"], dtype=float),
                np.asarray(crystal["lattice"], dtype=float))
    return (np.array([site.specie.Z for site in crystal]), crystal.frac_coords, crystal.lattice.matrix)


@torch.no_grad()
def denoising_losses(model, crystals: Sequence[Any], levels: Sequence[int] = DEFAULT_LEVELS, draws: int = 4,
                     seed: int = 0, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Lattice and coordinate parts of the training loss of each crystal at each level: two (B, L) arrays.

    ``crystals``: pymatgen Structures or predictions-file dicts, scored as if they were clean
    data. Each part is averaged over ``draws`` noise draws and, for coordinates, over the atoms.
    """
    if model.is_gen:
        raise ValueError("denoising_losses scores CSP models (atom types given); a generation model also diffuses types")
    levels = [int(t) for t in levels]
    if not all(1 <= t <= model.config.timesteps for t in levels):
        raise ValueError(f"levels must lie in 1..{model.config.timesteps}, got {levels}")
    model.eval()
    device = next(model.parameters()).device
    parts = [_arrays(c) for c in crystals]
    lattice_loss, coord_loss = np.zeros((len(parts), len(levels))), np.zeros((len(parts), len(levels)))
    lproc, fproc = model.lattice_process, model.coord_process
    for lo in range(0, len(parts), batch_size):
        chunk = parts[lo : lo + batch_size]
        batch = batch_from_arrays(np.concatenate([p[0] for p in chunk]), np.concatenate([p[1] for p in chunk]),
                                  np.stack([p[2] for p in chunk]), np.array([len(p[0]) for p in chunk])).to(device)
        B, n = batch.num_graphs, batch.num_atoms
        for j, t in enumerate(levels):
            tt = torch.full((B,), t, dtype=torch.long, device=device)
            sigma, lam = fproc.sigmas[t], fproc.lambdas[t]
            for d in range(draws):
                eps_l, eps_f = _noise(chunk, seed, t, d, device)
                lattice_t = lproc.add_noise(batch.lattice, tt, eps_l)
                frac_t = fproc.add_noise(batch.frac_coords, sigma, eps_f)
                pred_l, pred_f, _ = model.net(batch.atom_types, frac_t, lattice_t, n, tt)
                lattice_loss[lo : lo + B, j] += ((pred_l - eps_l) ** 2).mean(dim=(1, 2)).cpu().numpy() / draws
                per_atom = ((pred_f - fproc.target(sigma, eps_f, lam)) ** 2).mean(-1)
                per_crystal = torch.zeros(B, device=device).index_add_(0, batch.batch, per_atom) / n
                coord_loss[lo : lo + B, j] += per_crystal.cpu().numpy() / draws
    return lattice_loss, coord_loss


def _noise(chunk: list, seed: int, t: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crystal, noise that depends only on (seed, t, d) and its atom count."""
    gen = torch.Generator()
    eps_l, eps_f = [], []
    for numbers, _, _ in chunk:
        gen.manual_seed(seed * 1_000_003 + t * 1_009 + d)
        eps_l.append(torch.randn(3, 3, generator=gen))
        eps_f.append(torch.randn(len(numbers), 3, generator=gen))
    return torch.stack(eps_l).to(device), torch.cat(eps_f).to(device)


def model_scores(model, crystals: Sequence[Any], **kw: Any) -> np.ndarray:
    """One number per crystal, lower = more typical to the model: the training loss's weighting
    of the two parts, averaged over the levels of :func:`denoising_losses` (keywords go there)."""
    lattice, coord = denoising_losses(model, crystals, **kw)
    return (model.config.cost_lattice * lattice + model.config.cost_coord * coord).mean(-1)


def pool(files: list) -> object:
    """One predictions object with every file's samples of each crystal, in file order."""
    first = files[0]
    for other in files[1:]:
        if [c["id"] for c in other.crystals] != [c["id"] for c in first.crystals]:
            raise SystemExit("pooled files must hold the same crystals in the same order")
    for i, crystal in enumerate(first.crystals):
        crystal["samples"] = [s for f in files for s in f.crystals[i]["samples"]]
    first.num_samples = sum(f.num_samples for f in files)
    first.meta["sampling_seconds"] = sum(f.meta.get("sampling_seconds") or 0 for f in files)
    return first


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
    p.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)))
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--subsets", default="2,4", help="also choose among only the first K' samples, for each K' listed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--samples", action="append", help="score the samples of existing predictions files (diffcsp sample; "
                   "repeat to pool runs of the same crystals, e.g. with different seeds) instead of sampling")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from diffcsp.checkpoint import load_model
    from diffcsp.fileio import write_json, write_text
    from diffcsp.metrics import evaluate_predictions
    from diffcsp.predict import predict_split
    from diffcsp.predictions import Predictions

    torch.set_num_threads(args.threads)
    model = load_model(args.run)
    if model.is_gen:
        sys.exit("model_rank.py scores CSP models only")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    report_path = out.with_suffix(".json")
    # a rerun reuses cached stages: keep the times they took when they ran
    seconds: dict[str, float] = json.loads(report_path.read_text())["seconds"] if report_path.exists() else {}

    samples_path = out.with_name(out.name + ".samples.json.gz")
    if args.samples:
        preds = pool([Predictions.load(path) for path in args.samples])
    elif samples_path.exists():
        preds = Predictions.load(samples_path)
    else:
        table = csp_table(args.dataset, args.split, args.limit)
        journal = samples_path.with_name(samples_path.name + ".partial.pt")
        preds = predict_split(model, table, args.k, steps=args.steps, step_lr=args.step_lr, seed=args.seed, sampler=args.sampler,
                              corrector_temperature=args.corrector_temperature, journal=journal)
        preds.meta.update(checkpoint=args.run, split=args.split)
        preds.save(samples_path)
        journal.unlink(missing_ok=True)
    seconds["sampling"] = preds.meta.get("sampling_seconds")
    crystals = preds.crystals
    k = preds.num_samples

    scores_path = out.with_name(out.name + ".scores.npz")
    if scores_path.exists():
        saved = np.load(scores_path)
        loss_l, loss_f = saved["lattice"], saved["coord"]
    else:
        start = time.perf_counter()
        loss_l, loss_f = np.zeros((len(crystals), k, len(levels))), np.zeros((len(crystals), k, len(levels)))
        for j in range(k):
            loss_l[:, j], loss_f[:, j] = denoising_losses(model, [c["samples"][j] for c in crystals], levels, args.draws,
                                                          args.seed)
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
    write_json(report_path, {"command": " ".join(sys.argv), "hardware": hardware(), "n": len(crystals),
                                          "k": k, "levels": levels, "draws": args.draws, "seconds": seconds,
                                          "sampler": preds.meta.get("sampler"), "rule": "official", "rows": rows})
    lines = [f"{r['candidates']:3d} {r['rule']:40s} {r['match_rate']:6.2f} %  {r['rmse']}" for r in rows]
    write_text(out.with_name(out.name + ".txt"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
