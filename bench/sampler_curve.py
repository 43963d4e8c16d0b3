"""Match rate, RMSE and seconds per crystal against network calls, for several sampler settings.

Every setting samples the same test crystals (k = 1, same seed) with the same model, and is
scored with the project's CSP metrics (``diffcsp.metrics``, official rule by default). Writes
a CSV (one row per setting) and a PNG of match rate and RMSE against network calls per crystal,
next to a JSON with the protocol, hardware and command.

    python bench/sampler_curve.py --run runs/perov_5_cpu --dataset perov_5 --limit 200 \\
        --setting pc:1000 --setting pc:250 --setting ddim:100:power2 --out bench/results/sampler/perov_5

A setting is ``METHOD:STEPS[:SCHEDULE][:corrector|nocorrector|lrX][:tempK][:ptempT]`` with METHOD
pc/ddim/heun and SCHEDULE ``uniform`` or ``powerR`` (power grid with ρ = R, e.g. ``power2``; R < 1
puts more steps at high noise). The corrector (Langevin step, the dataset's step size γ) runs for
pc by default and not for ddim/heun; ``lrX`` turns it on with step size X·γ and ``tempK`` scales
its noise by K (the temperature κ; 1: the paper's Langevin step); ``ptempT`` scales the
predictor's coordinate and (pc) lattice noise by T (τ, ``sample(predictor_temperature=…)``). ``belowN`` / ``aboveN`` (with
``tempK``) cool the corrector only at noise levels t < N, or t ≥ N, of the model's T and run κ = 1
elsewhere: which end of the chain the cooler corrector acts on (an experiment of this script;
``diffcsp.sampler.sample`` takes one κ for the whole chain).

``--split heldout`` samples the held-out validation crystals of the training protocol (the
crystals `diffcsp train` selects models on), so sampler settings can be tuned without looking
at the test split; ``--seeds 0,1,2`` repeats every setting with each seed and reports the mean.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import csp_table, hardware  # noqa: E402  (one hardware description for every report)


@dataclass
class Setting:
    method: str
    steps: int
    schedule: str = "uniform"
    rho: float = 1.0
    corrector: bool = True
    lr_scale: float = 1.0
    temperature: float = 1.0
    predictor_temperature: float = 1.0  # "ptempT": noise scale τ of the ancestral predictor (lattice, coordinates)
    window: str = ""  # "belowN"/"aboveN": κ only at levels t < N / t ≥ N, κ = 1 elsewhere

    @classmethod
    def parse(cls, text: str) -> Setting:
        parts = text.split(":")
        method, steps = parts[0], int(parts[1])
        out = cls(method, steps, corrector=method.startswith("pc"))
        for part in parts[2:]:
            if part.startswith("power"):
                out.schedule, out.rho = "power", float(part[5:] or 2)
            elif part == "uniform":
                out.schedule = "uniform"
            elif part in ("corrector", "nocorrector"):
                out.corrector = part == "corrector"
            elif part.startswith("lr"):
                out.corrector, out.lr_scale = True, float(part[2:])
            elif part.startswith("temp"):
                out.temperature = float(part[4:])
            elif part.startswith("ptemp"):
                out.predictor_temperature = float(part[5:])
            elif part.startswith(("below", "above")) and part[5:].isdigit():
                out.window = part
            else:
                raise SystemExit(f"cannot read setting part {part!r} in {text!r}")
        return out

    @property
    def name(self) -> str:
        grid = "uniform" if self.schedule == "uniform" else f"power{self.rho:g}"
        corr = "nocorrector" if not self.corrector else "corrector" if self.lr_scale == 1 else f"lr{self.lr_scale:g}"
        return (f"{self.method}:{self.steps}:{grid}:{corr}" + ("" if self.temperature == 1 else f":temp{self.temperature:g}")
                + ("" if self.predictor_temperature == 1 else f":ptemp{self.predictor_temperature:g}")
                + (f":{self.window}" if self.window else ""))


@contextmanager
def temperature_window(model, window: str):
    """Within the block, the corrector uses its κ only at the levels ``window`` names and κ = 1
    elsewhere. It wraps the coordinate process's Langevin step, which receives the level t, so
    the sampler itself runs unchanged."""
    if not window:
        yield
        return
    process, edge, below = model.coord_process, int(window[5:]), window.startswith("below")
    step = process.corrector_step

    def windowed(f, score_dir, t, step_lr, z, temperature=1.0):
        return step(f, score_dir, t, step_lr, z, temperature if (t < edge) == below else 1.0)

    process.corrector_step = windowed
    try:
        yield
    finally:
        del process.corrector_step  # the instance attribute goes; the class's method shows again


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="model: run dir, exported model dir or bundled model name")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", help="test, val, or heldout (the training protocol's validation crystals)")
    p.add_argument("--limit", type=int, default=None, help="first N crystals of the split (default: all)")
    p.add_argument("--setting", action="append", required=True, help="METHOD:STEPS[:SCHEDULE][:corrector|nocorrector|lrX][:tempK][:ptempT][:belowN|aboveN]")
    p.add_argument("--step-lr", type=float, default=None, help="corrector step size (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="comma-separated seeds: every setting is run with each and averaged (overrides --seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="processes for StructureMatcher")
    p.add_argument("--rule", default="official", help="metric validity rule (official or structure)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--precision", default="fp32", help="network precision while sampling: fp32, bf16 or auto")
    p.add_argument("--out", required=True, help="output stem: writes STEM.csv, STEM.png, STEM.json")
    p.add_argument("--save-predictions", action="store_true", help="also keep STEM.<setting>.json.gz")
    args = p.parse_args()

    from diffcsp.checkpoint import load_model
    from diffcsp.fileio import atomic_write, write_json
    from diffcsp.metrics import evaluate_predictions
    from diffcsp.predict import default_step_lr, predict_split
    from diffcsp.sampler import network_calls, time_schedule

    torch.set_num_threads(args.threads)
    model = load_model(args.run)
    table = csp_table(args.dataset, args.split, args.limit)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    gamma = args.step_lr if args.step_lr is not None else default_step_lr(model, 1, dataset=args.dataset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    csv_path = out.with_suffix(".csv")
    for text in args.setting:
        setting = Setting.parse(text)
        step_lr = gamma * setting.lr_scale if setting.corrector else 0.0
        times = time_schedule(model.config.timesteps, setting.steps, setting.schedule, setting.rho)
        calls = network_calls(times, setting.method, step_lr, model.config.variant)
        seconds, summaries = 0.0, []
        for seed in seeds:
            start = time.perf_counter()
            with temperature_window(model, setting.window):
                preds = predict_split(model, table, 1, steps=setting.steps, step_lr=step_lr, seed=seed,
                                      batch_size=args.batch_size, progress=False, method=setting.method,
                                      schedule=setting.schedule, rho=setting.rho, precision=args.precision,
                                      corrector_temperature=setting.temperature,
                                      predictor_temperature=setting.predictor_temperature)
            seconds += time.perf_counter() - start
            if args.save_predictions:
                suffix = "" if len(seeds) == 1 else f".seed{seed}"
                preds.save(out.parent / f"{out.name}.{setting.name.replace(':', '_')}{suffix}.json.gz")
            summaries.append(evaluate_predictions(preds, workers=args.workers, rule=args.rule).summary())
        rmses = [x["rmse"] for x in summaries if x["rmse"] is not None]
        row = {"setting": setting.name, "method": setting.method, "steps": len(times), "schedule": setting.schedule,
               "rho": setting.rho, "corrector": setting.corrector, "step_lr": step_lr, "base_step_lr": gamma,
               "temperature": setting.temperature,
               "predictor_temperature": setting.predictor_temperature, "temperature_window": setting.window, "network_calls": calls,
               "match_rate": float(np.mean([x["match_rate"] for x in summaries])),
               "rmse": float(np.mean(rmses)) if rmses else None,
               "valid_rate": float(np.mean([x.get("valid_rate") or 0.0 for x in summaries])),
               "seconds_per_crystal": seconds / len(table) / len(seeds), "precision": args.precision,
               "rule": summaries[0].get("rule", args.rule), "n": len(table), "seeds": "+".join(map(str, seeds)),
               "match_rate_per_seed": " ".join(f"{x['match_rate']:.4f}" for x in summaries),
               "rmse_per_seed": " ".join("-" if x["rmse"] is None else f"{x['rmse']:.4f}" for x in summaries)}
        rows.append(row)
        print(f"{setting.name:40s} calls {calls:5d}  match {100 * row['match_rate']:6.2f} %  "
              f"RMSE {row['rmse'] if row['rmse'] is None else round(row['rmse'], 4)}  "
              f"{row['seconds_per_crystal']:.3f} s/crystal", flush=True)
        with atomic_write(csv_path, "w") as handle:  # rewritten after every setting: partial runs keep results
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write_json(out.with_suffix(".json"), {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "model": str(args.run),
        "dataset": args.dataset, "split": args.split, "crystals": len(table), "k": 1, "seeds": seeds,
        "rule": args.rule, "threads": args.threads, "hardware": hardware(),
        "date": time.strftime("%Y-%m-%d"), "rows": rows,
    })
    plot(rows, out.with_suffix(".png"), f"{args.dataset}/{args.split}, {len(table)} crystals, k = 1 ({args.rule} rule"
         + (f", mean of {len(seeds)} seeds)" if len(seeds) > 1 else ")"))
    print(f"wrote {csv_path}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")


def _temperature(row: dict) -> float:
    """The corrector temperature of a row (rows written before it existed: 1)."""
    value = row.get("temperature")
    return 1.0 if value in (None, "") else float(value)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import save_png

    fig, (ax_m, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    families: dict[str, list[dict]] = {}
    for row in rows:
        grid = row["schedule"] if row["schedule"] == "uniform" else f"power ρ={row['rho']:g}"
        key = f"{row['method']} {grid}{' +corr' if row['corrector'] else ''}" + \
            ("" if not row["corrector"] or row["step_lr"] == row.get("base_step_lr") else f" γ={row['step_lr']:.2g}") + \
            ("" if _temperature(row) == 1 else f" κ={_temperature(row):g}") + \
            ("" if row.get("predictor_temperature", 1.0) == 1 else f" τ={row['predictor_temperature']:g}") + \
            (f" {row['temperature_window']}" if row.get("temperature_window") else "")
        families.setdefault(key, []).append(row)
    for key, group in families.items():
        group = sorted(group, key=lambda r: r["network_calls"])
        calls = [r["network_calls"] for r in group]
        ax_m.plot(calls, [100 * r["match_rate"] for r in group], marker="o", label=key)
        ax_r.plot(calls, [r["rmse"] if r["rmse"] is not None else np.nan for r in group], marker="o", label=key)
    for ax, label in ((ax_m, "match rate (%)"), (ax_r, "RMSE (matched crystals)")):
        ax.set_xscale("log")
        ax.set_xlabel("network calls per crystal")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    ax_m.legend(fontsize=7)
    fig.suptitle(title)
    save_png(fig, path)


if __name__ == "__main__":
    main()
