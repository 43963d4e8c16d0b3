"""The ``diffcsp`` command line: a thin layer over the library.

Errors a user can cause (bad formula, missing file, damaged checkpoint, unreachable server)
are printed as one clear line and exit with status 1 — never a traceback.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="DiffCSP: crystal structure prediction and generation by joint equivariant diffusion.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Benchmark datasets: download and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from diffcsp import __version__

        typer.echo(f"diffcsp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the diffcsp version and exit.")] = False,
) -> None:
    """DiffCSP: crystal structure prediction and generation by joint equivariant diffusion."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _user_errors() -> tuple[type[BaseException], ...]:
    from diffcsp import errors

    return (errors.CheckpointError, errors.DataError, errors.TrainingError, errors.DownloadError,
            errors.CompositionError, OSError, ValueError)


class _Guard:
    """Context manager turning user-facing errors into one red line and exit status 1."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and isinstance(exc, _user_errors()):
            _fail(str(exc))
        if exc_type is KeyboardInterrupt:
            _fail("interrupted")
        return False


DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding NAME/{train,val,test}.csv (default: $DIFFCSP_DATA, ../shared/datasets, or the user cache).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Reverse diffusion steps (default: the model's T = 1000, as in the paper).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Sampler = Annotated[str, typer.Option("--sampler", help="'auto' (default): 'fast' for models trained on Perov-5 or Carbon-24 (the bundled ones), where it was measured to keep the match rate and RMSE of the paper's sampler (BENCHMARKS.md, 'Few-step sampling'), 'paper' for any other model. 'fast': 50 predictor-corrector steps, 100 network calls (20x fewer; on Perov-5 a cooler, larger corrector step). 'paper': the paper's 1000 steps (2000 calls). --steps/--step-lr override the preset.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: torch's choice).")]
CorrectorTemperature = Annotated[Optional[float], typer.Option("--corrector-temperature", help="κ in [0, 1] scales the noise of the corrector's Langevin step (1: the paper's sampler; default: the --sampler preset's). A cooler corrector sharpens each noise level's density.", show_default=False)]


def _journal_for(out: Path) -> Path:
    """The sampling journal beside an output file: a killed run continues from it when rerun."""
    journal = out.with_name(out.name + ".partial.pt")
    if journal.exists():
        typer.echo(f"continuing the sampling run recorded in {journal} (delete it to start over)", err=True)
    return journal


def _model_with_threads(checkpoint: Path | None, threads: int | None, task: str = "csp"):
    """Set torch's thread count (if asked) and load a model: the start of every sampling command."""
    import torch

    from diffcsp.checkpoint import load_model

    if threads:
        torch.set_num_threads(threads)
    return load_model(checkpoint, task=task)


# -- data ------------------------------------------------------------------------------------
@data_app.command("stats")
def data_stats(
    name: Annotated[str, typer.Argument(help="Dataset: perov_5, carbon_24, mp_20, mpts_52 or mp_20_mini.")],
    data_dir: DataDir = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to load (repeatable; default: every split present).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-parse the CSV even if a cached copy exists.")] = False,
) -> None:
    """Load a dataset and report rows loaded/skipped, atoms per cell, elements and lattice ranges."""
    from rich.console import Console
    from rich.table import Table

    from diffcsp.data import load_split, table_stats
    from diffcsp.registry import SPLITS, split_path

    with _Guard():
        splits = split or [s for s in SPLITS if split_path(name, s, data_dir).is_file()]
        if not splits:
            raise FileNotFoundError(f"no split of {name} found under {split_path(name, 'val', data_dir).parent}")
        console = Console()
        for s in splits:
            table = load_split(name, s, data_dir, use_cache=not no_cache)
            st = table_stats(table)
            out = Table(title=f"{name}/{s}  ({'cache' if table.source.get('cache_hit') else 'parsed'}: {table.source.get('cache')})")
            out.add_column("quantity")
            out.add_column("value", overflow="fold")
            out.add_row("rows in file", str(st["rows"]))
            out.add_row("crystals loaded", str(st["loaded"]))
            skipped = st["skipped"]
            out.add_row("rows skipped", ", ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else "0")
            for reason, rows in table.skipped.items():
                out.add_row(f"  {reason} ids", ", ".join(r["id"] for r in rows[:20]) + (" …" if len(rows) > 20 else ""))
            out.add_row("atoms per cell", "  ".join(f"{k}:{v}" for k, v in st["atoms_per_cell"].items()))
            top = list(st["elements"].items())
            out.add_row(f"elements ({len(top)})", "  ".join(f"{k}:{v}" for k, v in top[:30]) + (" …" if len(top) > 30 else ""))
            out.add_row("lengths a,b,c (Å)", f"min {st['lengths_min']}  max {st['lengths_max']}")
            out.add_row("angles α,β,γ (°)", f"min {st['angles_min']}  max {st['angles_max']}")
            console.print(out)


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: perov_5, carbon_24, mp_20 or mpts_52.")],
    dest: Annotated[Optional[Path], typer.Option("--dest", help="Target folder (files go to DEST/NAME/SPLIT.csv; default: the data dir).")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Server holding OWNER/REPO/main/data/NAME/SPLIT.csv (default: GitHub raw).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to fetch (repeatable; default: train, val, test).")] = None,
) -> None:
    """Fetch the official CSV files, verify each git blob id, write atomically, skip verified files."""
    from diffcsp.download import download_dataset
    from diffcsp.registry import SPLITS

    with _Guard():
        for result in download_dataset(name, dest=dest, base_url=base_url, splits=tuple(split or SPLITS)):
            typer.echo(f"{result.status:>10}  {result.path}  (blob {result.blob_id})")


# -- training --------------------------------------------------------------------------------
@app.command("train")
def train_cmd(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Dataset name (see `diffcsp data stats`).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory to create.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="'paper' (the paper's hyperparameters, GPU budget) or 'cpu' (small network, ~1 h on 2 cores for Perov-5). Default: cpu.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="'csp' (atom types given) or 'gen' (ab initio: types diffused too). Default: csp.")] = None,
    data_dir: DataDir = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Override the preset's number of epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Override the preset's batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default 1e-3).")] = None,
    ema_decay: Annotated[Optional[float], typer.Option("--ema-decay", help="Decay of the exponential moving average of the weights used for validation, checkpoints and sampling (0: off, the paper's setting; default: the preset's).")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="'plateau' (the paper's ReduceLROnPlateau) or 'cosine' (warm-up, then cosine decay to the minimum at the last epoch).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="'fp32' (default), 'bf16' (network under bf16 autocast, weights in fp32) or 'auto' (bf16 only on hardware with native support: AVX-512 BF16/AMX CPUs, recent GPUs).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for initialisation, noise and data order. Default: 0.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Train on the first N crystals only (smoke tests).")] = None,
    hidden: Annotated[Optional[int], typer.Option("--hidden", help="Override the preset's CSPNet width.")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Override the preset's number of message-passing layers.")] = None,
    num_freqs: Annotated[Optional[int], typer.Option("--num-freqs", help="Override the preset's Fourier frequency count K.")] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="'joint' (default: the published model) or one of the paper's ablations: 'lattice-then-coords' / 'coords-then-lattice' (two-stage generation, one network trained on both stages), 'no-fourier' (raw wrapped coordinate differences instead of Fourier features), 'no-o3' (the lattice matrix instead of the rotation-invariant L·Lᵀ). Saved in the model config; see diffcsp.variants.")] = None,
    accelerator: Annotated[Optional[str], typer.Option("--accelerator", help="Lightning accelerator: auto, cpu, gpu. Default: auto.")] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Lightning devices per node (e.g. 4 for DDP on four GPUs). Default: auto.")] = None,
    num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", help="Number of nodes for multi-node DDP. Default: 1.")] = None,
    threads: Threads = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its last checkpoint.")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Fine-tune: start from this model's weights (run dir, .ckpt, exported model or bundled name) with a fresh optimiser, schedule and EMA; the network settings default to its own.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train a DiffCSP model; the run directory gets config, protocol, checkpoints, metrics and a plot."""
    import torch

    from diffcsp.training import TrainConfig, is_global_zero, load_run_config, train

    with _Guard():
        if threads:
            torch.set_num_threads(threads)
        if resume is not None:
            given = {"--dataset": dataset, "--out": out, "--preset": preset, "--task": task, "--data-dir": data_dir,
                     "--batch-size": batch_size, "--lr": lr, "--ema-decay": ema_decay, "--lr-schedule": lr_schedule,
                     "--precision": precision, "--seed": seed, "--limit": limit, "--hidden": hidden,
                     "--num-layers": num_layers, "--num-freqs": num_freqs, "--variant": variant, "--init-from": init_from}
            ignored = [name for name, value in given.items() if value is not None]
            if ignored:
                raise ValueError(f"--resume continues the run with its saved settings; drop {', '.join(ignored)} "
                                 "(only --epochs and the hardware options --accelerator/--devices/--num-nodes may change)")
            cfg = load_run_config(resume)
            cfg.out = str(resume)
            # lengthen (or shorten) a run, or move it to other hardware; recorded in its config
            changes = {k: v for k, v in {"epochs": epochs, "accelerator": accelerator, "devices": devices,
                                         "num_nodes": num_nodes}.items() if v is not None}
            if changes:
                for key, value in changes.items():
                    setattr(cfg, key, value)
                if is_global_zero():  # DDP re-runs this command in every process; one of them writes
                    from dataclasses import asdict

                    from diffcsp.fileio import write_json

                    write_json(resume / "config.json", asdict(cfg))
            run = train(cfg, resume=True, progress=not quiet)
        else:
            if dataset is None or out is None:
                raise ValueError("--dataset and --out are required (or --resume RUN_DIR)")
            model = {k: v for k, v in {"hidden": hidden, "num_layers": num_layers, "num_freqs": num_freqs, "variant": variant}.items() if v}
            cfg = TrainConfig.from_preset(dataset, str(out), preset=preset or "cpu", task=task or "csp",
                                          data_dir=str(data_dir) if data_dir else None, model=model,
                                          epochs=epochs, batch_size=batch_size, lr=lr, ema_decay=ema_decay, lr_schedule=lr_schedule, precision=precision, seed=seed, limit=limit,
                                          init_from=init_from, accelerator=accelerator, devices=devices, num_nodes=num_nodes)
            run = train(cfg, progress=not quiet)
        if is_global_zero():
            typer.echo(f"run finished: {run}  (best model exported to {run / 'model'})")


# -- prediction -------------------------------------------------------------------------------
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", "-c", "--model", "-m", help="Model: a run dir, .ckpt or exported model dir, or a bundled model: 'perov_5' (default; ABX3 perovskites, 5-atom cells) or 'carbon_24' (pure carbon, 6-24 atoms), also by folder name (perov_5_wide, carbon_24_wide).")]


Fmax = Annotated[float, typer.Option("--fmax", help="Relaxation converges when every force (and cell force) is below this, eV/Å.")]
RelaxSteps = Annotated[int, typer.Option("--relax-steps", help="Most optimiser steps per relaxation; one that needs more is kept as 'unconverged'. 0: single-point energies of the samples as they are (ranking without relaxing).")]
RelaxOptimizer = Annotated[str, typer.Option("--optimizer", help="ASE optimiser for the relaxations: 'fire', 'bfgs' or 'lbfgs' (cell and positions together).")]
RelaxSymprec = Annotated[Optional[float], typer.Option("--symprec", help="Relax each structure within the space group spglib finds at this tolerance in Å (ASE FixSymmetry); default: unconstrained.", show_default=False)]


@app.command("predict")
def predict_cmd(
    formula: Annotated[Optional[str], typer.Argument(help="Composition of one formula unit, e.g. SrTiO3 or LiFePO4 (or give --from-cif).", show_default=False)] = None,
    n: Annotated[int, typer.Option("-n", "--num-samples", help="Number of structures to sample.")] = 5,
    checkpoint: Checkpoint = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CIF and PNG files and summary.csv.")] = Path("predictions"),
    formula_units: Annotated[Optional[int], typer.Option("--formula-units", "-z", help="Formula units per cell (Z) for every sample. Default: each sample's Z is drawn from the cell sizes the model saw in training (Z × atoms per formula ≤ the model's limit, weighted by how often it saw them; Z = 1 with a warning if it saw none). The table and summary.csv give each sample's Z.", show_default=False)] = None,
    from_cif: Annotated[Optional[Path], typer.Option("--from-cif", help="Take the composition and Z from this structure's cell (CIF, or any file pymatgen reads).", show_default=False)] = None,
    sampler: Sampler = "auto",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Reverse diffusion steps (default: the sampler preset's, 1000 for 'paper', 50 for 'fast').")] = None,
    step_lr: Annotated[Optional[float], typer.Option("--step-lr", help="Corrector step size γ (default: the paper's value for the model's dataset, times the preset's scale).")] = None,
    corrector_temperature: CorrectorTemperature = None,
    seed: Seed = 0,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch (a few small cells: one is fastest).")] = 1,
    relax: Annotated[bool, typer.Option("--relax", help="Relax every sample with the pretrained CHGNet potential (needs the package's 'relax' extra), merge equivalent results and rank them by energy: OUT gets rankNN_ files and the ranked summary.csv, the raw samples go to OUT/samples/.")] = False,
    fmax: Fmax = 0.05,
    relax_steps: RelaxSteps = 500,
    optimizer: RelaxOptimizer = "fire",
) -> None:
    """Predict crystal structures for a composition.

    For each sample NAME_i it writes NAME_i.cif (the sampled cell, P1, raw coordinates), NAME_i_sym.cif (the same crystal symmetrised by spglib at symprec 0.1 Å: the refined conventional cell in the space group the table reports) and NAME_i.png (the cell, atoms coloured by element); summary.csv lists each sample's Z, lattice, volume, density, space group and validity. The method: docs/method.md.
    """
    import warnings

    from rich.console import Console

    from diffcsp.checkpoint import load_model, model_meta
    from diffcsp.predict import SYMPREC, composition_to_numbers, plan_prediction, read_structure, sample_plan, write_predictions

    with _Guard():
        import torch

        torch.set_num_threads(threads)
        if (formula is None) == (from_cif is None):
            raise ValueError("give a formula or --from-cif FILE (exactly one)")
        if relax:
            from diffcsp.relax import check_optimizer, require_potential

            try:
                require_potential()
            except ImportError as exc:
                raise ValueError(str(exc)) from None
            check_optimizer(optimizer)
        if from_cif is not None:
            if formula_units is not None:
                raise ValueError("--from-cif takes Z from the file's cell; drop -z/--formula-units")
            composition = read_structure(from_cif)
            name = composition.composition.reduced_formula
        else:
            composition_to_numbers(formula)  # a bad formula fails before the model loads
            composition, name = formula, formula
        model = load_model(checkpoint)
        meta = model_meta(checkpoint)
        cfg = model.config
        console = Console(stderr=True)
        console.print(f"model: {checkpoint or 'bundled ' + cfg.dataset + ' CSP model'} — trained on {cfg.dataset} "
                      f"(≤ {cfg.max_atoms} atoms, {len(cfg.elements)} elements){'; ' + meta['suited_for'] if meta.get('suited_for') else ''}")
        plan = plan_prediction(model, composition, n, formula_units, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structures = sample_plan(model, plan, steps=steps, step_lr=step_lr, seed=seed, progress=True, sampler=sampler,
                                     corrector_temperature=corrector_temperature)
        for note in plan.notes + [str(w.message) for w in caught]:
            console.print(f"[yellow]warning:[/yellow] {note}")
        stem = "".join(ch for ch in name if ch.isalnum()) or "crystal"
        if relax:
            from diffcsp.relax import relax_rank_and_write

            write_predictions(structures, plan.formula_units, out / "samples", stem, symprec=SYMPREC)
            rows, note = relax_rank_and_write(structures, out, stem, fmax=fmax, steps=relax_steps, optimizer=optimizer)
            _print_ranked_table(rows, f"{name}: {n} samples relaxed with CHGNet → {note} → {out}/")
            return
        rows = write_predictions(structures, plan.formula_units, out, stem, symprec=SYMPREC)
        _print_prediction_table(rows, f"{name}: {n} predicted structures → {out}/ (space groups at symprec {SYMPREC} Å)")


def _print_prediction_table(rows: list[dict], title: str) -> None:
    """The summary rows of `diffcsp predict` as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in ["file", "Z", "formula", "a", "b", "c", "alpha", "beta", "gamma", "volume", "density", "spacegroup", "valid"]:
        table.add_column(key, justify="left" if key in ("file", "formula", "spacegroup") else "right")
    for row in rows:
        table.add_row(*[str(row[str(col.header)]) for col in table.columns])
    Console(width=None if Console().is_terminal else 170).print(table)


def _print_ranked_table(rows: list[dict], title: str) -> None:
    """The ranked candidates of `diffcsp predict --relax` (summary.csv) as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ["rank", "file", "energy_per_atom", "e_above_min_meV", "count", "spacegroup", "formula", "a", "b", "c",
               "alpha", "beta", "gamma", "status", "samples"]
    for key in columns:
        table.add_column(key.replace("energy_per_atom", "E (eV/atom)").replace("e_above_min_meV", "ΔE (meV/atom)"),
                         justify="left" if key in ("file", "formula", "spacegroup", "status", "samples") else "right")
    for row in rows:
        table.add_row(*[str(row.get(key, "")) for key in columns])
    Console(width=None if Console().is_terminal else 190).print(table)


@app.command("sample")
def sample_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="CSP model (run dir, .ckpt, exported model or bundled name), or a generation model: its atom types are then held at each crystal's own, and its generation sampler presets and step size apply.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset whose split is predicted.")],
    out: Annotated[Path, typer.Option("--out", help="Predictions file to write (.json.gz).")],
    split: Annotated[str, typer.Option("--split", help="Split to predict.")] = "test",
    num_samples: Annotated[int, typer.Option("--num-samples", "-k", help="Samples per crystal.")] = 1,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N crystals of the split (fixed subset).")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="'paper' (default here: the paper's 1000 predictor-corrector steps, for benchmarks), 'fast' (50 steps, 100 network calls; see diffcsp predict --help) or 'auto' (fast where measured).")] = "paper",
    steps: Steps = None,
    step_lr: Annotated[Optional[float], typer.Option("--step-lr", help="Corrector step size (default: the paper's value for the dataset and k; docs/method.md §Sampling).")] = None,
    corrector_temperature: CorrectorTemperature = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crystals sampled together; a killed run, rerun with the same arguments, continues after the last whole batch (journal OUT.partial.pt).")] = 1024,
    seed: Seed = 0,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """CSP for every crystal of a split (given its atoms), K samples each, saved for `diffcsp evaluate`."""
    import numpy as np

    from diffcsp.data import load_split
    from diffcsp.predict import predict_split

    with _Guard():
        model = _model_with_threads(checkpoint, threads)
        table = load_split(dataset, split, data_dir)
        if limit:
            table = table.subset(np.arange(min(limit, len(table))))
        journal = _journal_for(out)
        preds = predict_split(model, table, num_samples, steps=steps, step_lr=step_lr, seed=seed, batch_size=batch_size,
                              sampler=sampler, corrector_temperature=corrector_temperature, journal=journal)
        preds.meta.update(checkpoint=str(checkpoint), limit=limit)
        preds.save(out)
        journal.unlink(missing_ok=True)
        typer.echo(f"wrote {out}: {len(table)} crystals × {num_samples} samples in {preds.meta['sampling_seconds']:.0f} s")


@app.command("generate")
def generate_cmd(
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", "-c", "--model", "-m", help="Generation model (trained with --task gen): a run dir, .ckpt or exported model dir, or a bundled generation model: 'perov_5' (default; five-atom ABX3-type cells; folder name perov_5_gen) or 'carbon_24' (pure carbon, 6-24 atoms; folder name carbon_24_gen).", show_default=False)] = None,
    n: Annotated[int, typer.Option("-n", "--num", help="Number of crystals to generate.")] = 100,
    out: Annotated[Path, typer.Option("--out", help="Folder for CIFs and generated.json.gz.")] = Path("generated"),
    steps: Steps = None,
    step_lr: Annotated[Optional[float], typer.Option("--step-lr", help="Corrector step size (default: the paper's ab initio value for the model's dataset).")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="'auto' (default): the paper's 1000 predictor-corrector steps, except for Carbon-24 models, where the corrector runs cooler (κ = 0.3; on the test split COV-P 34 → 65 %, W(density) 0.143 → 0.078, COV-R 99.1 → 98.8 %, sharper C–C bonds; BENCHMARKS.md, 'A cooler corrector raises COV-P'). 'paper': the paper's sampler for every model, as in the published tables.")] = "auto",
    corrector_temperature: CorrectorTemperature = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Crystals sampled together; a killed run, rerun with the same arguments, continues after the last whole batch (journal OUT/generated.json.gz.partial.pt).")] = 512,
    seed: Seed = 0,
    reference_split: Annotated[str, typer.Option("--reference-split", help="Split `diffcsp evaluate` compares against.")] = "test",
    no_cif: Annotated[bool, typer.Option("--no-cif", help="Skip writing one CIF per crystal.")] = False,
    threads: Threads = None,
) -> None:
    """Ab initio generation: new crystals (atoms, lattice, positions) from a generation model."""
    from diffcsp.checkpoint import DEFAULT_GEN_MODEL
    from diffcsp.predict import generate, write_structures

    with _Guard():
        if sampler not in ("auto", "paper"):
            raise typer.BadParameter(f"--sampler must be auto or paper, not {sampler!r}")
        model = _model_with_threads(checkpoint, threads, task="gen")
        journal = _journal_for(out / "generated.json.gz")
        preds, structures = generate(model, n, steps=steps, step_lr=step_lr, seed=seed, batch_size=batch_size,
                                     reference_split=reference_split, sampler=sampler,
                                     corrector_temperature=corrector_temperature, journal=journal)
        preds.meta.update(checkpoint=str(checkpoint or f"bundled:{DEFAULT_GEN_MODEL}"),
                          command=shlex.join(["diffcsp", *sys.argv[1:]]))  # so a reused file names its own command
        path = preds.save(out / "generated.json.gz")
        journal.unlink(missing_ok=True)
        if not no_cif:
            write_structures(structures, out / "cif", "gen")
        typer.echo(f"wrote {path} ({n} crystals in {preds.meta['sampling_seconds']:.0f} s)"
                   f"{'' if no_cif else ' and CIFs in ' + str(out / 'cif')}")


@app.command("relax")
def relax_cmd(
    predictions: Annotated[Path, typer.Argument(help="CSP predictions file written by `diffcsp sample`, or a generation file written by `diffcsp generate`.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Relaxed predictions file (default: NAME.relaxed.json.gz next to the input).", show_default=False)] = None,
    fmax: Fmax = 0.05,
    relax_steps: RelaxSteps = 500,
    optimizer: RelaxOptimizer = "fire",
    symprec: RelaxSymprec = None,
    pressure: Annotated[float, typer.Option("--pressure", help="Hydrostatic pressure in GPa; energies are then enthalpies (E + PV)/N.")] = 0.0,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes, one torch thread each (default: all cores).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Relax only the first N crystals of the file.", show_default=False)] = None,
) -> None:
    """Relax every sample with CHGNet and pick each crystal's lowest-energy sample.

    Writes OUT (every sample relaxed, with energy_per_atom, status and the unrelaxed sample under
    'initial'), OUT_STEM.top1.json.gz (per crystal the lowest relaxed energy, k = 1) and
    OUT_STEM.top1_unrelaxed.json.gz (lowest single-point energy before relaxation, k = 1).
    `diffcsp evaluate` on each gives match rates: OUT after relaxation (first sample and any of k),
    the top1 files the top-1-by-energy match rate after and before relaxation. A generation file
    (`diffcsp generate`) is relaxed crystal by crystal into OUT only; `diffcsp evaluate OUT` then
    gives the generation metrics of the relaxed crystals.
    """
    from diffcsp.predictions import Predictions
    from diffcsp.relax import output_paths, relax_predictions, top1_by_energy

    with _Guard():
        preds = Predictions.load(predictions)
        if out is None:
            stem = predictions.name.removesuffix(".gz").removesuffix(".json")
            out = predictions.with_name(f"{stem}.relaxed.json.gz")
        try:
            relaxed = relax_predictions(preds, fmax=fmax, steps=relax_steps, workers=workers, symprec=symprec,
                                        pressure=pressure, optimizer=optimizer, limit=limit)
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        relaxed.meta["relaxed_from"] = str(predictions)
        relaxed.save(out)
        info = relaxed.meta["relax"]
        statuses = ", ".join(f"{k} {v}" for k, v in info["statuses"].items() if v)
        count = len(relaxed.generated) + sum(len(c["samples"]) for c in relaxed.crystals)
        typer.echo(f"relaxed {count} structures in {info['seconds']:.0f} s ({statuses}) → {out}")
        if relaxed.task == "csp":
            top1, top1_unrelaxed = output_paths(out)
            top1_by_energy(relaxed).save(top1)
            top1_by_energy(relaxed, initial=True).save(top1_unrelaxed)
            typer.echo(f"top-1 by energy: {top1} (relaxed), {top1_unrelaxed} (unrelaxed); score with `diffcsp evaluate FILE`")


@app.command("evaluate")
def evaluate_cmd(
    predictions: Annotated[Path, typer.Argument(help="File written by `diffcsp sample` or `diffcsp generate`.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the summary metrics as JSON.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Per-crystal results (CSP) as CSV.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG of match rate against number of samples k (CSP).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes (default: all cores).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed per StructureMatcher pair.")] = 60.0,
    reference_limit: Annotated[Optional[int], typer.Option("--reference-limit", help="Generation: compare with the first N crystals of the reference split only.")] = None,
    rule: Annotated[str, typer.Option("--rule", help="CSP validity rule: 'official' (the DiffCSP authors' rule, see above) or 'structure' (structural validity of the prediction only; the earlier default).")] = "official",
    comp_scaler: Annotated[Optional[str], typer.Option("--comp-scaler", help="Generation: standardise composition fingerprints for coverage with CDVAE's fixed statistics ('cdvae', the published protocol; default) or with the reference split's own mean/std ('reference').")] = None,
    data_dir: DataDir = None,
) -> None:
    """Metrics: match rate / RMSE / validity (CSP) or validity / coverage / property distances (generation).

    CSP uses the official rule of the DiffCSP authors' evaluation script by default: a crystal
    is valid when all interatomic distances exceed 0.5 Å and its volume 0.1 Å³, its composition
    passes SMACT's charge-neutrality and electronegativity test, and its CrystalNN fingerprint
    can be computed. With k = 1 a pair is matched only if prediction and ground truth are both
    valid and StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) matches them; with k > 1 a
    crystal is matched when any valid sample matches. Generation validity always uses the same
    three conditions. Every report says which rule (and composition scaler) produced it.
    """
    from rich.console import Console
    from rich.table import Table

    from diffcsp.fileio import write_json
    from diffcsp.predictions import Predictions

    with _Guard():
        import time

        start = time.perf_counter()
        preds = Predictions.load(predictions)
        console = Console()
        if preds.task == "csp":
            from diffcsp.metrics import RULE_DESCRIPTIONS, check_rule, evaluate_predictions

            if comp_scaler is not None:
                raise ValueError("--comp-scaler applies to generation files (coverage); this is a CSP file")
            check_rule(rule)
            report = evaluate_predictions(preds, workers=workers, timeout=timeout, rule=rule)
            summary = report.summary()
            summary["match_rate_curve"] = report.match_rate_curve(range(1, summary["k"] + 1))
            if csv_out:
                report.to_csv(csv_out)
            if plot:
                plot_match_curve(summary["match_rate_curve"], plot, f"{preds.dataset}/{preds.split} (n={summary['n']})")
        else:
            from diffcsp.data import load_split
            from diffcsp.gen_metrics import COMP_SCALERS, evaluate_generation, reference_cache_path
            from diffcsp.metrics import RULE_DESCRIPTIONS, check_rule
            from diffcsp.predictions import dict_to_structure
            from diffcsp.registry import get_dataset

            if rule != "official":
                raise ValueError("--rule applies to CSP files; generation validity is always the official rule "
                                 "(struct_valid and comp_valid are reported separately)")
            check_rule(rule)
            comp_scaler = comp_scaler or COMP_SCALERS[0]
            if comp_scaler not in COMP_SCALERS:
                raise ValueError(f"unknown --comp-scaler {comp_scaler!r}; choose one of: {', '.join(COMP_SCALERS)}")
            info = get_dataset(preds.dataset)
            if info.coverage_cutoffs is None:
                raise ValueError(f"no coverage cut-offs are defined for {preds.dataset}")
            reference = load_split(preds.dataset, preds.split, data_dir)
            if reference_limit:
                import numpy as np

                reference = reference.subset(np.arange(min(reference_limit, len(reference))))
            cache = reference_cache_path(preds.dataset, preds.split, len(reference))
            summary = evaluate_generation([dict_to_structure(d) for d in preds.generated], reference.structures(),
                                          *info.coverage_cutoffs, workers=workers, cache_path=cache,
                                          comp_scaler=comp_scaler)
            summary["rule"] = rule
        summary.update(task=preds.task, dataset=preds.dataset, split=preds.split, predictions=str(predictions),
                       eval_seconds=round(time.perf_counter() - start, 1))
        if json_out:
            write_json(json_out, summary)
        scaler = f", composition scaler: {summary['comp_scaler']}" if "comp_scaler" in summary else ""
        caption = (f"{rule} rule: {RULE_DESCRIPTIONS[rule]}" if preds.task == "csp" else
                   "valid: structurally valid, SMACT-valid and CrystalNN fingerprint computable (official rule); "
                   f"coverage: composition fingerprints standardised with the {summary['comp_scaler']} scaler")
        table = Table(title=f"{preds.task.upper()} metrics — {preds.dataset}/{preds.split} — rule: {rule}{scaler}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if key in ("match_rate_curve", "predictions"):
                continue
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        console.print(caption)


def plot_match_curve(curve: list[tuple[int, float]], out: Path, title: str) -> Path:
    """Match rate against the number of samples k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffcsp.fileio import save_png

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([k for k, _ in curve], [100 * r for _, r in curve], marker="o")
    ax.set_xlabel("samples per crystal k")
    ax.set_ylabel("match rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_png(fig, out)


def main() -> None:
    """Entry point for ``python -m diffcsp``."""
    app(prog_name="diffcsp")


if __name__ == "__main__":
    sys.exit(main())
