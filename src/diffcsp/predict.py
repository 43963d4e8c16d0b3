"""The notebook API: ``predict("SrTiO3", n=10)`` → a list of pymatgen Structures.

A composition is read with pymatgen as one *formula unit*; the unit cell holds Z of them.
Z is fixed with ``formula_units`` or, by default, drawn per sample from the cell sizes the model
saw in training (its ``num_atoms_hist``): a model trained on MP-20 puts LiFePO4 in cells of 7, 14
or 28 atoms as often as it saw such cells, where a fixed Z = 1 would force every sample into a
7-atom cell that the real compound (Z = 4) does not have. A pymatgen ``Structure`` (or a CIF
via the CLI) gives both: its reduced formula is the unit and its cell fixes Z.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from diffcsp.checkpoint import load_model
from diffcsp.errors import CompositionError
from diffcsp.model import DiffCSP
from diffcsp.precision import resolve as resolve_precision
from diffcsp.predictions import Predictions, arrays_to_dict
from diffcsp.registry import get_dataset
from diffcsp.sampler import SampleResult, sample, sampler_preset, time_schedule

#: What :func:`predict` accepts as a composition.
CompositionLike = Union[str, Composition, Structure, Sequence[Union[str, int]]]
#: spglib tolerance (Å) for the space group in the summary and the symmetrised CIF.
SYMPREC = 0.1


def composition_to_numbers(composition: CompositionLike, formula_units: int = 1) -> list[int]:
    """Atomic numbers of ``formula_units`` copies of a formula, sorted, with clear errors for bad input.

    A ``Structure`` gives its reduced formula (use :func:`structure_formula_units` for its Z).
    """
    if formula_units < 1:
        raise CompositionError(f"formula_units must be ≥ 1, got {formula_units}")
    if isinstance(composition, Structure):
        if not composition.is_ordered:
            raise CompositionError(f"{composition.composition.formula}: a disordered structure (partial occupancies) "
                                   "has no whole-atom composition")
        composition = composition.composition.reduced_composition
    if isinstance(composition, (list, tuple)):
        numbers = []
        for species in composition:
            try:
                numbers.append(Element(species).Z if isinstance(species, str) else Element.from_Z(int(species)).Z)
            except (ValueError, KeyError):
                raise CompositionError(f"unknown element {species!r}") from None
            if numbers[-1] > 100:
                raise CompositionError(f"element {species} (Z={numbers[-1]}) is beyond the model's 100 elements")
        if not numbers:
            raise CompositionError("empty composition")
        return sorted(numbers * formula_units)
    if isinstance(composition, str):
        try:
            composition = Composition(composition)
        except (ValueError, KeyError) as exc:
            raise CompositionError(f"cannot read formula {composition!r}: {exc}") from None
    numbers = []
    for species, amount in composition.items():
        if not isinstance(species, Element) and not hasattr(species, "element"):
            raise CompositionError(f"unknown element {str(species).rstrip('0+-')!r} in {composition.formula}")
        element = species if isinstance(species, Element) else species.element
        if element.Z > 100:
            raise CompositionError(f"element {element} (Z={element.Z}) is beyond the model's 100 elements")
        if abs(amount - round(amount)) > 1e-6 or round(amount) < 1:
            raise CompositionError(f"{composition.formula}: amounts must be whole numbers of atoms per cell (got {element}{amount:g})")
        numbers += [element.Z] * int(round(amount))
    if not numbers:
        raise CompositionError("empty composition")
    return sorted(numbers * formula_units)


def structure_formula_units(structure: Structure) -> int:
    """Z of a structure's cell: how many reduced formula units it holds."""
    return int(round(structure.composition.get_reduced_composition_and_factor()[1]))


def read_structure(path: str | Path) -> Structure:
    """Read a CIF (or any file pymatgen reads: POSCAR, …) with a one-line error if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise CompositionError(f"{path}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about every rounding it does in a CIF
        try:
            structure = Structure.from_file(path)
        except Exception as exc:  # pymatgen raises many exception types for unreadable files
            raise CompositionError(f"cannot read a crystal structure from {path}: {type(exc).__name__}: {exc}") from None
    if len(structure) == 0:
        raise CompositionError(f"{path}: the structure has no atoms")
    return structure


def check_supported(model: DiffCSP, numbers: Sequence[int]) -> list[str]:
    """Raise for cells the model cannot handle; return warnings for ones it was not trained on."""
    cfg = model.config
    if len(numbers) > cfg.max_atoms:
        raise CompositionError(f"{len(numbers)} atoms per cell, but this model supports at most {cfg.max_atoms} "
                               f"(it was trained on {cfg.dataset or 'an unknown dataset'})")
    notes = []
    unseen = sorted({Element.from_Z(z).symbol for z in numbers if cfg.elements and z not in cfg.elements})
    if unseen:
        notes.append(f"elements never seen in training ({cfg.dataset}): {', '.join(unseen)}; expect poor structures")
    hist = cfg.num_atoms_hist
    if hist and (len(numbers) >= len(hist) or hist[len(numbers)] == 0):
        seen = [n for n, c in enumerate(hist) if c]
        notes.append(f"{len(numbers)} atoms per cell never seen in training (seen: {seen})")
    return notes


def formula_unit_choices(model: DiffCSP, atoms_per_unit: int) -> tuple[list[int], list[float]]:
    """Z values the model saw cells of (Z·atoms ≤ max_atoms, seen in training) and their weights."""
    hist = model.config.num_atoms_hist
    zs = [z for z in range(1, model.config.max_atoms // atoms_per_unit + 1)
          if z * atoms_per_unit < len(hist) and hist[z * atoms_per_unit] > 0]
    total = sum(hist[z * atoms_per_unit] for z in zs)
    return zs, [hist[z * atoms_per_unit] / total for z in zs]


@dataclass
class PredictionPlan:
    """What will be sampled: the formula unit, Z of every sample, and warnings for the user."""

    unit: list[int]  # atomic numbers of one formula unit
    formula_units: np.ndarray  # (n,) Z of each sample
    notes: list[str]

    def cell(self, i: int) -> list[int]:
        """Atomic numbers of sample ``i``'s cell."""
        return sorted(self.unit * int(self.formula_units[i]))


def plan_prediction(model: DiffCSP, composition: CompositionLike, n: int, formula_units: int | None = None,
                    seed: int | None = 0) -> PredictionPlan:
    """Check the input against the model and choose Z for each of ``n`` samples.

    ``formula_units=None`` draws Z with probability ∝ how many training cells had Z·(atoms per
    unit) atoms (seeded by ``seed``); if none did, Z = 1 with a note. A ``Structure`` fixes Z to
    its own cell's. A generation model predicts too, its type channel held at the composition
    (see :func:`diffcsp.sampler.sample`).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if isinstance(composition, Structure):
        if formula_units is not None:
            raise CompositionError("formula_units comes from the structure's cell; do not pass both")
        unit = composition_to_numbers(composition)
        formula_units = structure_formula_units(composition)
    else:
        unit = composition_to_numbers(composition)
    notes: list[str] = []
    if formula_units is not None:
        if formula_units < 1:
            raise CompositionError(f"formula_units must be ≥ 1, got {formula_units}")
        zs = np.full(n, formula_units, dtype=np.int64)
    else:
        choices, weights = formula_unit_choices(model, len(unit))
        if choices:
            zs = np.random.default_rng(seed).choice(choices, size=n, p=weights).astype(np.int64)
        else:
            zs = np.ones(n, dtype=np.int64)
            seen = [k for k, c in enumerate(model.config.num_atoms_hist) if c]
            tokens = Composition({Element.from_Z(z).symbol: unit.count(z) for z in set(unit)}).formula.split()
            formula = "".join(tok[:-1] if tok[-1] == "1" and tok[-2].isalpha() else tok for tok in tokens)
            notes.append(f"the model saw no cell holding a whole number of {formula} units ({len(unit)} atoms each, "
                         f"up to its limit of {model.config.max_atoms}; it saw cells of {seen} atoms); using Z = 1")
    fallback = bool(notes)
    for z in sorted(set(zs.tolist())):
        for note in check_supported(model, sorted(unit * z)):
            if note not in notes and not (fallback and "atoms per cell never seen" in note):  # Z note says so
                notes.append(note)
    return PredictionPlan(unit=unit, formula_units=zs, notes=notes)


def resolve_sampler(model: DiffCSP, sampler: str, steps: int | None, step_lr: float | None, num_samples: int = 1,
                    dataset: str | None = None, **overrides: Any) -> tuple[float, dict[str, Any], str]:
    """(corrector step γ, keyword arguments of :func:`sample`, name to record) for a named preset.

    ``steps``, ``step_lr`` and ``overrides`` (``method``, ``corrector_temperature``, …) override
    the preset; an override given as ``None`` keeps the preset's value, so callers can pass
    unset options straight through. γ defaults to the dataset's value times the preset's scale. The name to record is
    the preset's while what runs is the preset's sampler (the same time grid, γ and options; an
    override equal to the preset's value, a ``rho`` the grid ignores, or a ``precision="auto"`` that
    resolves to ``sample()``'s default fp32 on the device that samples, changes nothing) and
    ``"custom"`` otherwise, so a predictions file never names a preset it was not sampled with."""
    preset = sampler_preset(sampler, model.config.dataset if dataset is None else dataset, model.config.task)
    overrides = {k: v for k, v in {"steps": steps, **overrides}.items() if v is not None}
    options = {**preset.options(), **overrides}
    with warnings.catch_warnings():
        if step_lr is not None:  # γ is given: the lookup's "no paper step size" warning does not apply
            warnings.simplefilter("ignore")
        default_lr = default_step_lr(model, num_samples, dataset=dataset) * preset.step_lr_scale
    gamma = default_lr if step_lr is None else step_lr
    # what the preset runs: its own options, sample()'s defaults for the rest (precision, clip_lattice, …)
    reference = {**{k: p.default for k, p in inspect.signature(sample).parameters.items()}, **preset.options()}
    device = options.get("device")  # as sample(): None means the model's own device
    device = next(model.parameters()).device if device is None else device

    def runs(opts: dict[str, Any]) -> tuple[list[int] | None, dict[str, Any]]:
        try:
            grid = time_schedule(model.config.timesteps, opts["steps"], opts["schedule"], opts["rho"])
        except ValueError:  # e.g. a preset's 50 steps on a model with T < 50: not what runs
            grid = None
        ran = {k: opts.get(k, reference.get(k)) for k in options if k not in ("steps", "schedule", "rho", "device")}
        if "precision" in ran:  # "auto" is whichever of fp32/bf16 the sampling device resolves it to
            ran["precision"] = resolve_precision(ran["precision"], device)
        return grid, ran

    unchanged = runs(options) == runs(reference) and math.isclose(gamma, default_lr, rel_tol=1e-9)
    return gamma, options, sampler if unchanged else "custom"


def sample_plan(model: DiffCSP, plan: PredictionPlan, steps: int | None = None, step_lr: float | None = None,
                seed: int | None = 0, progress: bool = False, device: str | torch.device | None = None,
                sampler: str = "auto", corrector_temperature: float | None = None) -> list[Structure | None]:
    """Sample every cell of a plan in one sampler call (cells of different sizes batch together).

    ``sampler`` names a preset of :data:`diffcsp.sampler.SAMPLERS`; ``steps``/``step_lr``/
    ``corrector_temperature`` override its number of steps, corrector step size and κ."""
    n = len(plan.formula_units)
    step_lr, options, _ = resolve_sampler(model, sampler, steps, step_lr, num_samples=n,
                                          corrector_temperature=corrector_temperature)
    cells = [plan.cell(i) for i in range(n)]
    result = sample(model, [len(c) for c in cells], torch.tensor([z for c in cells for z in c]), step_lr=step_lr,
                    seed=seed, progress=progress, device=device, **options)
    return result.structures()


def predict(composition: CompositionLike, n: int = 1, model: DiffCSP | str | Path | None = None,
            formula_units: int | None = None, steps: int | None = None, step_lr: float | None = None,
            seed: int | None = 0, progress: bool = False, device: str | torch.device | None = None,
            sampler: str = "auto", corrector_temperature: float | None = None) -> list[Structure | None]:
    """Predict ``n`` crystal structures for a composition with a CSP model (default: bundled).

    ``composition``: a formula ("LiFePO4"), a pymatgen ``Composition``, a species list, or a
    ``Structure`` (its reduced formula and its Z). ``formula_units``: Z for every sample; ``None``
    draws Z per sample from the cell sizes seen in training (see :func:`plan_prediction`).
    ``sampler``: ``"auto"`` (default) is ``"fast"`` for models trained on Perov-5 or Carbon-24,
    where its 50 predictor–corrector steps (100 network calls instead of 2000) were measured to
    keep the match rate and precision of the paper's 1000 steps (BENCHMARKS.md, "Few-step
    sampling"), and ``"paper"`` for any other model; either can be named. ``steps``, ``step_lr``
    and ``corrector_temperature`` (κ) override the preset (``step_lr`` defaults to the paper's corrector
    step size for the model's training dataset, times the preset's scale). Unusual inputs (unseen elements or cell sizes) give ``UserWarning``s. A sample whose sampler
    output is not finite (a diverging or damaged model) comes back as ``None``, with a warning.
    """
    if not isinstance(model, DiffCSP):
        model = load_model(model, device=device or "cpu")
    plan = plan_prediction(model, composition, n, formula_units, seed)
    for note in plan.notes:
        warnings.warn(note, stacklevel=2)
    return sample_plan(model, plan, steps=steps, step_lr=step_lr, seed=seed, progress=progress, device=device,
                       sampler=sampler, corrector_temperature=corrector_temperature)


def default_step_lr(model: DiffCSP, num_samples: int = 1, dataset: str | None = None) -> float:
    """The paper's corrector step size γ for ``dataset`` (default: the model's training set).

    The one lookup behind every sampling entry point. A dataset the paper gives no value for
    gets MP-20's (the most general chemistry) with a warning.
    """
    dataset = model.config.dataset if dataset is None else dataset
    task = "gen" if model.is_gen else "csp"
    try:
        return get_dataset(dataset).step_lr(task, num_samples)
    except ValueError:
        gamma = get_dataset("mp_20").step_lr(task, num_samples)
        warnings.warn(f"no paper step size for dataset {dataset!r}; using MP-20's corrector step γ = {gamma:g} "
                      "(set step_lr / --step-lr to override)", stacklevel=2)
        return gamma


def spacegroup(structure: Structure, symprec: float = SYMPREC) -> tuple[str, int] | None:
    """(Hermann–Mauguin symbol, number) by spglib, or None where spglib fails (degenerate cells)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), sga.get_space_group_number()
    except Exception:  # spglib raises on overlapping atoms or collapsed cells
        return None


def describe(structure: Structure, symprec: float = SYMPREC) -> dict[str, Any]:
    """One summary row: formula, lattice, volume, density, space group (spglib), validity."""
    from diffcsp.metrics import is_structurally_valid

    sg = spacegroup(structure, symprec)
    a, b, c = structure.lattice.abc
    alpha, beta, gamma = structure.lattice.angles
    return {
        "formula": structure.composition.reduced_formula,
        "a": round(a, 4), "b": round(b, 4), "c": round(c, 4),
        "alpha": round(alpha, 2), "beta": round(beta, 2), "gamma": round(gamma, 2),
        "volume": round(structure.volume, 3), "density": round(float(structure.density), 4),
        "spacegroup": f"{sg[0]} ({sg[1]})" if sg else "?", "valid": is_structurally_valid(structure),
    }


def write_structures(structures: Sequence[Structure | None], out_dir: str | Path, stem: str) -> list[Path | None]:
    """Write each structure as ``<stem>_<i>.cif`` (atomically, P1, coordinates as sampled).

    A ``None`` (a sample the sampler reported as failed) keeps its number but gets no file.
    """
    from pymatgen.io.cif import CifWriter

    from diffcsp.fileio import write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(len(structures) - 1)))
    paths: list[Path | None] = []
    for i, structure in enumerate(structures):
        path = out_dir / f"{stem}_{i:0{width}d}.cif"
        if structure is None:
            paths.append(None)
            continue
        write_text(path, str(CifWriter(structure)))
        paths.append(path)
    return paths


def write_symmetrized_cif(structure: Structure, path: str | Path, symprec: float = SYMPREC, source: str = "") -> bool:
    """Write the spglib-refined conventional cell in its space group; False if spglib fails.

    The sampled cell is P1 with raw coordinates; this file is the same crystal with atoms snapped
    onto the symmetry found at tolerance ``symprec`` (Å), which is what a reader expects to see.
    """
    from pymatgen.io.cif import CifWriter

    from diffcsp.fileio import write_text

    try:
        text = str(CifWriter(structure, symprec=symprec))
    except Exception:
        return False
    header = (f"# Symmetrised by diffcsp with spglib, symprec = {symprec} A (refined conventional cell)"
              f"{'; raw sampled cell: ' + source if source else ''}\n")
    write_text(path, header + text)
    return True


def plot_structure(structure: Structure, path: str | Path, title: str = "") -> Path:
    """PNG of the unit cell (dashed) and its atoms coloured by element (Jmol colours), with a key.

    For a readable picture the origin is put on an atom of the rarest (then heaviest) element —
    a periodic translation, so the crystal is the same — and atoms within 0.02 (fractional) of a
    cell face, edge or corner are drawn at every periodic image on the cell's boundary: a cubic
    perovskite then looks like the textbook picture rather than five atoms scattered in a box.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase import Atoms
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors
    from ase.visualize.plot import plot_atoms
    from matplotlib.patches import Patch

    from diffcsp.fileio import save_png

    tol = 0.02
    counts = structure.composition.element_composition
    anchor = min(range(len(structure)), key=lambda i: (counts[structure[i].specie.symbol], -structure[i].specie.Z))
    origin = structure[anchor].frac_coords
    numbers, frac = [], []
    for site in structure:
        f = np.mod(site.frac_coords - origin, 1.0)
        f[f > 1 - tol] -= 1.0  # nearly on the far face: draw it on the near one (and its images)
        for shift in np.ndindex(2, 2, 2):
            shift = np.array(shift)
            if np.all((shift == 0) | (f < tol)):
                numbers.append(site.specie.Z)
                frac.append(f + shift)
    atoms = Atoms(numbers=numbers, scaled_positions=np.array(frac), cell=structure.lattice.matrix, pbc=True)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    plot_atoms(atoms, ax, rotation="-80x,-25y,0z", show_unit_cell=2, radii=0.35 * covalent_radii[atoms.numbers])
    ax.set_axis_off()
    elements = sorted({site.specie.Z for site in structure})
    ax.legend(handles=[Patch(facecolor=jmol_colors[z], edgecolor="black", label=Element.from_Z(z).symbol) for z in elements],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    return save_png(fig, path, dpi=100)


def write_predictions(structures: Sequence[Structure | None], formula_units: Sequence[int], out_dir: str | Path,
                      stem: str, symprec: float = SYMPREC, pictures: bool = True) -> list[dict[str, Any]]:
    """Write what ``diffcsp predict`` leaves behind and return the summary rows.

    Per structure ``<stem>_<i>.cif`` (raw P1 cell), ``<stem>_<i>_sym.cif`` (symmetrised at
    ``symprec``, when spglib succeeds) and ``<stem>_<i>.png``; then ``summary.csv`` with one row
    each (file, Z, formula, lattice, volume, density, space group, validity). A failed sample
    (``None``: the sampler returned non-finite numbers) gets a row saying so and no files.
    """
    import csv
    import io

    from diffcsp.fileio import write_text

    out_dir = Path(out_dir)
    paths = write_structures(structures, out_dir, stem)
    columns = ["formula", "a", "b", "c", "alpha", "beta", "gamma", "volume", "density", "spacegroup", "valid"]
    rows = []
    for path, structure, z in zip(paths, structures, formula_units, strict=True):
        if structure is None or path is None:
            rows.append(dict(file="", Z=int(z), **{k: "" for k in columns}, sym_file=""))
            rows[-1].update(spacegroup="failed (not finite)", valid=False)
            continue
        row = dict(file=path.name, Z=int(z), **describe(structure, symprec))
        sym_path = path.with_name(path.stem + "_sym.cif")
        row["sym_file"] = sym_path.name if write_symmetrized_cif(structure, sym_path, symprec, source=path.name) else ""
        if pictures:
            plot_structure(structure, path.with_suffix(".png"), f"{path.stem}: {row['formula']} (Z={z}), {row['spacegroup']}")
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "summary.csv", buffer.getvalue())
    return rows


def _timed_sample(model: DiffCSP, num_atoms, atom_types, step_lr: float, **kw: Any) -> tuple[SampleResult, dict[str, Any]]:
    """Run the sampler and return its result with the settings and wall time to record."""
    start = time.perf_counter()
    result = sample(model, num_atoms, atom_types, step_lr=step_lr, **kw)
    seconds = time.perf_counter() - start + result.earlier_seconds  # a resumed run counts its earlier part
    meta = {"steps": kw.get("steps") or model.config.timesteps, "step_lr": step_lr, "seed": kw.get("seed"),
            **{k: kw[k] for k in ("method", "schedule", "rho", "precision", "corrector_temperature", "predictor_temperature",
                                  "clip_lattice") if k in kw},
            "sampling_seconds": round(seconds, 1), "seconds_per_crystal_sample": round(seconds / max(len(num_atoms), 1), 4),
            "model": model.config.to_dict()}
    if result.resumed_chunks:
        meta["resumed_chunks"] = result.resumed_chunks
    return result, meta


def predict_split(model: DiffCSP, table, num_samples: int = 1, steps: int | None = None, step_lr: float | None = None,
                  seed: int | None = 0, batch_size: int = 1024, progress: bool = True, sampler: str = "paper",
                  journal: str | Path | None = None, **sampler_options: Any) -> Predictions:
    """CSP for every crystal of a table (given its atoms), ``num_samples`` each, as a predictions file.

    ``model`` is a CSP model or a generation model; the latter samples lattice and coordinates
    with its type channel held at the given atoms (see :func:`diffcsp.sampler.sample`), with
    its own sampler presets and step sizes (those of ab initio generation).
    ``sampler`` names a preset (default ``"paper"``: benchmarks reproduce the paper's sampler);
    ``steps``/``step_lr`` and ``sampler_options`` (``method``, ``schedule``, ``rho``,
    ``clip_lattice``, ``precision``, ``corrector_temperature``, ``predictor_temperature``) override it and go to
    :func:`diffcsp.sampler.sample`, as does ``journal`` (a file that makes the run resumable)."""
    too_big = int((table.num_atoms > model.config.max_atoms).sum())
    if too_big:
        raise CompositionError(f"{too_big} crystals exceed the model's {model.config.max_atoms} atoms")
    dataset, split = table.source.get("dataset", model.config.dataset), table.source.get("split", "")
    gamma, options, label = resolve_sampler(model, sampler, steps, step_lr, num_samples, dataset=dataset, **sampler_options)
    idx = np.tile(np.arange(len(table)), num_samples)  # sample-major: every crystal once, then again …
    atom_idx = table.atom_index(idx)
    result, meta = _timed_sample(model, table.num_atoms[idx], torch.as_tensor(table.numbers[atom_idx]), gamma,
                                 seed=seed, batch_size=batch_size, progress=progress, journal=journal, **options)
    meta.update(sampler=label, sampler_preset=sampler)  # the file's other keys say what was run
    crystals = []
    for i in range(len(table)):
        rec = table.record(i)
        samples = [arrays_to_dict(*result.crystal(j * len(table) + i)) for j in range(num_samples)]
        crystals.append({"id": rec.id, "formula": rec.formula,
                         "ground_truth": arrays_to_dict(rec.numbers, rec.lattice, rec.frac_coords), "samples": samples})
    return Predictions("csp", dataset, split, num_samples, meta=meta, crystals=crystals)


def generate(model: DiffCSP | str | Path | None, n: int, steps: int | None = None, step_lr: float | None = None,
             seed: int | None = 0, batch_size: int = 512, reference_split: str = "test",
             progress: bool = True, sampler: str = "auto", journal: str | Path | None = None,
             **sampler_options: Any) -> tuple[Predictions, list[Structure]]:
    """Ab initio generation of ``n`` crystals, atom counts drawn from the training distribution.

    ``model``: a generation model, a path to one, or ``None`` / a dataset name for a bundled one.
    ``sampler`` names a preset: ``"auto"`` is the paper's sampler except where another setting
    was measured to serve the model's dataset better (Carbon-24: a cooler corrector, COV-P
    34 → 65 % for 0.2 points of COV-R, :data:`diffcsp.sampler.AUTO_SAMPLERS`); ``"paper"`` is always the paper's
    sampler, the one the published tables use. ``steps``/``step_lr`` and ``sampler_options``
    (``method``, ``schedule``, ``rho``, ``precision``, ``corrector_temperature``, ``predictor_temperature``) override the
    preset, go to :func:`diffcsp.sampler.sample` and are recorded in the file's metadata;
    ``journal`` makes the run resumable (see there).
    """
    if not isinstance(model, DiffCSP):
        model = load_model(model, task="gen")
    if not model.is_gen:
        raise CompositionError("this is a CSP model (atom types given); train one with `diffcsp train --task gen`")
    gamma, options, label = resolve_sampler(model, sampler, steps, step_lr, **sampler_options)
    num_atoms = sample_num_atoms(model.config.num_atoms_hist, n, seed)
    result, meta = _timed_sample(model, num_atoms, None, gamma, seed=seed, batch_size=batch_size,
                                 progress=progress, journal=journal, **options)
    meta.update(sampler=label, sampler_preset=sampler)  # the file's other keys say what was run
    generated = [arrays_to_dict(*result.crystal(i)) for i in range(n)]
    return Predictions("gen", model.config.dataset, reference_split, 1, meta=meta, generated=generated), result.structures()


def sample_num_atoms(hist: Sequence[int], n: int, seed: int | None = 0) -> np.ndarray:
    """Atom counts drawn from the training histogram (ab initio generation; docs/method.md §Sampling)."""
    hist = np.asarray(hist, dtype=float)
    if hist.sum() <= 0:
        raise ValueError("model has no atom-count distribution (was it trained with diffcsp ≥ 0.1?)")
    return np.random.default_rng(seed).choice(len(hist), size=n, p=hist / hist.sum())
