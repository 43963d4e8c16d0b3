"""Relax-and-rank benchmark: does picking the lowest CHGNet energy of k DiffCSP samples beat one sample?

For each test crystal (first N of the split) we take k DiffCSP samples from an existing
predictions file, relax each with CHGNet (FIRE + FrechetCellFilter), relax the ground truth too,
and (optionally) relax k random symmetric structures of the same composition made by PyXtal, the
usual CSP baseline at the same number of relaxations. Then we score, with the project's evaluator
unchanged (``diffcsp.metrics.evaluate_predictions`` on k = 1 / k files):

* first sample (k = 1, "one random sample") before and after relaxation,
* top-1 by energy: the lowest single-point energy of the unrelaxed samples, and the lowest relaxed
  energy,
* any of k, before and after relaxation,
* PyXtal random structures: top-1 by relaxed energy and any of k.

Work is done crystal by crystal and appended to ``work.jsonl.gz``, a journal of one gzip member
per crystal (resumable: rerun to continue, ``--report-only`` to write the report from whatever has
finished; a record torn by a kill is dropped and redone), so a CPU budget can be spent and
stopped at any point. CPU is scarce: one worker, one torch thread.

    python bench/relax_benchmark.py --out bench/results/relax --limit 12 --k 10
    python bench/relax_benchmark.py --out bench/results/relax --report-only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from diffcsp.fileio import append_journal, read_journal, save_png, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
WORK = "work.jsonl.gz"  # the journal of finished crystals in the --out folder
INPUTS = {
    "carbon_24": ROOT / "bench/results/carbon_24/k20_first25_steps250.json.gz",
    "perov_5": ROOT / "bench/results/perov_5/k20_first100_steps250.json.gz",
}


def inputs(overrides: list[str]) -> dict[str, Path]:
    """The predictions file per dataset: the committed defaults, with ``DATASET=PATH`` overrides."""
    chosen = dict(INPUTS)
    for item in overrides:
        name, sep, path = item.partition("=")
        if not sep or name not in INPUTS:
            raise SystemExit(f"--input wants DATASET=PATH with DATASET one of {', '.join(INPUTS)}, not {item!r}")
        chosen[name] = Path(path).resolve()
    return chosen


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _work_records(work: Path, args: argparse.Namespace, repair: bool = False) -> list[dict[str, Any]]:
    """The finished work items, refusing a file made with another optimiser or another input
    (its samples would not be the ones the report and the resumed run use)."""
    records = read_journal(work, repair=repair)
    for rec in records:
        if rec.get("optimizer", "fire") != args.optimizer:
            raise SystemExit(f"{work} was relaxed with {rec.get('optimizer', 'fire')}, not {args.optimizer}: "
                             "pass the same --optimizer, or use another --out for another optimiser")
        source = rec.get("input", _shown(INPUTS[rec["dataset"]]))
        if rec["method"].startswith("diffcsp") and source != _shown(args.inputs[rec["dataset"]]):
            raise SystemExit(f"{work} holds {rec['dataset']} work on {source}, not on "
                             f"{_shown(args.inputs[rec['dataset']])}: pass the same --input, or use another --out")
    return records


def _result_to_json(r) -> dict[str, Any]:
    from diffcsp.predictions import structure_to_dict

    return {"status": r.status, "energy_per_atom": r.energy_per_atom, "initial_energy_per_atom": r.initial_energy_per_atom,
            "steps": r.steps, "max_force": r.max_force, "seconds": r.seconds, "message": r.message,
            "relaxed": structure_to_dict(r.structure) if r.structure is not None else None}


def random_structures(numbers: list[int], k: int, seed: int) -> list[dict[str, Any]]:
    """k random symmetric structures of this cell's composition (PyXtal), space groups drawn uniformly."""
    from collections import Counter

    from pymatgen.core import Element
    from pyxtal import pyxtal

    from diffcsp.predictions import structure_to_dict

    counts = Counter(numbers)
    species = [Element.from_Z(z).symbol for z in counts]
    num_ions = [counts[z] for z in counts]
    rng = np.random.default_rng(seed)
    out = []
    attempts = 0
    while len(out) < k and attempts < 200 * k:
        attempts += 1
        sg = int(rng.integers(1, 231))
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, sg, species, num_ions, seed=int(rng.integers(1 << 31)))
            if not crystal.valid:
                continue
            s = crystal.to_pymatgen()
        except Exception:
            continue
        if len(s) != len(numbers):  # keep the cell size of the ground truth (same cost per relaxation)
            continue
        out.append(structure_to_dict(s))
    return out


SYMPREC = 0.1  #: tolerance of the symmetry-constrained variant ("diffcsp_sym")
PRESSURE = 10.0  #: GPa of the "diffcsp_p10" variant: Carbon-24 comes from AIRSS searches at 10 GPa


METHODS = ("diffcsp", "diffcsp_sym", "diffcsp_p10", "pyxtal", "pyxtal_p10")
#: the PyXtal baseline relaxed the same way as each DiffCSP method it is compared with
BASELINE_OF = {"diffcsp": "pyxtal", "diffcsp_p10": "pyxtal_p10"}


def work_items(limit: int, baseline: bool, symmetric: tuple[str, ...] = ("perov_5",),
               methods: tuple[str, ...] | None = None, datasets: tuple[str, ...] = ("carbon_24", "perov_5")
               ) -> list[tuple[str, str, int]]:
    """The default plan: DiffCSP work for both datasets first (interleaved, plus the
    symmetry-constrained variant for ``symmetric`` datasets), then the PyXtal baseline
    (Carbon-24 first). With ``methods``: exactly those, crystal by crystal (every method of
    crystal i before crystal i + 1), so a run stopped early leaves comparable counts."""
    if methods is not None:
        return [(m, d, i) for i in range(limit) for d in datasets for m in methods
                if not ((m == "diffcsp_sym" and d not in symmetric) or (m.endswith("_p10") and d != "carbon_24"))]
    items = []
    for i in range(limit):
        items += [("diffcsp", "carbon_24", i), ("diffcsp", "perov_5", i)]
        items += [("diffcsp_sym", d, i) for d in symmetric]
    items += [("diffcsp_p10", "carbon_24", i) for i in range(limit)]
    if baseline:
        for i in range(limit):
            items += [("pyxtal", "carbon_24", i)]
        for i in range(limit):
            items += [("pyxtal", "perov_5", i)]
    return items


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from diffcsp.predictions import Predictions
    from diffcsp.relax import load_potential, relax_structures

    load_potential()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK
    done = {(rec["method"], rec["dataset"], rec["index"]) for rec in _work_records(work, args, repair=True)}
    preds = {name: Predictions.load(path) for name, path in args.inputs.items()}
    methods = tuple(args.methods.split(",")) if args.methods else None
    datasets = tuple(args.datasets.split(","))
    for method, dataset, i in work_items(args.limit, args.baseline, methods=methods, datasets=datasets):
        if (method, dataset, i) in done or i >= len(preds[dataset].crystals):
            continue
        crystal = preds[dataset].crystals[i]
        start = time.perf_counter()
        if method.startswith("diffcsp"):
            inputs = list(crystal["samples"][: args.k]) + [crystal["ground_truth"]]
        else:
            inputs = random_structures(crystal["ground_truth"]["numbers"], args.k, seed=1000 + i)
        symprec = SYMPREC if method == "diffcsp_sym" else None
        pressure = PRESSURE if method.endswith("_p10") else 0.0
        results = relax_structures(inputs, fmax=args.fmax, steps=args.steps, workers=1, progress=False, symprec=symprec,
                                   pressure=pressure, optimizer=args.optimizer)
        rec = {"method": method, "dataset": dataset, "index": i, "id": crystal["id"], "formula": crystal["formula"],
               "input": _shown(args.inputs[dataset]),
               "fmax": args.fmax, "optimizer": args.optimizer, "symprec": symprec, "pressure_GPa": pressure, "max_steps": args.steps, "wall_seconds": round(time.perf_counter() - start, 2),
               "inputs": inputs[: args.k] if method.startswith("pyxtal") else None,
               "samples": [_result_to_json(r) for r in results[: args.k]],
               "ground_truth": _result_to_json(results[-1]) if method.startswith("diffcsp") else None}
        append_journal(work, rec)
        print(f"{time.strftime('%H:%M:%S')} {method} {dataset} #{i} {crystal['formula']}: {rec['wall_seconds']} s, "
              f"statuses {[r.status[:4] for r in results]}", flush=True)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _predictions_from_work(records: list[dict[str, Any]], source, k: int, method: str):
    """Rebuild the relaxed predictions file (relax.relax_predictions layout) from finished work."""
    from diffcsp.predictions import Predictions

    crystals = []
    for rec in records:
        c = source.crystals[rec["index"]]
        originals = c["samples"][:k] if method.startswith("diffcsp") else rec["inputs"]
        samples = []
        for original, r in zip(originals, rec["samples"], strict=True):
            ok = r["status"] in ("converged", "unconverged") and r["relaxed"] is not None
            relaxed = dict(r["relaxed"]) if ok else {key: original[key] for key in ("numbers", "lattice", "frac_coords")}
            relaxed.update(energy_per_atom=r["energy_per_atom"], status=r["status"], steps=r["steps"],
                           initial={**{key: original[key] for key in ("numbers", "lattice", "frac_coords")},
                                    "energy_per_atom": r["initial_energy_per_atom"]})
            samples.append(relaxed)
        crystals.append({"id": c["id"], "formula": c["formula"], "ground_truth": c["ground_truth"], "samples": samples})
    return Predictions("csp", source.dataset, source.split, k, meta=dict(source.meta), crystals=crystals)


def _unrelaxed(preds):
    """The same crystals with the unrelaxed samples (for 'before relaxation' rows)."""
    from diffcsp.predictions import Predictions

    crystals = [{**c, "samples": [dict(s["initial"]) for s in c["samples"]]} for c in preds.crystals]
    return Predictions("csp", preds.dataset, preds.split, preds.num_samples, meta=preds.meta, crystals=crystals)


def _fmt(rate: float | None, rmse: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f} % ({'–' if rmse is None else f'{rmse:.3f}'})"


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.metrics import evaluate_predictions
    from diffcsp.predictions import Predictions
    from diffcsp.relax import top1_by_energy

    out = Path(args.out)
    records = _work_records(out / WORK, args)
    sources = {name: Predictions.load(path) for name, path in args.inputs.items()}
    summary: dict[str, Any] = {}
    scatter: dict[str, list[tuple[float, float | None]]] = {}
    per_crystal_rows = []
    for (method, dataset) in [(m, d) for m in ("diffcsp", "diffcsp_sym", "diffcsp_p10") for d in args.inputs]:
        ours = sorted((r for r in records if r["method"] == method and r["dataset"] == dataset), key=lambda r: r["index"])
        if not ours:
            continue
        label = {"diffcsp": dataset, "diffcsp_sym": f"{dataset}, symmetry kept (symprec {SYMPREC})",
                 "diffcsp_p10": f"{dataset}, at {PRESSURE:g} GPa (enthalpy)"}[method]
        k = len(ours[0]["samples"])
        relaxed = _predictions_from_work(ours, sources[dataset], k, "diffcsp")
        before = _unrelaxed(relaxed)
        ev = lambda p: evaluate_predictions(p, workers=1, timeout=60.0, progress=False)  # noqa: E731
        rep_before, rep_after = ev(before), ev(relaxed)
        rep_top1_before, rep_top1_after = ev(top1_by_energy(relaxed, initial=True)), ev(top1_by_energy(relaxed))
        sb, sa, t1b, t1a = rep_before.summary(), rep_after.summary(), rep_top1_before.summary(), rep_top1_after.summary()
        n = sb["n"]
        all_samples = [s for r in ours for s in r["samples"]]
        statuses = {s: sum(x["status"] == s for x in all_samples) for s in sorted({x["status"] for x in all_samples})}
        ok_seconds = [x["seconds"] for x in all_samples]
        # Does CHGNet prefer the ground truth? Compare relaxed GT energy with the best relaxed candidate.
        gt_vs_best = []
        for rec, crystal, row_after, row_top1 in zip(ours, relaxed.crystals, rep_after.rows, rep_top1_after.rows, strict=True):
            energies = [s["energy_per_atom"] for s in crystal["samples"] if s["energy_per_atom"] is not None]
            best = min(energies) if energies else None
            gt_e = rec["ground_truth"]["energy_per_atom"]
            if best is not None and gt_e is not None:
                gt_vs_best.append(1000 * (best - gt_e))
            for s, rmse in zip(crystal["samples"], row_after.sample_rmse, strict=True):
                if s["energy_per_atom"] is not None and best is not None:
                    scatter.setdefault(label, []).append((1000 * (s["energy_per_atom"] - best), rmse))
            per_crystal_rows.append({"dataset": label, "id": rec["id"], "formula": rec["formula"],
                                     "gt_energy_per_atom": gt_e, "best_energy_per_atom": best,
                                     "best_minus_gt_meV": None if best is None or gt_e is None else round(1000 * (best - gt_e), 1),
                                     "gt_status": rec["ground_truth"]["status"],
                                     "top1_matched": row_top1.matched_k1, "top1_rmse": row_top1.rmse_k1,
                                     "any_matched_after": row_after.matched_k, "first_matched_after": row_after.matched_k1})
        gaps = np.array(gt_vs_best) if gt_vs_best else np.array([np.nan])
        # CHGNet's own version of each ground truth: does relaxation keep it (GT_relaxed vs GT), and
        # do the relaxed candidates find it (top-1 / any of k against the *relaxed* ground truth)?
        gt_relaxed = [r["ground_truth"]["relaxed"] if r["ground_truth"]["status"] in ("converged", "unconverged") else None
                      for r in ours]
        keep = [i for i, g in enumerate(gt_relaxed) if g is not None]
        gt_kept = ev(Predictions("csp", relaxed.dataset, relaxed.split, 1, crystals=[
            {**relaxed.crystals[i], "samples": [gt_relaxed[i]]} for i in keep])).summary()
        vs_relaxed_gt = [{**relaxed.crystals[i], "ground_truth": gt_relaxed[i]} for i in keep]
        vs_gt_preds = Predictions("csp", relaxed.dataset, relaxed.split, k, crystals=vs_relaxed_gt)
        s_vs_all = ev(vs_gt_preds).summary()
        s_vs_top1 = ev(top1_by_energy(vs_gt_preds)).summary()
        entry = {
            "n_crystals": n, "k": k,
            "first_sample_before": [sb["match_rate"], sb["rmse"]],
            "first_sample_after": [sa["match_rate"], sa["rmse"]],
            "top1_energy_before": [t1b["match_rate"], t1b["rmse"]],
            "top1_energy_after": [t1a["match_rate"], t1a["rmse"]],
            "any_of_k_before": [sb["match_rate_k"], sb["rmse_k"]],
            "any_of_k_after": [sa["match_rate_k"], sa["rmse_k"]],
            "relaxed_gt_still_matches_gt": [gt_kept["match_rate"], gt_kept["rmse"]],
            "vs_relaxed_gt": {"n_crystals": len(keep), "first_sample": [s_vs_all["match_rate"], s_vs_all["rmse"]],
                              "top1_energy": [s_vs_top1["match_rate"], s_vs_top1["rmse"]],
                              "any_of_k": [s_vs_all["match_rate_k"], s_vs_all["rmse_k"]]},
            "relaxations": len(all_samples), "statuses": statuses,
            "seconds_per_relaxation_mean": float(np.mean(ok_seconds)), "seconds_per_relaxation_median": float(np.median(ok_seconds)),
            "steps_median": float(np.median([x["steps"] for x in all_samples])),
            "gt_relaxed_statuses": {s: sum(r["ground_truth"]["status"] == s for r in ours) for s in {r["ground_truth"]["status"] for r in ours}},
            "best_candidate_minus_gt_meV_per_atom": {"median": float(np.nanmedian(gaps)), "min": float(np.nanmin(gaps)),
                                                    "max": float(np.nanmax(gaps)),
                                                    "below_gt_by_more_than_5meV": int(np.sum(gaps < -5)),
                                                    "n": int(np.sum(np.isfinite(gaps)))},
        }
        base = sorted((r for r in records if r["method"] == BASELINE_OF.get(method) and r["dataset"] == dataset),
                      key=lambda r: r["index"])
        if base:
            bpreds = _predictions_from_work(base, sources[dataset], k, "pyxtal")
            rb, rt = ev(bpreds), ev(top1_by_energy(bpreds))
            ids = {c["id"] for c in bpreds.crystals}
            # The same crystals for our method, for a like-for-like comparison.
            ours_same = [row for row in rep_top1_after.rows if row.id in ids]
            entry["pyxtal"] = {"n_crystals": len(base), "top1_energy_after": [rt.summary()["match_rate"], rt.summary()["rmse"]],
                               "any_of_k_after": [rb.summary()["match_rate_k"], rb.summary()["rmse_k"]],
                               "diffcsp_top1_same_crystals": sum(r.matched_k1 for r in ours_same) / max(len(ours_same), 1),
                               "diffcsp_any_same_crystals": sum(r.matched_k for r in rep_after.rows if r.id in ids) / max(len(ids), 1),
                               "seconds_per_relaxation_mean": float(np.mean([x["seconds"] for r in base for x in r["samples"]])),
                               "statuses": {s: sum(x["status"] == s for r in base for x in r["samples"])
                                            for s in {x["status"] for r in base for x in r["samples"]}}}
        summary[label] = entry
    write_json(out / "summary.json", summary)
    import csv
    import io

    buffer = io.StringIO()
    if per_crystal_rows:
        writer = csv.DictWriter(buffer, fieldnames=list(per_crystal_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_crystal_rows)
    write_text(out / "per_crystal.csv", buffer.getvalue())

    # Scatter: energy above the crystal's best candidate against RMSE to the ground truth.
    fig, axes = plt.subplots(1, max(len(scatter), 1), figsize=(4.6 * max(len(scatter), 1), 4.0), squeeze=False)
    for ax, (dataset, points) in zip(axes[0], scatter.items(), strict=False):
        matched = [(e, r) for e, r in points if r is not None]
        unmatched = [e for e, r in points if r is None]
        ax.scatter([max(e, 0.1) for e, _ in matched], [r for _, r in matched], s=12, label="matches ground truth")
        ax.scatter([max(e, 0.1) for e in unmatched], [0.55] * len(unmatched), s=12, marker="x", color="tab:red",
                   label="no match (drawn at 0.55)")
        ax.set_xscale("log")
        ax.set_xlabel("E − lowest E of the crystal's k candidates\n(meV/atom, relaxed; 0 drawn at 0.1)", fontsize=8)
        ax.set_ylabel("RMSE to ground truth (normalised)", fontsize=8)
        ax.set_title(f"{dataset}:\n{len(points)} relaxed DiffCSP samples", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_png(fig, out / "energy_vs_rmse.png")

    write_text(out / "REPORT.md", _markdown(summary, args, records))
    print((out / "REPORT.md").read_text())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _markdown(summary: dict[str, Any], args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    import torch

    lines = ["# Relax and rank with CHGNet: top-1-by-energy match rate", "",
             f"- **Date**: {time.strftime('%Y-%m-%d')}",
             f"- **Hardware**: {_cpu_name()}, {os.cpu_count()} cores shared with training jobs and other work; "
             f"1 worker, 1 torch thread; Python {platform.python_version()}, torch {torch.__version__}",
             f"- **Potential**: CHGNet {records[0].get('chgnet', '0.3.0 pretrained (chgnet 0.4.2 wheel)')}; "
             f"{records[0].get('optimizer', 'fire').upper()} + FrechetCellFilter, fmax = {records[0]['fmax']} eV/Å, at most {records[0]['max_steps']} steps",
             f"- **Samples**: the first k = {len(records[0]['samples'])} samples of the DiffCSP predictions in "
             + ", ".join(f"`{_shown(args.inputs[d])}`" for d in sorted({r['dataset'] for r in records}))
             + " (see each file's meta for the model, sampler and seed), first N test crystals in file order",
             "- **Metric**: the project's evaluator (`diffcsp.metrics.evaluate_predictions`, default = official DiffCSP validity rule; StructureMatcher "
             "stol 0.5, ltol 0.3, angle_tol 10) on k = 1 files built by `diffcsp.relax.top1_by_energy`; "
             "match rate over all crystals, RMSE (in brackets) over matched ones", ""]
    header = "| dataset | crystals × k | first sample, unrelaxed | first sample, relaxed | top-1 by energy, unrelaxed (single point) | top-1 by energy, relaxed | any of k, unrelaxed | any of k, relaxed | s / relaxation |"
    lines += [header, "|" + " --- |" * (header.count("|") - 1)]
    for dataset, e in summary.items():
        lines.append(f"| {dataset} | {e['n_crystals']} × {e['k']} | {_fmt(*e['first_sample_before'])} | {_fmt(*e['first_sample_after'])} | "
                     f"{_fmt(*e['top1_energy_before'])} | {_fmt(*e['top1_energy_after'])} | {_fmt(*e['any_of_k_before'])} | "
                     f"{_fmt(*e['any_of_k_after'])} | {e['seconds_per_relaxation_mean']:.1f} (median {e['seconds_per_relaxation_median']:.1f}) |")
    lines += ["", "Against CHGNet's own minimum of each ground truth (the ground truth relaxed with the same settings) "
              "instead of the dataset's structure:", "",
              "| dataset | relaxed GT still matches GT | crystals | first sample, relaxed | top-1 by energy, relaxed | any of k, relaxed |",
              "| --- | --- | --- | --- | --- | --- |"]
    for dataset, e in summary.items():
        v = e["vs_relaxed_gt"]
        lines.append(f"| {dataset} | {_fmt(*e['relaxed_gt_still_matches_gt'])} | {v['n_crystals']} | {_fmt(*v['first_sample'])} | "
                     f"{_fmt(*v['top1_energy'])} | {_fmt(*v['any_of_k'])} |")
    lines += ["", "## Baseline: PyXtal random symmetric structures, same potential, same ranking", ""]
    any_base = False
    for dataset, e in summary.items():
        if "pyxtal" in e:
            any_base = True
            b = e["pyxtal"]
            lines.append(f"- **{dataset}** ({b['n_crystals']} crystals × {e['k']} random structures, {b['seconds_per_relaxation_mean']:.1f} s / relaxation, "
                         f"statuses {b['statuses']}): top-1 by relaxed energy {_fmt(*b['top1_energy_after'])}, any of k {_fmt(*b['any_of_k_after'])}; "
                         f"DiffCSP on the same crystals: top-1 {100 * b['diffcsp_top1_same_crystals']:.1f} %, any of k {100 * b['diffcsp_any_same_crystals']:.1f} %.")
    if not any_base:
        lines.append("- Not run (CPU budget).")
    lines += ["", "## Where CHGNet disagrees with the ground truth", ""]
    for dataset, e in summary.items():
        g = e["best_candidate_minus_gt_meV_per_atom"]
        lines.append(f"- **{dataset}**: relaxed energy of the best candidate minus relaxed ground truth: median {g['median']:.1f} meV/atom "
                     f"(min {g['min']:.1f}, max {g['max']:.1f}); in {g['below_gt_by_more_than_5meV']} of {g['n']} crystals the lowest relaxed candidate "
                     f"lies > 5 meV/atom *below* the relaxed ground truth: CHGNet prefers another minimum to the ground truth's own. "
                     f"Ground-truth relaxations: {e['gt_relaxed_statuses']}. Sample statuses: {e['statuses']}.")
    lines += ["", "Per crystal: `per_crystal.csv`; scatter of energy above the best candidate against RMSE: `energy_vs_rmse.png`; "
              "raw relaxations: `work.jsonl.gz`; numbers: `summary.json`.", "", "## Command", "", "```",
              f"python bench/relax_benchmark.py --out {args.out} --limit {args.limit} --k {args.k} --fmax {args.fmax} --steps {args.steps} --optimizer {args.optimizer}"
              f"{' --baseline' if args.baseline else ''}"
              f"{f' --methods {args.methods} --datasets {args.datasets}' if args.methods else ''}{''.join(f' --input {i}' for i in args.input)}   # resumable; then --report-only",
              "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench/results/relax"))
    parser.add_argument("--limit", type=int, default=12, help="first N test crystals of each dataset")
    parser.add_argument("--k", type=int, default=10, help="samples per crystal")
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", default="fire", help="ASE optimiser: fire, bfgs or lbfgs (recorded per work item)")
    parser.add_argument("--baseline", action="store_true", help="also relax PyXtal random structures (after our work)")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (run crystal by crystal; "
                        "default: the plan of work_items)")
    parser.add_argument("--datasets", default="carbon_24,perov_5", help="with --methods: which datasets")
    parser.add_argument("--input", action="append", default=[], metavar="DATASET=PATH",
                        help="predictions file (k samples per crystal) to relax for DATASET, instead of the "
                             "committed default; one out folder per input (work.jsonl.gz records it)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.inputs = inputs(args.input)
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    sys.exit(main())
