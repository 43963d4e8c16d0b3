"""The model's own score of a finished crystal: its denoising loss at fixed noise levels.

A DiffCSP model is trained to recover the noise that corrupts real crystals. Given a finished
sample, the same loss (lattice part plus coordinate part, weighted as in training) measured at a
few fixed noise levels says how typical the model finds it: a sharp, training-like arrangement
is recovered well, a smeared one is not. It needs no potential and costs a few network calls per
crystal (levels × draws), against 100–2000 for sampling it.

The noise of level t, draw d for a crystal depends only on (seed, t, d) and its atom count, so
candidates of one composition meet the same noise (common random numbers): their scores differ
by what the crystals differ in, not by the luck of the draws. That is what ranking k candidates
of one composition needs (measured in BENCHMARKS.md, "Choosing one of k samples by the model's
own loss").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffcsp.batching import batch_from_arrays
from diffcsp.model import DiffCSP

#: noise levels (of T = 1000) at which samples are scored: from nearly clean to mostly noise
DEFAULT_LEVELS = (5, 20, 50, 100, 200, 400, 700)


def _arrays(crystal: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, frac_coords, lattice) of a pymatgen Structure or a predictions-file dict."""
    if isinstance(crystal, dict):
        return (np.asarray(crystal["numbers"]), np.asarray(crystal["frac_coords"], dtype=float),
                np.asarray(crystal["lattice"], dtype=float))
    return (np.array([site.specie.Z for site in crystal]), crystal.frac_coords, crystal.lattice.matrix)


@torch.no_grad()
def denoising_losses(model: DiffCSP, crystals: Sequence[Any], levels: Sequence[int] = DEFAULT_LEVELS, draws: int = 4,
                     seed: int = 0, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Lattice and coordinate parts of the training loss of each crystal at each level: two (B, L) arrays.

    ``crystals``: pymatgen Structures or predictions-file dicts, scored as if they were clean
    data. Each part is averaged over ``draws`` noise draws and, for coordinates, over the atoms.
    """
    if model.is_gen:
        raise ValueError("denoising_losses scores CSP models (atom types given); a generation model also diffuses types")
    levels = [int(t) for t in levels]
    if not all(1 <= t <= model.config.timesteps for t in levels):
        raise ValueError(f"levels must lie in 1..{model.config.timesteps}, got {levels}")
    model.eval()
    device = next(model.parameters()).device
    parts = [_arrays(c) for c in crystals]
    lattice_loss, coord_loss = np.zeros((len(parts), len(levels))), np.zeros((len(parts), len(levels)))
    lproc, fproc = model.lattice_process, model.coord_process
    for lo in range(0, len(parts), batch_size):
        chunk = parts[lo : lo + batch_size]
        batch = batch_from_arrays(np.concatenate([p[0] for p in chunk]), np.concatenate([p[1] for p in chunk]),
                                  np.stack([p[2] for p in chunk]), np.array([len(p[0]) for p in chunk])).to(device)
        B, n = batch.num_graphs, batch.num_atoms
        for j, t in enumerate(levels):
            tt = torch.full((B,), t, dtype=torch.long, device=device)
            sigma, lam = fproc.sigmas[t], fproc.lambdas[t]
            for d in range(draws):
                eps_l, eps_f = _noise(chunk, seed, t, d, device)
                lattice_t = lproc.add_noise(batch.lattice, tt, eps_l)
                frac_t = fproc.add_noise(batch.frac_coords, sigma, eps_f)
                pred_l, pred_f, _ = model.net(batch.atom_types, frac_t, lattice_t, n, tt)
                lattice_loss[lo : lo + B, j] += ((pred_l - eps_l) ** 2).mean(dim=(1, 2)).cpu().numpy() / draws
                per_atom = ((pred_f - fproc.target(sigma, eps_f, lam)) ** 2).mean(-1)
                per_crystal = torch.zeros(B, device=device).index_add_(0, batch.batch, per_atom) / n
                coord_loss[lo : lo + B, j] += per_crystal.cpu().numpy() / draws
    return lattice_loss, coord_loss


def _noise(chunk: list, seed: int, t: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crystal, noise that depends only on (seed, t, d) and its atom count."""
    gen = torch.Generator()
    eps_l, eps_f = [], []
    for numbers, _, _ in chunk:
        gen.manual_seed(seed * 1_000_003 + t * 1_009 + d)
        eps_l.append(torch.randn(3, 3, generator=gen))
        eps_f.append(torch.randn(len(numbers), 3, generator=gen))
    return torch.stack(eps_l).to(device), torch.cat(eps_f).to(device)


def model_scores(model: DiffCSP, crystals: Sequence[Any], **kw: Any) -> np.ndarray:
    """One number per crystal, lower = more typical to the model: the training loss's weighting
    of the two parts, averaged over the levels of :func:`denoising_losses` (keywords go there)."""
    lattice, coord = denoising_losses(model, crystals, **kw)
    return (model.config.cost_lattice * lattice + model.config.cost_coord * coord).mean(-1)
