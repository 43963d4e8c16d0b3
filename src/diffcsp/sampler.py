"""Predictor–corrector sampling (SPEC §6), batched over many crystals.

The sampler only needs a :class:`~diffcsp.model.DiffCSP` (network + processes). For CSP the atom
types are fixed; for generation they start as Gaussian noise and follow the lattice's DDPM.
``steps`` < T walks an evenly spaced subsequence of times with the respaced reverse steps of
``diffusion`` (identical to the paper's sampler when steps = T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffcsp.cspnet import NUM_ELEMENTS
from diffcsp.lattice import lattice_from_params, params_from_lattice
from diffcsp.model import DiffCSP


@dataclass
class SampleResult:
    """Raw sampler output for B crystals (numpy, atoms concatenated)."""

    numbers: np.ndarray  # (N,)
    frac_coords: np.ndarray  # (N, 3)
    lattices: np.ndarray  # (B, 3, 3), CDVAE convention rebuilt from lengths/angles
    num_atoms: np.ndarray  # (B,)

    def crystal(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers, lattice, frac_coords) of crystal ``i`` — the argument order of
        :func:`diffcsp.predictions.arrays_to_dict`."""
        if not hasattr(self, "_offsets"):
            self._offsets = np.concatenate([[0], np.cumsum(self.num_atoms)])
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return self.numbers[lo:hi], self.lattices[i], self.frac_coords[lo:hi]

    def structures(self) -> list:
        from pymatgen.core import Lattice, Structure

        out = []
        for i in range(len(self.num_atoms)):
            numbers, lattice, frac = self.crystal(i)
            out.append(Structure(Lattice(lattice), numbers.tolist(), frac, coords_are_cartesian=False))
        return out


def time_schedule(timesteps: int, steps: int | None) -> list[int]:
    """Times visited from T down to 1 (evenly spaced when ``steps`` < T)."""
    steps = timesteps if steps is None else steps
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    if steps == timesteps:
        return list(range(timesteps, 0, -1))
    return sorted({int(round(x)) for x in np.linspace(timesteps, 1, steps)}, reverse=True)


@torch.no_grad()
def sample(model: DiffCSP, num_atoms: torch.Tensor | list[int], atom_types: torch.Tensor | None = None,
           step_lr: float = 1e-5, steps: int | None = None, seed: int | None = 0, batch_size: int = 512,
           progress: bool = True, device: torch.device | str | None = None, clip_lattice: bool = True) -> SampleResult:
    """Sample lattices and coordinates (and types, for generation) for crystals of given sizes.

    ``atom_types`` (atomic numbers, atoms concatenated in crystal order) is required for CSP
    and ignored for generation. Crystals are processed in chunks of ``batch_size``; the random
    stream depends only on ``seed`` and the chunking. ``clip_lattice`` bounds the predicted clean
    lattice x̂_0 by the model's ``lattice_bound`` (see :meth:`CosineDDPM.reverse_step`);
    ``False`` gives the paper's unguarded update.
    """
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
    if not model.is_gen and atom_types is None:
        raise ValueError("CSP sampling needs atom_types")
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(num_atoms, 0)])
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    times = time_schedule(model.config.timesteps, steps)
    chunks = [(lo, min(lo + batch_size, len(num_atoms))) for lo in range(0, len(num_atoms), batch_size)]
    bar = tqdm(total=len(chunks) * len(times), desc="sampling", unit="step", disable=not progress)
    out_types, out_frac, out_lat = [], [], []
    for lo, hi in chunks:
        n = num_atoms[lo:hi].to(device)
        types = None if atom_types is None or model.is_gen else torch.as_tensor(atom_types)[offsets[lo] : offsets[hi]].to(device)
        bound = (model.config.lattice_bound or 100.0) if clip_lattice else None
        t, f, lat = _sample_chunk(model, n, types, step_lr, times, gen, bar, bound)
        out_types.append(t.cpu())
        out_frac.append(f.cpu())
        out_lat.append(lat.cpu())
    bar.close()
    lattices = torch.cat(out_lat).double().numpy()
    lengths, angles = params_from_lattice(lattices)
    return SampleResult(
        numbers=torch.cat(out_types).numpy(),
        frac_coords=torch.cat(out_frac).double().numpy() % 1.0,
        lattices=lattice_from_params(lengths, angles),
        num_atoms=num_atoms.numpy(),
    )


def _sample_chunk(model: DiffCSP, num_atoms: torch.Tensor, types: torch.Tensor | None, step_lr: float,
                  times: list[int], gen: torch.Generator, bar, lattice_bound: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = num_atoms.device
    B, N = len(num_atoms), int(num_atoms.sum())
    lproc, fproc = model.lattice_process, model.coord_process

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    lattice = randn(B, 3, 3)
    frac = torch.rand(N, 3, generator=gen, device=device)
    types_x = randn(N, NUM_ELEMENTS) if model.is_gen else types
    net = model.net

    for i, t in enumerate(times):
        s = times[i + 1] if i + 1 < len(times) else 0
        t_batch = torch.full((B,), t, device=device, dtype=torch.long)
        sqrt_lam = fproc.lambdas[t].sqrt()
        last = s == 0  # SPEC §6: z = 0 in the last step, for corrector and predictor alike
        # 1. corrector: Langevin on F at noise level σ_t
        if step_lr > 0:
            _, eps_f, _ = net(types_x, frac, lattice, num_atoms, t_batch)
            z = torch.zeros(N, 3, device=device) if last else randn(N, 3)
            frac = fproc.corrector_step(frac, eps_f * sqrt_lam, t, step_lr, z)
        # 2. predictor: reverse step of every component from t to s
        eps_l, eps_f, eps_a = net(types_x, frac, lattice, num_atoms, t_batch)
        lattice = lproc.reverse_step(lattice, eps_l, t, s, None if last else randn(B, 3, 3), clip_x0=lattice_bound)
        frac = fproc.predictor_step(frac, eps_f * sqrt_lam, t, s, None if last else randn(N, 3))
        if model.is_gen:
            # one-hot types live in [0, 1]: the same x̂_0 guard as the lattice, with bound 1
            types_x = lproc.reverse_step(types_x, eps_a, t, s, None if last else randn(N, NUM_ELEMENTS),
                                         clip_x0=None if lattice_bound is None else 1.0)
        bar.update(1)
    if model.is_gen:
        out_types = types_x.argmax(-1) + 1
    else:
        out_types = types
    return out_types, frac, lattice


def onehot_types(numbers: torch.Tensor) -> torch.Tensor:
    """One-hot encoding of atomic numbers 1..100 (used by tests of the generation model)."""
    return F.one_hot(numbers - 1, NUM_ELEMENTS).float()
