"""The notebook API: ``predict("SrTiO3", n=10)`` → a list of pymatgen Structures.

Compositions are read with pymatgen and taken as the contents of one unit cell (times
``formula_units``): "SrTiO3" is a 5-atom cell, "Sr2Ti2O6" or ``formula_units=2`` a 10-atom one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from diffcsp.checkpoint import load_model
from diffcsp.errors import CompositionError
from diffcsp.model import DiffCSP
from diffcsp.predictions import Predictions, arrays_to_dict
from diffcsp.registry import get_dataset
from diffcsp.sampler import SampleResult, sample


def composition_to_numbers(composition: str | Composition | Sequence[str | int], formula_units: int = 1) -> list[int]:
    """Atomic numbers of one unit cell, sorted by element, with clear errors for bad input."""
    if formula_units < 1:
        raise CompositionError(f"formula_units must be ≥ 1, got {formula_units}")
    if isinstance(composition, (list, tuple)):
        numbers = []
        for species in composition:
            try:
                numbers.append(Element(species).Z if isinstance(species, str) else Element.from_Z(int(species)).Z)
            except (ValueError, KeyError):
                raise CompositionError(f"unknown element {species!r}") from None
            if numbers[-1] > 100:
                raise CompositionError(f"element {species} (Z={numbers[-1]}) is beyond the model's 100 elements")
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


def predict(composition: str | Composition | Sequence[str | int], n: int = 1, model: DiffCSP | str | Path | None = None,
            formula_units: int = 1, steps: int | None = None, step_lr: float | None = None, seed: int | None = 0,
            progress: bool = False, device: str | torch.device | None = None) -> list[Structure]:
    """Predict ``n`` crystal structures for a composition with a CSP model (default: bundled).

    ``step_lr`` defaults to the paper's corrector step size for the model's training dataset.
    """
    if not isinstance(model, DiffCSP):
        model = load_model(model, device=device or "cpu")
    if model.is_gen:
        raise CompositionError("this is an ab initio generation model; use a CSP model for predict()")
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    numbers = composition_to_numbers(composition, formula_units)
    for note in check_supported(model, numbers):
        warnings.warn(note, stacklevel=2)
    if step_lr is None:
        step_lr = default_step_lr(model, num_samples=n)
    result = sample(model, [len(numbers)] * n, torch.tensor(numbers * n), step_lr=step_lr, steps=steps, seed=seed,
                    progress=progress, device=device)
    return result.structures()


def default_step_lr(model: DiffCSP, num_samples: int = 1) -> float:
    """SPEC §6 step size for the model's dataset (MP-20's value if the dataset is unknown)."""
    try:
        info = get_dataset(model.config.dataset)
    except ValueError:
        info = get_dataset("mp_20")
    return info.step_lr("gen" if model.is_gen else "csp", num_samples)


def describe(structure: Structure, symprec: float = 0.1) -> dict[str, Any]:
    """One summary row: formula, lattice, volume, density, space group (spglib), validity."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from diffcsp.metrics import is_structurally_valid

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        spacegroup = f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
    except Exception:  # spglib fails on degenerate cells; the row still gets written
        spacegroup = "?"
    a, b, c = structure.lattice.abc
    alpha, beta, gamma = structure.lattice.angles
    return {
        "formula": structure.composition.reduced_formula,
        "a": round(a, 4), "b": round(b, 4), "c": round(c, 4),
        "alpha": round(alpha, 2), "beta": round(beta, 2), "gamma": round(gamma, 2),
        "volume": round(structure.volume, 3), "density": round(float(structure.density), 4),
        "spacegroup": spacegroup, "valid": is_structurally_valid(structure),
    }


def write_structures(structures: Sequence[Structure], out_dir: str | Path, stem: str) -> list[Path]:
    """Write each structure as ``<stem>_<i>.cif`` (atomically) and return the paths."""
    from pymatgen.io.cif import CifWriter

    from diffcsp.fileio import write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(len(structures) - 1)))
    paths = []
    for i, structure in enumerate(structures):
        path = out_dir / f"{stem}_{i:0{width}d}.cif"
        write_text(path, str(CifWriter(structure)))
        paths.append(path)
    return paths


def _timed_sample(model: DiffCSP, num_atoms, atom_types, step_lr: float, **kw: Any) -> tuple[SampleResult, dict[str, Any]]:
    """Run the sampler and return its result with the settings and wall time to record."""
    start = time.perf_counter()
    result = sample(model, num_atoms, atom_types, step_lr=step_lr, **kw)
    seconds = time.perf_counter() - start
    meta = {"steps": kw.get("steps") or model.config.timesteps, "step_lr": step_lr, "seed": kw.get("seed"),
            "sampling_seconds": round(seconds, 1), "seconds_per_crystal_sample": round(seconds / max(len(num_atoms), 1), 4),
            "model": model.config.to_dict()}
    return result, meta


def predict_split(model: DiffCSP, table, num_samples: int = 1, steps: int | None = None, step_lr: float | None = None,
                  seed: int | None = 0, batch_size: int = 1024, progress: bool = True) -> Predictions:
    """CSP for every crystal of a table (given its atoms), ``num_samples`` each, as a predictions file."""
    if model.is_gen:
        raise CompositionError("this is a generation model; use `diffcsp generate`")
    too_big = int((table.num_atoms > model.config.max_atoms).sum())
    if too_big:
        raise CompositionError(f"{too_big} crystals exceed the model's {model.config.max_atoms} atoms")
    dataset, split = table.source.get("dataset", model.config.dataset), table.source.get("split", "")
    gamma = step_lr if step_lr is not None else get_dataset(dataset).step_lr("csp", num_samples)
    idx = np.tile(np.arange(len(table)), num_samples)  # sample-major: every crystal once, then again …
    atom_idx = table.atom_index(idx)
    result, meta = _timed_sample(model, table.num_atoms[idx], torch.as_tensor(table.numbers[atom_idx]), gamma,
                                 steps=steps, seed=seed, batch_size=batch_size, progress=progress)
    crystals = []
    for i in range(len(table)):
        rec = table.record(i)
        samples = [arrays_to_dict(*result.crystal(j * len(table) + i)) for j in range(num_samples)]
        crystals.append({"id": rec.id, "formula": rec.formula,
                         "ground_truth": arrays_to_dict(rec.numbers, rec.lattice, rec.frac_coords), "samples": samples})
    return Predictions("csp", dataset, split, num_samples, meta=meta, crystals=crystals)


def generate(model: DiffCSP, n: int, steps: int | None = None, step_lr: float | None = None, seed: int | None = 0,
             batch_size: int = 512, reference_split: str = "test", progress: bool = True) -> tuple[Predictions, list[Structure]]:
    """Ab initio generation of ``n`` crystals, atom counts drawn from the training distribution."""
    if not model.is_gen:
        raise CompositionError("this is a CSP model (atom types given); train one with `diffcsp train --task gen`")
    gamma = step_lr if step_lr is not None else default_step_lr(model)
    num_atoms = sample_num_atoms(model.config.num_atoms_hist, n, seed)
    result, meta = _timed_sample(model, num_atoms, None, gamma, steps=steps, seed=seed, batch_size=batch_size, progress=progress)
    generated = [arrays_to_dict(*result.crystal(i)) for i in range(n)]
    return Predictions("gen", model.config.dataset, reference_split, 1, meta=meta, generated=generated), result.structures()


def sample_num_atoms(hist: Sequence[int], n: int, seed: int | None = 0) -> np.ndarray:
    """Atom counts drawn from the training histogram (ab initio generation, SPEC §6)."""
    hist = np.asarray(hist, dtype=float)
    if hist.sum() <= 0:
        raise ValueError("model has no atom-count distribution (was it trained with diffcsp ≥ 0.1?)")
    return np.random.default_rng(seed).choice(len(hist), size=n, p=hist / hist.sum())
