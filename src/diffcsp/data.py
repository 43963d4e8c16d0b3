"""Benchmark CSV → crystal records (docs/method.md §Representation), parsed in parallel, cached.

A split is held as a :class:`CrystalTable`: flat numpy arrays (atoms of all crystals
concatenated, with per-crystal atom counts), which is what both the cache file and the batcher
want. Parsing with pymatgen costs milliseconds per crystal, so the processed table is cached
under a key made of the CSV's content hash and :data:`PREPROCESS_VERSION`; any change to either
makes a new key. Rows that cannot become a valid record are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from diffcsp.errors import DataError
from diffcsp.fileio import atomic_write, write_json
from diffcsp.lattice import lattice_from_params
from diffcsp.parallel import mp_context, run_inline, worker_count, worker_initializer
from diffcsp.registry import DatasetInfo, default_cache_dir, get_dataset, split_path

#: Bump whenever the record construction changes; it invalidates every cache.
PREPROCESS_VERSION = 1
#: Atoms closer than this (Å, periodic) make a row "overlapping_atoms".
MIN_DISTANCE = 0.5
MAX_Z = 100

SKIP_REASONS = ("unparsable_cif", "unknown_element", "disordered", "too_many_atoms", "overlapping_atoms", "empty")


@dataclass
class CrystalRecord:
    """One crystal as the model sees it (docs/method.md §Representation)."""

    id: str
    formula: str
    numbers: np.ndarray  # (N,) int atomic numbers 1..100
    frac_coords: np.ndarray  # (N, 3) in [0, 1)
    lengths: np.ndarray  # (3,) Å
    angles: np.ndarray  # (3,) degrees
    prop: float = float("nan")

    @property
    def lattice(self) -> np.ndarray:
        """Lattice matrix rebuilt from lengths/angles in the CDVAE convention."""
        return lattice_from_params(self.lengths, self.angles)

    def to_structure(self):  # -> pymatgen Structure (imported lazily: pymatgen is slow to import)
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.numbers.tolist(), self.frac_coords, coords_are_cartesian=False)


def structure_to_record(structure, id: str = "", prop: float = float("nan"), max_atoms: int | None = None) -> CrystalRecord:
    """Preprocess a pymatgen Structure (docs/method.md §Representation); ``RowError`` on bad input.

    Niggli-reduce (no primitive conversion), then keep lengths/angles and fractional
    coordinates wrapped into [0, 1).
    """
    if len(structure) == 0:
        raise RowError("empty", "structure has no atoms")
    if not structure.is_ordered:
        raise RowError("disordered", "partial occupancies are not supported")
    for site in structure:
        z = getattr(site.specie, "Z", None)
        if not isinstance(z, int) or not 1 <= z <= MAX_Z:
            raise RowError("unknown_element", f"species {site.specie} is not an element with Z in 1..{MAX_Z}")
    if max_atoms is not None and len(structure) > max_atoms:
        raise RowError("too_many_atoms", f"{len(structure)} atoms > limit {max_atoms}")
    reduced = structure.get_reduced_structure("niggli")
    if len(reduced) > 1:
        dist = reduced.distance_matrix
        np.fill_diagonal(dist, np.inf)
        if dist.min() < MIN_DISTANCE:
            raise RowError("overlapping_atoms", f"atoms {dist.min():.3f} Å apart (< {MIN_DISTANCE} Å)")
    lengths = np.array(reduced.lattice.abc, dtype=np.float64)
    angles = np.array(reduced.lattice.angles, dtype=np.float64)
    frac = np.mod(reduced.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0  # x mod 1 can round to exactly 1.0 for tiny negative x
    return CrystalRecord(
        id=str(id),
        formula=reduced.composition.reduced_formula,
        numbers=np.array([site.specie.Z for site in reduced], dtype=np.int64),
        frac_coords=frac,
        lengths=lengths,
        angles=angles,
        prop=float(prop),
    )


class RowError(ValueError):
    """Why one CSV row was skipped; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_cif(cif: str):
    """Parse a CIF string with pymatgen (first structure, no primitive reduction)."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structures = CifParser(io.StringIO(cif)).parse_structures(primitive=False)
        except Exception as exc:  # pymatgen raises many exception types for bad CIFs
            raise RowError("unparsable_cif", f"{type(exc).__name__}: {exc}") from None
    if not structures:
        raise RowError("unparsable_cif", "no structure in CIF")
    return structures[0]


def _parse_row(args: tuple[str, str, float, int]) -> tuple[str, CrystalRecord | None, str | None, str | None]:
    """Worker: one CSV row → (row id, record or None, skip reason, message)."""
    row_id, cif, prop, max_atoms = args
    try:
        if not isinstance(cif, str) or not cif.strip():
            raise RowError("unparsable_cif", "empty CIF field")
        structure = parse_cif(cif)
        return row_id, structure_to_record(structure, id=row_id, prop=prop, max_atoms=max_atoms), None, None
    except RowError as exc:
        return row_id, None, exc.reason, str(exc)
    except Exception as exc:  # anything else pymatgen throws on a strange row
        return row_id, None, "unparsable_cif", f"{type(exc).__name__}: {exc}"


@dataclass
class CrystalTable:
    """A split as flat arrays; index ``i`` spans atoms ``offsets[i]:offsets[i+1]``."""

    ids: list[str]
    formulas: list[str]
    numbers: np.ndarray  # (sum N,) int64
    frac_coords: np.ndarray  # (sum N, 3) float64
    num_atoms: np.ndarray  # (B,) int64
    lengths: np.ndarray  # (B, 3)
    angles: np.ndarray  # (B, 3)
    props: np.ndarray  # (B,)
    skipped: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.num_atoms)]).astype(np.int64)
        self.lattices = lattice_from_params(self.lengths, self.angles)

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, i: int) -> CrystalRecord:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return CrystalRecord(
            self.ids[i], self.formulas[i], self.numbers[lo:hi], self.frac_coords[lo:hi],
            self.lengths[i], self.angles[i], float(self.props[i]),
        )

    def structures(self, indices=None) -> list:
        """pymatgen Structures of the given (default: all) crystals."""
        indices = range(len(self)) if indices is None else indices
        return [self.record(i).to_structure() for i in indices]

    def atom_index(self, indices) -> np.ndarray:
        """Rows of the flat atom arrays that belong to crystals ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices])

    def subset(self, indices) -> CrystalTable:
        """A new table holding only ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        atom_idx = self.atom_index(indices)
        return CrystalTable(
            ids=[self.ids[i] for i in indices], formulas=[self.formulas[i] for i in indices],
            numbers=self.numbers[atom_idx], frac_coords=self.frac_coords[atom_idx],
            num_atoms=self.num_atoms[indices], lengths=self.lengths[indices], angles=self.angles[indices],
            props=self.props[indices], skipped={}, source=dict(self.source, subset=len(indices)),
        )

    @classmethod
    def from_records(cls, records: list[CrystalRecord], skipped=None, source=None) -> CrystalTable:
        if not records:
            raise DataError("no valid crystal to build a table from")
        return cls(
            ids=[r.id for r in records], formulas=[r.formula for r in records],
            numbers=np.concatenate([r.numbers for r in records]).astype(np.int64),
            frac_coords=np.concatenate([r.frac_coords for r in records]).astype(np.float64),
            num_atoms=np.array([len(r.numbers) for r in records], dtype=np.int64),
            lengths=np.stack([r.lengths for r in records]), angles=np.stack([r.angles for r in records]),
            props=np.array([r.prop for r in records], dtype=np.float64),
            skipped=skipped or {}, source=source or {},
        )

    # -- cache I/O ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the table as one npz (arrays + JSON metadata), atomically."""
        meta = json.dumps({"ids": self.ids, "formulas": self.formulas, "skipped": self.skipped, "source": self.source})
        with atomic_write(path) as handle:
            np.savez(handle, numbers=self.numbers, frac_coords=self.frac_coords, num_atoms=self.num_atoms,
                     lengths=self.lengths, angles=self.angles, props=self.props, meta=np.frombuffer(meta.encode(), np.uint8))

    @classmethod
    def load(cls, path: Path) -> CrystalTable:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(ids=meta["ids"], formulas=meta["formulas"], numbers=z["numbers"], frac_coords=z["frac_coords"],
                       num_atoms=z["num_atoms"], lengths=z["lengths"], angles=z["angles"], props=z["props"],
                       skipped=meta["skipped"], source=meta["source"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_csv(path: Path, info: DatasetInfo, workers: int | None = None, progress: bool = True) -> CrystalTable:
    """Parse every row of a CDVAE-format CSV into a table, skipping (and reporting) bad rows."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if "cif" not in frame.columns:
        raise DataError(f"{path}: no 'cif' column (columns: {', '.join(map(str, frame.columns))})")
    id_col = "material_id" if "material_id" in frame.columns else frame.columns[0]
    props = frame[info.property_column] if info.property_column in frame.columns else pd.Series(np.nan, index=frame.index)
    jobs = [(str(i), c, float(p) if pd.notna(p) else float("nan"), info.max_atoms)
            for i, c, p in zip(frame[id_col], frame["cif"], props, strict=True)]
    workers = workers if workers is not None else worker_count(None, len(jobs) // 200 + 1)
    bar = dict(total=len(jobs), desc=f"parsing {info.name}/{path.stem}", unit="crystal", disable=not progress)
    if workers > 1:
        # never fork: the caller often has torch's OpenMP threads running (see diffcsp.parallel)
        with mp_context(["diffcsp.data"]).Pool(workers, initializer=worker_initializer()) as pool:
            results = list(tqdm(pool.imap(_parse_row, jobs, chunksize=32), **bar))
    else:
        with tqdm(**bar) as inline_bar:
            results = run_inline(_parse_row, [(job,) for job in jobs], inline_bar)
    records, skipped = [], {}
    for row_id, record, reason, message in results:
        if record is None:
            skipped.setdefault(reason, []).append({"id": row_id, "message": message})
        else:
            records.append(record)
    if not records:
        summary = ", ".join(f"{k}: {len(v)}" for k, v in skipped.items()) or "file has no rows"
        raise DataError(f"{path}: no valid crystal in {len(jobs)} rows ({summary})")
    source = {"path": str(path), "dataset": info.name, "split": path.stem, "rows": len(jobs)}
    return CrystalTable.from_records(records, skipped=skipped, source=source)


def load_split(name: str, split: str, data_dir: Path | str | None = None, cache_dir: Path | str | None = None,
               use_cache: bool = True, workers: int | None = None, progress: bool = True) -> CrystalTable:
    """Load ``<data_dir>/<name>/<split>.csv`` as a table, from the cache when it is current."""
    info = get_dataset(name)
    path = split_path(name, split, data_dir)
    if not path.is_file():
        raise DataError(
            f"{path} not found. Point --data-dir (or $DIFFCSP_DATA) at a folder holding {name}/{split}.csv, "
            f"or fetch it with `diffcsp data download {name}`."
        )
    key = f"{file_sha256(path)[:20]}-v{PREPROCESS_VERSION}-max{info.max_atoms}"
    cache_path = Path(cache_dir or default_cache_dir() / "processed") / name / f"{split}-{key}.npz"
    if use_cache and cache_path.is_file():
        try:
            table = CrystalTable.load(cache_path)
            table.source.update(path=str(path), cache=str(cache_path), cache_hit=True)
            return table
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache_path.unlink(missing_ok=True)
    start = time.perf_counter()
    table = parse_csv(path, info, workers=workers, progress=progress)
    table.source.update(sha256_prefix=key, parse_seconds=round(time.perf_counter() - start, 2))
    if use_cache:
        table.save(cache_path)
        write_json(cache_path.with_suffix(".skipped.json"), table.skipped)
    table.source.update(cache=str(cache_path), cache_hit=False)
    return table


def skip_summary(table: CrystalTable) -> dict[str, int]:
    """Count of skipped rows per reason."""
    return {reason: len(rows) for reason, rows in table.skipped.items()}


def table_stats(table: CrystalTable) -> dict[str, Any]:
    """Numbers a user checks first: counts, atoms per cell, elements, lattice ranges."""
    from pymatgen.core.periodic_table import Element

    elements = Counter(Element.from_Z(int(z)).symbol for z in table.numbers)
    return {
        "rows": table.source.get("rows", len(table)),
        "loaded": len(table),
        "skipped": skip_summary(table),
        "atoms_per_cell": dict(sorted(Counter(int(n) for n in table.num_atoms).items())),
        "elements": dict(elements.most_common()),
        "lengths_min": table.lengths.min(0).round(3).tolist(),
        "lengths_max": table.lengths.max(0).round(3).tolist(),
        "angles_min": table.angles.min(0).round(2).tolist(),
        "angles_max": table.angles.max(0).round(2).tolist(),
    }
