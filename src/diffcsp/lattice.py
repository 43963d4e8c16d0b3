"""Lattice conventions (docs/method.md): lengths/angles ↔ 3×3 matrices, CDVAE's "c along z" frame.

Rows of a lattice matrix are the lattice vectors a, b, c; Cartesian positions are F·L.
The numpy versions serve data preparation, the torch versions serve the sampler's output.
"""

from __future__ import annotations

import numpy as np
import torch


def lattice_from_params(lengths: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rebuild L from (a, b, c) and (α, β, γ) in degrees, CDVAE convention (c along z).

    Works on a single (3,) pair or batches (..., 3). Clipping the cosine keeps nearly
    degenerate cells from producing NaN.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    alpha, beta, gamma = np.moveaxis(np.radians(np.asarray(angles_deg, dtype=np.float64)), -1, 0)
    cos_a, cos_b, cos_g = np.cos(alpha), np.cos(beta), np.cos(gamma)
    sin_a, sin_b = np.sin(alpha), np.sin(beta)
    val = np.clip((cos_a * cos_b - cos_g) / (sin_a * sin_b), -1.0, 1.0)
    gamma_star = np.arccos(val)
    a_len, b_len, c_len = np.moveaxis(lengths, -1, 0)
    zeros = np.zeros_like(a_len)
    vec_a = np.stack([a_len * sin_b, zeros, a_len * cos_b], axis=-1)
    vec_b = np.stack([-b_len * sin_a * np.cos(gamma_star), b_len * sin_a * np.sin(gamma_star), b_len * cos_a], axis=-1)
    vec_c = np.stack([zeros, zeros, c_len], axis=-1)
    return np.stack([vec_a, vec_b, vec_c], axis=-2)


def params_from_lattice(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and angles (degrees) of lattice matrices (..., 3, 3)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    lengths = np.linalg.norm(matrix, axis=-1)
    a, b, c = matrix[..., 0, :], matrix[..., 1, :], matrix[..., 2, :]
    la, lb, lc = lengths[..., 0], lengths[..., 1], lengths[..., 2]

    def angle(u: np.ndarray, v: np.ndarray, nu: np.ndarray, nv: np.ndarray) -> np.ndarray:
        return np.degrees(np.arccos(np.clip((u * v).sum(-1) / (nu * nv), -1.0, 1.0)))

    angles = np.stack([angle(b, c, lb, lc), angle(a, c, la, lc), angle(a, b, la, lb)], axis=-1)
    return lengths, angles


def lattice_volume(matrix: torch.Tensor) -> torch.Tensor:
    """|det L| for a batch of lattices (B, 3, 3)."""
    return torch.linalg.det(matrix).abs()
