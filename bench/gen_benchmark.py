#!/usr/bin/env python
"""End-to-end ab initio generation benchmark: train (or reuse) → generate → evaluate → report.

    python bench/gen_benchmark.py --dataset perov_5 --run runs/perov_5_gen_cpu -n 1000

Every step is a real `diffcsp` CLI call listed in the report with its wall time. The reference
for coverage and property distances is the official test split (val→test protocol when the
train split is absent). Validity is the official rule (structure, SMACT, CrystalNN fingerprint);
coverage standardises composition fingerprints with CDVAE's fixed scaler unless
`--comp-scaler reference` is given; the report names both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from csp_benchmark import REPO, _shown, hardware, run  # noqa: E402

from diffcsp.fileio import write_text  # noqa: E402
from diffcsp.predictions import Predictions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--run", type=Path)
    ap.add_argument("-n", type=int, default=1000, help="crystals to generate")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--sampler", default="paper", choices=["paper", "auto"],
                    help="preset of `diffcsp generate` (default: paper, the published tables' sampler; auto: the dataset's tuned one)")
    ap.add_argument("--corrector-temperature", type=float, help="κ of `diffcsp generate` (default: the --sampler preset's)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--comp-scaler", default="cdvae", choices=["cdvae", "reference"],
                    help="composition-fingerprint scaler for coverage (see `diffcsp evaluate --help`)")
    ap.add_argument("--reevaluate", action="store_true", help="keep an existing generated file, rerun only the evaluation")
    ap.add_argument("--tag", default="", help="results go to OUT/DATASET_gen-TAG (default: OUT/DATASET_gen)")
    args = ap.parse_args()

    run_dir = args.run or REPO / "runs" / f"{args.dataset}_gen_cpu"
    out = args.out / (f"{args.dataset}_gen-{args.tag}" if args.tag else f"{args.dataset}_gen")
    out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "diffcsp"]
    log: list[dict] = []
    if not (run_dir / "model" / "model.safetensors").is_file():
        run(exe + ["train", "--task", "gen", "--dataset", args.dataset, "--preset", "cpu", "--out", str(run_dir)], log)
    gen = exe + ["generate", "--checkpoint", str(run_dir / "model"), "-n", str(args.n), "--out", str(out / "generated"), "--no-cif",
                 "--sampler", args.sampler]
    if args.steps:
        gen += ["--steps", str(args.steps)]
    if args.corrector_temperature is not None:
        gen += ["--corrector-temperature", str(args.corrector_temperature)]
    if args.threads:
        gen += ["--threads", str(args.threads)]
    generated = out / "generated" / "generated.json.gz"
    if args.reevaluate and generated.is_file():
        kept = Predictions.load(generated)
        t_gen = float(kept.meta["sampling_seconds"])
        args.n, args.steps = len(kept.generated), kept.meta.get("steps", args.steps)
        command = kept.meta.get("command") or f"{_shown(gen)}  (rebuilt from this run's arguments; the file records none)"
        log.append({"command": command, "seconds": round(t_gen, 1), "reused": True})
    else:
        t_gen = run(gen, log)
    evaluate = exe + ["evaluate", str(generated), "--json", str(out / "metrics.json"), "--comp-scaler", args.comp_scaler]
    if args.workers:
        evaluate += ["--workers", str(args.workers)]
    t_eval = run(evaluate, log)
    run([sys.executable, str(Path(__file__).parent / "gen_distributions.py"), str(generated), "--out", str(out / "distributions.png")], log)

    m = json.loads((out / "metrics.json").read_text())
    protocol = json.loads((run_dir / "protocol.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    meta = json.loads((run_dir / "model" / "config.json").read_text())["meta"]
    kappa = float(Predictions.load(generated).meta.get("corrector_temperature", 1.0))  # files before κ existed: 1
    today = dt.date.today().isoformat()
    lines = [
        f"# Generation benchmark: {args.dataset} ({today}), official validity rule, {m['comp_scaler']} composition scaler", "",
        f"- **Data protocol**: {protocol['name']} — train: {protocol['train']} ({protocol['train_size']} crystals); "
        f"reference for coverage/properties: official test split.",
        f"- **Hardware**: {hardware()}",
        f"- **Model**: preset `{config['preset']}`, task gen, CSPNet hidden {config['model']['hidden']}, "
        f"{config['model']['num_layers']} layers, K = {config['model']['num_freqs']}; {meta.get('epochs')} epochs, "
        f"training time {meta.get('train_seconds')} s.",
        f"- **Sampling**: {args.n} crystals, {args.steps or 1000} steps, corrector temperature κ = {kappa:g}"
        f"{' (the paper’s sampler)' if kappa == 1 else ''}, {t_gen:.0f} s; evaluation {t_eval:.0f} s.",
        "- **Metrics**: valid = structurally valid, SMACT-valid and CrystalNN fingerprint computable (the official "
        f"rule); coverage with the `{m['comp_scaler']}` composition scaler "
        f"({'CDVAE fixed statistics, as the published numbers' if m['comp_scaler'] == 'cdvae' else 'the reference split’s own mean/std; not comparable with the papers'}).",
        "",
        "| validity struct (%) | validity comp (%) | valid, all three (%) | COV-R (%) | COV-P (%) | W(density) | W(#elements) | composition scaler |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {100 * m['struct_valid']:.2f} | {100 * m['comp_valid']:.2f} | {100 * m['valid']:.2f} | {100 * m['cov_recall']:.2f} | "
        f"{100 * m['cov_precision']:.2f} | {m['wdist_density']:.4f} | {m['wdist_num_elems']:.4f} | {m['comp_scaler']} |", "",
        "![generated vs reference distributions](distributions.png)", "",
        "## Commands", "", "```"] + [f"{e['command']}    # {e['seconds']} s{' (earlier run, reused)' if e.get('reused') else ''}" for e in log] + ["```", ""]
    write_text(out / f"report-{today}.md", "\n".join(lines))
    print(f"report written to {out / f'report-{today}.md'}")


if __name__ == "__main__":
    main()
