"""The predictions file: what `diffcsp sample` / `diffcsp generate` write and `diffcsp evaluate` reads.

Format (gzip-compressed JSON, extension ``.json.gz``; plain ``.json`` is read too)::

    {
      "format": "diffcsp-predictions", "version": 1,
      "task": "csp" | "gen",
      "dataset": "perov_5", "split": "test",      # the reference split (gen: the one to compare to)
      "num_samples": K,                             # samples per crystal (csp); gen: 1
      "meta": {...},                                # checkpoint, steps, step_lr, seed, wall times
      "crystals": [                                 # csp: one entry per ground-truth crystal
        {"id": "18517", "formula": "CdCuN3",
         "ground_truth": CRYSTAL, "samples": [CRYSTAL, ...]},
      ],
      "generated": [CRYSTAL, ...]                   # gen only
    }

where ``CRYSTAL = {"numbers": [Z...], "lattice": [[3x3 rows]], "frac_coords": [[f1,f2,f3]...]}``.
This is far smaller than pymatgen's ``as_dict()`` (20 samples of every test crystal stay at tens
of MB) and round-trips exactly to a :class:`pymatgen.core.Structure`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

from diffcsp.fileio import atomic_write

FORMAT = "diffcsp-predictions"
VERSION = 1


def structure_to_dict(structure: Structure) -> dict[str, Any]:
    """Compact, exact-enough (1e-8) encoding of an ordered structure."""
    return {
        "numbers": [int(site.specie.Z) for site in structure],
        "lattice": np.round(structure.lattice.matrix, 8).tolist(),
        "frac_coords": np.round(structure.frac_coords, 8).tolist(),
    }


def arrays_to_dict(numbers: np.ndarray, lattice: np.ndarray, frac_coords: np.ndarray) -> dict[str, Any]:
    """Encode raw arrays (as the sampler produces them) without building a Structure first."""
    return {
        "numbers": [int(z) for z in numbers],
        "lattice": np.round(np.asarray(lattice, dtype=float), 8).tolist(),
        "frac_coords": np.round(np.asarray(frac_coords, dtype=float) % 1.0, 8).tolist(),
    }


def dict_to_structure(d: dict[str, Any]) -> Structure:
    """Inverse of :func:`structure_to_dict`."""
    return Structure(Lattice(d["lattice"]), d["numbers"], d["frac_coords"], coords_are_cartesian=False)


@dataclass
class Predictions:
    """In-memory form of a predictions file."""

    task: str
    dataset: str
    split: str
    num_samples: int
    meta: dict[str, Any] = field(default_factory=dict)
    crystals: list[dict[str, Any]] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write atomically; gzip unless the name ends in plain ``.json``."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "dataset": self.dataset,
            "split": self.split,
            "num_samples": self.num_samples,
            "meta": self.meta,
            "crystals": self.crystals,
            "generated": self.generated,
        }
        data = json.dumps(payload, separators=(",", ":")).encode()
        if path.suffix != ".json":
            data = gzip.compress(data, compresslevel=6, mtime=0)
        with atomic_write(path) as handle:
            handle.write(data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read a predictions file, with a clear error when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"predictions file not found: {path}")
        raw = path.read_bytes()
        try:
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            payload = json.loads(raw)
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a readable predictions file ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a diffcsp predictions file (missing format tag {FORMAT!r})")
        if payload.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported predictions version {payload.get('version')!r}")
        return cls(
            task=payload["task"],
            dataset=payload["dataset"],
            split=payload["split"],
            num_samples=int(payload["num_samples"]),
            meta=payload.get("meta", {}),
            crystals=payload.get("crystals", []),
            generated=payload.get("generated", []),
        )
