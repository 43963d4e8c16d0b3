"""Batches of variable-size crystals as flat tensors (no padding, no graph library).

Atoms of all crystals in a batch are concatenated; ``batch[i]`` names the crystal of atom ``i``
and ``num_atoms`` the size of each crystal. This is the layout CSPNet and the sampler use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffcsp.data import CrystalTable


@dataclass
class CrystalBatch:
    """A batch of B crystals with N = sum(num_atoms) atoms in total."""

    atom_types: torch.Tensor  # (N,) long, atomic numbers 1..100
    frac_coords: torch.Tensor  # (N, 3) float in [0, 1)
    lattice: torch.Tensor  # (B, 3, 3) float, rows are lattice vectors
    num_atoms: torch.Tensor  # (B,) long
    batch: torch.Tensor  # (N,) long, crystal index of each atom
    index: torch.Tensor  # (B,) long, row of each crystal in its table

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    def to(self, device: torch.device | str) -> CrystalBatch:
        return CrystalBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def batch_from_arrays(numbers: np.ndarray, frac: np.ndarray, lattices: np.ndarray, num_atoms: np.ndarray,
                      index: np.ndarray | None = None, dtype: torch.dtype = torch.float32) -> CrystalBatch:
    """Build a batch from flat numpy arrays (atoms concatenated in crystal order)."""
    num_atoms_t = torch.as_tensor(np.asarray(num_atoms), dtype=torch.long)
    return CrystalBatch(
        atom_types=torch.as_tensor(np.asarray(numbers), dtype=torch.long),
        frac_coords=torch.as_tensor(np.asarray(frac), dtype=dtype),
        lattice=torch.as_tensor(np.asarray(lattices), dtype=dtype),
        num_atoms=num_atoms_t,
        batch=torch.repeat_interleave(torch.arange(len(num_atoms_t)), num_atoms_t),
        index=torch.as_tensor(np.arange(len(num_atoms_t)) if index is None else np.asarray(index), dtype=torch.long),
    )


def collate_table(table: CrystalTable, indices: list[int] | np.ndarray) -> CrystalBatch:
    """Gather crystals ``indices`` of a table into one batch."""
    indices = np.asarray(indices, dtype=np.int64)
    atom_idx = table.atom_index(indices)
    return batch_from_arrays(table.numbers[atom_idx], table.frac_coords[atom_idx], table.lattices[indices],
                             table.num_atoms[indices], index=indices)


class TableDataset(Dataset):
    """Map-style dataset over a table; items are row indices, the collate gathers the arrays.

    Returning indices keeps workers and pickling cheap; the real work happens once per batch.
    """

    def __init__(self, table: CrystalTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> CrystalBatch:
        return collate_table(self.table, indices)


def make_loader(table: CrystalTable, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (and the epoch, via the generator)."""
    dataset = TableDataset(table)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate,
                      generator=generator, drop_last=drop_last, num_workers=0)
