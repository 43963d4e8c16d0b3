#!/usr/bin/env python
"""End-to-end CSP benchmark: train (or reuse a run) → sample → evaluate → dated Markdown report.

Every step is a real `diffcsp` CLI call, and the report lists those exact command lines, so
anyone can rerun them. Example (the Perov-5 numbers in BENCHMARKS.md):

    python bench/csp_benchmark.py --dataset perov_5 --run runs/perov_5_cpu --k 1 --k 20 --limit-k 20=200

Metrics use `diffcsp evaluate`'s default, the DiffCSP authors' validity rule ("official": a
crystal must be structurally valid, pass SMACT's charge-neutrality test and have a computable
CrystalNN fingerprint; for k = 1 the ground truth too); `--rule structure` gives the older
structure-only numbers. The report names the rule in its title and table.

Data protocol: when the official train split is absent (as on the project's machines), training
uses the official val split minus a fixed held-out part ("val→test"); test is for reporting only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: list[dict]) -> float:
    """Run a CLI command, stream its output, record the command line and wall time."""
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    log.append({"command": _shown(cmd), "seconds": round(seconds, 1)})
    return seconds


def _shown(cmd: list[str]) -> str:
    """The command line as a user would type it from the repository root."""
    return shlex.join(cmd).replace(sys.executable, "python").replace(f"{REPO}/", "")


def hardware() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def csp_table(dataset: str, split: str, limit: int | None = None):
    """The crystals a CSP benchmark samples: a split of ``dataset`` or ``"heldout"`` (the
    training protocol's held-out validation crystals, for tuning without the test split),
    cut to the first ``limit`` crystals."""
    import numpy as np

    if split == "heldout":
        from diffcsp.training import TrainConfig, resolve_protocol

        _, table, _ = resolve_protocol(TrainConfig.from_preset(dataset, "unused"), progress=False)
    else:
        from diffcsp.data import load_split

        table = load_split(dataset, split)
    return table.subset(np.arange(min(limit, len(table)))) if limit else table


def labelled_metrics(items: list[str], same: tuple[str, ...]) -> list[tuple[str, str, dict]]:
    """``(path, label, metrics)`` for ``METRICS.json[=LABEL]`` arguments (JSON of ``diffcsp
    evaluate --json``; the label is empty when not given), for the scripts that plot several
    evaluations side by side. Raises ``SystemExit`` with one ``error:`` line when a file cannot
    be read or the files differ in a key of ``same`` (e.g. the crystal set): their difference
    would say more about the crystals than about what is compared."""
    out, seen = [], set()
    for item in items:
        path, _, label = item.partition("=")
        try:
            metrics = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: cannot read {path}: {exc}") from None
        seen.add(tuple(metrics.get(key) for key in same))
        out.append((path, label, metrics))
    if len(seen) > 1:
        raise SystemExit(f"error: the files evaluate different crystal sets ({', '.join(same)}: "
                         f"{sorted(seen, key=str)})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--run", type=Path, help="run directory to reuse (trained with `diffcsp train` if it has no model)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--k", type=int, action="append", help="samples per crystal (repeatable; default 1 and 20)")
    ap.add_argument("--limit-k", action="append", default=[], help="K=N: evaluate K samples on the first N test crystals")
    ap.add_argument("--steps", type=int, help="reverse steps (default: T = 1000, the paper's)")
    ap.add_argument("--threads", type=int, help="torch threads for sampling")
    ap.add_argument("--workers", type=int, help="StructureMatcher worker processes")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--rule", default="official", choices=["official", "structure"], help="metric validity rule (see `diffcsp evaluate --help`)")
    ap.add_argument("--reuse", action="store_true",
                    help="report existing results of the same commands instead of rerunning (metrics files must be of the same rule)")
    ap.add_argument("--reevaluate", action="store_true", help="keep existing predictions files, rerun only the evaluation")
    ap.add_argument("--tag", default="", help="suffix for the report and result files (e.g. steps250)")
    args = ap.parse_args()

    ks = args.k or [1, 20]
    limits = {int(k): int(n) for k, n in (item.split("=") for item in args.limit_k)}
    run_dir = args.run or REPO / "runs" / f"{args.dataset}_{args.preset}"
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "diffcsp"]
    log: list[dict] = []

    if not (run_dir / "model" / "model.safetensors").is_file():
        run(exe + ["train", "--dataset", args.dataset, "--preset", args.preset, "--out", str(run_dir)], log)
    protocol = json.loads((run_dir / "protocol.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    model_meta = json.loads((run_dir / "model" / "config.json").read_text())["meta"]

    results = {}
    for k in ks:
        stem = out / (f"k{k}" if k not in limits else f"k{k}_first{limits[k]}")
        stem = stem.with_name(stem.name + (f"_steps{args.steps}" if args.steps else ""))
        sample = exe + ["sample", "--checkpoint", str(run_dir / "model"), "--dataset", args.dataset, "--split", "test",
                        "--num-samples", str(k), "--out", f"{stem}.json.gz"]
        if k in limits:
            sample += ["--limit", str(limits[k])]
        if args.steps:
            sample += ["--steps", str(args.steps)]
        if args.threads:
            sample += ["--threads", str(args.threads)]
        evaluate = exe + ["evaluate", f"{stem}.json.gz", "--json", f"{stem}.metrics.json", "--csv", f"{stem}.per_crystal.csv",
                          "--rule", args.rule]
        if k > 1:
            evaluate += ["--plot", f"{stem}.match_vs_k.png"]
        if args.workers:
            evaluate += ["--workers", str(args.workers)]
        reuse_preds = (args.reuse or args.reevaluate) and Path(f"{stem}.json.gz").is_file()
        if reuse_preds:
            from diffcsp.predictions import Predictions

            t_sample = Predictions.load(f"{stem}.json.gz").meta["sampling_seconds"]
            log.append({"command": _shown(sample), "seconds": round(t_sample, 1), "reused": True})
        else:
            t_sample = run(sample, log)
        if args.reuse and Path(f"{stem}.metrics.json").is_file():
            # results of an earlier invocation of the same command: report them, with their time
            old = json.loads(Path(f"{stem}.metrics.json").read_text())
            if old.get("rule", "structure") != args.rule:  # files from before --rule existed: structure rule
                sys.exit(f"{stem}.metrics.json was made with the {old.get('rule', 'structure')!r} rule, not "
                         f"{args.rule!r}: rerun with --reevaluate instead of --reuse")
            t_eval = float(old.get("eval_seconds", "nan"))
            log.append({"command": _shown(evaluate), "seconds": round(t_eval, 1), "reused": True})
        else:
            t_eval = run(evaluate, log)
        metrics = json.loads(Path(f"{stem}.metrics.json").read_text())
        preds_meta = {"n": metrics["n"], "sample_seconds": round(t_sample, 1), "eval_seconds": round(t_eval, 1),
                      "seconds_per_crystal_sample": round(t_sample / (metrics["n"] * k), 3)}
        results[k] = {**metrics, **preds_meta, "stem": str(stem.relative_to(REPO)) if stem.is_relative_to(REPO) else str(stem)}

    today = dt.date.today().isoformat()
    tag = f"-{args.tag}" if args.tag else ""
    report = out / f"report-{today}{tag}.md"
    from diffcsp.metrics import RULE_DESCRIPTIONS

    lines = [
        f"# CSP benchmark: {args.dataset} ({today}), {args.rule} metric rule", "",
        f"- **Data protocol**: {protocol['name']} — train: {protocol['train']} ({protocol['train_size']} crystals); "
        f"validation/model selection: {protocol['val']} ({protocol['val_size']}); reported on the official test split.",
        f"- **Hardware**: {hardware()}",
        f"- **Model**: preset `{config['preset']}`, CSPNet hidden {config['model']['hidden']}, {config['model']['num_layers']} layers, "
        f"K = {config['model']['num_freqs']}; {model_meta.get('epochs')} epochs, batch {config['batch_size']}, "
        f"training time {model_meta.get('train_seconds')} s, best validation loss {model_meta.get('best_val_loss'):.4f}.",
        f"- **Sampling**: {args.steps or 1000} steps, predictor–corrector with the paper's step size for {args.dataset}.",
        f"- **Metric rule**: `{args.rule}` — {RULE_DESCRIPTIONS[args.rule]}.",
        "", "| k | test crystals | rule | match rate (%) | RMSE | valid (%) | sampling s / (crystal·sample) | sampling time (s) | evaluation time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in results.items():
        mr, rmse, valid = (r["match_rate"], r["rmse"], r["valid_rate"]) if k == 1 else (r["match_rate_k"], r["rmse_k"], r["valid_rate_k"])
        subset = f"first {limits[k]}" if k in limits else "all"
        shown_rmse = f"{rmse:.4f}" if rmse is not None else "–"
        lines.append(f"| {k} | {r['n']} ({subset}) | {r['rule']} | {100 * mr:.2f} | {shown_rmse} | {100 * valid:.1f} | "
                     f"{r['seconds_per_crystal_sample']} | {r['sample_seconds']} | {r['eval_seconds']} |")
    lines += ["", "## Commands", "", "```"] + [f"{e['command']}    # {e['seconds']} s{' (earlier run, reused)' if e.get('reused') else ''}" for e in log] + ["```", ""]
    lines += ["Files: " + ", ".join(f"`{r['stem']}.*`" for r in results.values()), ""]
    report.write_text("\n".join(lines))
    (out / f"report-{today}{tag}.json").write_text(json.dumps({"results": results, "commands": log}, indent=2))
    print(f"report written to {report}")


if __name__ == "__main__":
    main()
