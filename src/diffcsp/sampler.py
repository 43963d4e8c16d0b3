"""Predictor–corrector sampling (docs/method.md §Sampling), batched over many crystals.

The sampler only needs a :class:`~diffcsp.model.DiffCSP` (network + processes). For CSP the atom
types are fixed; for generation they start as Gaussian noise and follow the lattice's DDPM.
``steps`` < T walks an evenly spaced subsequence of times with the respaced reverse steps of
``diffusion`` (identical to the paper's sampler when steps = T).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffcsp.cspnet import NUM_ELEMENTS
from diffcsp.diffusion import clamp_row_norms
from diffcsp.errors import CheckpointError
from diffcsp.fileio import atomic_write
from diffcsp.lattice import lattice_from_params, params_from_lattice
from diffcsp.model import DiffCSP
from diffcsp.precision import autocast
from diffcsp.variants import first_component, num_stages, stage_moves


@dataclass
class SampleResult:
    """Raw sampler output for B crystals (numpy, atoms concatenated)."""

    numbers: np.ndarray  # (N,)
    frac_coords: np.ndarray  # (N, 3)
    lattices: np.ndarray  # (B, 3, 3), CDVAE convention rebuilt from lengths/angles
    num_atoms: np.ndarray  # (B,)
    #: per crystal: lattice and coordinates are finite numbers (a damaged or diverging model can
    #: return NaN/inf, which must never reach spglib or pymatgen)
    finite: np.ndarray | None = None
    #: chunks taken from a journal (see :func:`sample`) and the sampling seconds they had cost
    resumed_chunks: int = 0
    earlier_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.finite is None:
            self.finite = np.ones(len(self.num_atoms), dtype=bool)

    def crystal(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numbers, lattice, frac_coords) of crystal ``i`` — the argument order of
        :func:`diffcsp.predictions.arrays_to_dict`."""
        if not hasattr(self, "_offsets"):
            self._offsets = np.concatenate([[0], np.cumsum(self.num_atoms)])
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return self.numbers[lo:hi], self.lattices[i], self.frac_coords[lo:hi]

    def structures(self) -> list:
        """pymatgen Structures, with ``None`` in place of crystals that are not finite."""
        from pymatgen.core import Lattice, Structure

        out = []
        for i in range(len(self.num_atoms)):
            numbers, lattice, frac = self.crystal(i)
            ok = bool(self.finite[i])
            out.append(Structure(Lattice(lattice), numbers.tolist(), frac, coords_are_cartesian=False) if ok else None)
        return out


METHODS = ("pc", "pc-ddim-lattice", "ddim", "heun")
SCHEDULES = ("uniform", "power")


@dataclass(frozen=True)
class SamplerPreset:
    """A named way to run :func:`sample`; ``step_lr_scale`` multiplies the dataset's corrector
    step size γ (fewer steps mean fewer Langevin corrections, so each one may be larger) and
    ``corrector_temperature`` scales the corrector's noise (see
    :meth:`diffcsp.diffusion.WrappedNormalVE.corrector_step`)."""

    steps: int | None
    method: str = "pc"
    schedule: str = "uniform"
    rho: float = 2.0  # sample()'s default, so schedule="power" without rho means the same everywhere
    step_lr_scale: float = 1.0
    corrector_temperature: float = 1.0

    def options(self) -> dict:
        """Keyword arguments of :func:`sample` (besides ``step_lr``)."""
        return {"steps": self.steps, "method": self.method, "schedule": self.schedule, "rho": self.rho,
                "corrector_temperature": self.corrector_temperature}


#: ``paper``: T = 1000 predictor–corrector steps (2000 network calls), the reference.
#: ``fast``: 50 predictor–corrector steps (100 calls) with a 10× corrector step (Perov-5: see
#: DATASET_SAMPLERS); measured in BENCHMARKS.md ("Few-step sampling") against ``paper`` on the
#: same model and crystals.
SAMPLERS = {"paper": SamplerPreset(None), "fast": SamplerPreset(50, step_lr_scale=10.0)}

#: Presets tuned for one dataset, chosen on the held-out validation crystals (never the test
#: split; BENCHMARKS.md, "Few-step sampling"). Perov-5's fast sampler: a 30× corrector step at
#: temperature 0.7 — at 100 calls the plain 10× Langevin step keeps the match rate of 1000
#: steps but not its precision (RMSE +15 %); the cooler, larger step keeps both.
DATASET_SAMPLERS = {("fast", "perov_5", "csp"): SamplerPreset(50, step_lr_scale=30.0, corrector_temperature=0.7)}


#: (dataset, task) pairs on which ``fast`` was measured to keep the quality of ``paper`` (match
#: rate within a point, RMSE not larger; BENCHMARKS.md): there ``auto`` means ``fast``.
FAST_MEASURED = {("perov_5", "csp"), ("carbon_24", "csp")}

#: What ``auto`` means where a setting other than ``paper``/``fast`` was measured to be better.
#: Carbon-24 generation: the paper's 1000 steps with the corrector's noise scaled by κ = 0.3,
#: better than κ = 0.5 and 1 in COV-P and W(density) on 1,000 crystals scored against the
#: held-out crystals, and on the test split (BENCHMARKS.md, "A cooler corrector raises COV-P").
AUTO_SAMPLERS = {("carbon_24", "gen"): SamplerPreset(None, corrector_temperature=0.3)}


def sampler_preset(name: str, dataset: str | None = None, task: str = "csp") -> SamplerPreset:
    """The preset ``name``, in its version for ``dataset`` and ``task`` where one was tuned.

    ``auto`` (the default of ``diffcsp predict`` and ``diffcsp generate``) is the setting of
    :data:`AUTO_SAMPLERS` where one was tuned, else ``fast`` where that was measured to hold the
    paper sampler's quality, and ``paper`` everywhere else."""
    if name == "auto":
        if (dataset, task) in AUTO_SAMPLERS:
            return AUTO_SAMPLERS[dataset, task]
        name = "fast" if (dataset, task) in FAST_MEASURED else "paper"
    if (name, dataset, task) in DATASET_SAMPLERS:
        return DATASET_SAMPLERS[name, dataset, task]
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; use one of auto, {', '.join(SAMPLERS)}") from None


def time_schedule(timesteps: int, steps: int | None, schedule: str = "uniform", rho: float = 2.0) -> list[int]:
    """Times visited from T down to 1.

    ``uniform``: evenly spaced (the paper's sampler when ``steps`` = T). ``power``: t_i =
    1 + (T − 1)·u_i^ρ for evenly spaced u from 1 to 0: ρ > 1 spends more of a small step budget
    at low noise, ρ < 1 at high noise (neither beat the uniform grid at 50 steps on Perov-5,
    see BENCHMARKS.md). Duplicate integer times are merged, so a power grid may hold a few
    fewer steps than asked for.
    """
    steps = timesteps if steps is None else steps
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown time schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if steps == timesteps:
        return list(range(timesteps, 0, -1))
    if schedule == "uniform":
        grid = np.linspace(timesteps, 1, steps)
    else:
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        grid = 1 + (timesteps - 1) * np.linspace(1, 0, steps) ** rho
    return sorted({int(round(x)) for x in grid}, reverse=True)


def network_calls(times: list[int], method: str = "pc", step_lr: float = 0.0, variant: str = "joint") -> int:
    """Network evaluations per crystal: one predictor call per step, one more per corrector
    step (γ > 0) and, for Heun, one more for every step that does not end at t = 0.

    Two-stage variants run a whole chain per component and the corrector moves only the
    coordinates, so it runs in the coordinate chain alone."""
    chains = [stage_moves(variant, None)] if num_stages(variant) == 1 else [stage_moves(variant, s) for s in (0, 1)]
    calls = 0
    for _, move_f in chains:
        calls += len(times) * (2 if step_lr > 0 and move_f else 1)
        if method == "heun":
            calls += len(times) - 1
    return calls


@torch.no_grad()
def sample(model: DiffCSP, num_atoms: torch.Tensor | list[int], atom_types: torch.Tensor | None = None,
           step_lr: float = 1e-5, steps: int | None = None, seed: int | None = 0, batch_size: int = 512,
           progress: bool = True, device: torch.device | str | None = None, clip_lattice: bool = True,
           method: str = "pc", schedule: str = "uniform", rho: float = 2.0, precision: str = "fp32",
           corrector_temperature: float = 1.0, predictor_temperature: float = 1.0,
           journal: str | Path | None = None) -> SampleResult:
    """Sample lattices and coordinates (and types, for generation) for crystals of given sizes.

    ``atom_types`` (atomic numbers, atoms concatenated in crystal order) is required for CSP.
    A generation model given ``atom_types`` does CSP too: its type channel is not sampled but
    held at the known types, noised to each step's level (the replacement method of
    inpainting), so the network sees types as in training and the lattice and coordinates are
    sampled for that composition. Crystals are processed in chunks of ``batch_size``; the
    random stream depends only on ``seed`` and the chunking, and is the same with or without
    ``atom_types``.

    ``method``: ``"pc"`` is the paper's predictor–corrector sampler (ancestral predictor);
    ``"pc-ddim-lattice"`` keeps it for the coordinates but moves the lattice by DDIM steps;
    ``"ddim"`` replaces the predictor by deterministic DDIM steps (lattice, types) and their
    variance-exploding analogue (coordinates); ``"heun"`` adds a second-order correction to
    those (one more network call per step). The Langevin corrector runs before every predictor
    step when ``step_lr`` > 0, whatever the method; ``corrector_temperature`` κ scales its noise
    (1: the paper's Langevin step; < 1: a cooler, sharper one). ``predictor_temperature`` τ
    scales the noise the ancestral predictor adds to the coordinates and, with ``pc``, to the
    lattice (``pc-ddim-lattice`` moves the lattice without noise; ``ddim``/``heun`` have no
    predictor noise and refuse τ ≠ 1). 1 is the paper's predictor; τ < 1 is the "noise scale" of
    protein diffusion samplers, which trades diversity for precision. The type channel keeps its
    noise, so the network sees types as in training. ``schedule``/``rho``: see
    :func:`time_schedule`. ``clip_lattice`` bounds the lengths of the lattice vectors of the
    predicted clean lattice x̂_0 by the model's ``lattice_bound`` (see
    :meth:`CosineDDPM.reverse_step`); ``False`` gives the paper's unguarded update.
    ``precision``: ``"fp32"``, ``"bf16"`` (the network under autocast) or ``"auto"`` (bf16
    where the hardware has native support, see :mod:`diffcsp.precision`).

    ``journal``: a file that makes a long run resumable. After each chunk the chunks done so far
    and the random generator's state are written to it (atomically); a run started again with the
    same model, crystals and settings skips those chunks and continues the random stream where
    it stopped, so its result is the uninterrupted run's. A journal written by other settings is
    an error, not silently mixed in. It is left in place on success: delete it once the result is
    stored (``diffcsp sample``/``generate`` do).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {', '.join(METHODS)}")
    for name, value in (("corrector_temperature", corrector_temperature), ("predictor_temperature", predictor_temperature)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if predictor_temperature != 1.0 and method not in ("pc", "pc-ddim-lattice"):
        raise ValueError(f"predictor_temperature scales the predictor's noise; method {method!r} adds none")
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
    times = time_schedule(model.config.timesteps, steps, schedule, rho)
    chunks = [(lo, min(lo + batch_size, len(num_atoms))) for lo in range(0, len(num_atoms), batch_size)]
    bound = (model.config.lattice_bound or DEFAULT_LATTICE_BOUND) if clip_lattice else None
    out_types, out_frac, out_lat = [], [], []
    earlier_seconds, resumed, start = 0.0, 0, time.perf_counter()
    if journal is not None:
        journal = Path(journal)
        settings = _journal_settings(model, num_atoms, atom_types, seed=seed, times=times, step_lr=step_lr,
                                     batch_size=batch_size, method=method, precision=precision, bound=bound,
                                     corrector_temperature=corrector_temperature,
                                     **({} if predictor_temperature == 1.0 else {"predictor_temperature": predictor_temperature}))
        state = _read_journal(journal, settings)
        if state is not None:
            out_types, out_frac, out_lat = state["types"], state["frac"], state["lattices"]
            gen.set_state(state["rng"])
            earlier_seconds, resumed = float(state["seconds"]), len(out_lat)
    steps_per_chunk = len(times) * num_stages(model.config.variant)
    bar = tqdm(total=len(chunks) * steps_per_chunk, initial=resumed * steps_per_chunk, desc="sampling", unit="step",
               disable=not progress)
    for lo, hi in chunks[resumed:]:
        n = num_atoms[lo:hi].to(device)
        types = None if atom_types is None else torch.as_tensor(atom_types)[offsets[lo] : offsets[hi]].to(device)
        t, f, lat = _sample_chunk(model, n, types, step_lr, times, gen, bar, bound, method, precision=precision,
                                  temperature=corrector_temperature, predictor_temperature=predictor_temperature)
        out_types.append(t.cpu())
        out_frac.append(f.cpu())
        out_lat.append(lat.cpu())
        if journal is not None:
            with atomic_write(journal) as handle:
                torch.save({"settings": settings, "types": out_types, "frac": out_frac, "lattices": out_lat,
                            "rng": gen.get_state(), "seconds": earlier_seconds + time.perf_counter() - start}, handle)
    bar.close()
    raw = torch.cat(out_lat).double().numpy()
    frac = torch.cat(out_frac).double().numpy()
    atom_ok = np.isfinite(frac).all(axis=1)
    finite = np.isfinite(raw).all(axis=(1, 2)) & np.array([atom_ok[offsets[i] : offsets[i + 1]].all() for i in range(len(num_atoms))])
    with np.errstate(invalid="ignore"):
        lengths, angles = params_from_lattice(raw)
        lattices = lattice_from_params(lengths, angles)
    finite &= np.isfinite(lattices).all(axis=(1, 2)) & (lengths > 0).all(axis=1)
    if not finite.all():
        warnings.warn(f"{int((~finite).sum())} of {len(finite)} sampled crystals are not finite (NaN/inf lattice or "
                      "coordinates); they are reported as failed, not converted to structures", stacklevel=2)
    return SampleResult(numbers=torch.cat(out_types).numpy(), frac_coords=frac % 1.0, lattices=lattices,
                        num_atoms=num_atoms.numpy(), finite=finite, resumed_chunks=resumed, earlier_seconds=earlier_seconds)


def _digest(tensors) -> str:
    """SHA-256 of tensors' bytes: identifies the weights or crystals a journal was written for."""
    h = hashlib.sha256()
    for x in tensors:
        x = torch.as_tensor(x).detach().cpu().contiguous().reshape(-1)
        h.update(str(x.dtype).encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def _journal_settings(model: DiffCSP, num_atoms: torch.Tensor, atom_types, **settings) -> dict:
    """Everything that decides a sampling run's output, as a comparable dict."""
    state = model.state_dict()
    return {**{k: (list(v) if isinstance(v, list) else v) for k, v in settings.items()},
            "model": _digest(state[k] for k in sorted(state)), "num_atoms": _digest([num_atoms]),
            "atom_types": None if atom_types is None else _digest([atom_types])}


def _read_journal(path: Path, settings: dict) -> dict | None:
    """The state a journal holds (None if there is none), checked against this run's settings."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["settings"]
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"sampling journal {path} is damaged ({exc.__class__.__name__}); delete it to start over") from exc
    differ = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
    if differ:
        raise CheckpointError(f"sampling journal {path} belongs to another run (different {', '.join(differ)}); "
                              "rerun with that run's model and settings, or delete it to start over")
    return state


#: x̂_0 bound (Å per lattice vector) for models that did not record one
DEFAULT_LATTICE_BOUND = 100.0


def _sample_chunk(model: DiffCSP, num_atoms: torch.Tensor, types: torch.Tensor | None, step_lr: float,
                  times: list[int], gen: torch.Generator, bar=None, lattice_bound: float | None = None, method: str = "pc",
                  lattice_init: torch.Tensor | None = None, precision: str = "fp32", frac_init: torch.Tensor | None = None,
                  stage: int | None = None, temperature: float = 1.0,
                  predictor_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one chunk. ``lattice_init``/``frac_init`` replace the drawn L_T/F_T (the random
    stream is the same either way), so tests can start from a rotated lattice.

    Two-stage variants (:mod:`diffcsp.variants`) run the whole reverse chain of the first
    component (``stage`` 0; the other one is hidden from the network and does not move), then
    the whole chain of the second from fresh noise with the first fixed at its result
    (``stage`` 1). ``stage`` runs one of them alone (tests); None runs what the model needs."""
    first = first_component(model.config.variant)
    if first is not None and stage is None:
        kwargs = dict(bar=bar, lattice_bound=lattice_bound, method=method, precision=precision, temperature=temperature,
                      predictor_temperature=predictor_temperature)
        _, frac0, lattice0 = _sample_chunk(model, num_atoms, types, step_lr, times, gen, lattice_init=lattice_init,
                                           frac_init=frac_init, stage=0, **kwargs)
        fixed = {"lattice_init": lattice0} if first == "lattice" else {"frac_init": frac0}
        return _sample_chunk(model, num_atoms, types, step_lr, times, gen, stage=1, **fixed, **kwargs)
    move_l, move_f = stage_moves(model.config.variant, stage)
    device = num_atoms.device
    B, N = len(num_atoms), int(num_atoms.sum())
    lproc, fproc = model.lattice_process, model.coord_process
    lat_clip = None if lattice_bound is None else clamp_row_norms(lattice_bound)
    # one-hot types live in [0, 1]: the same x̂_0 guard as the lattice, entry-wise with bound 1
    type_clip = None if lattice_bound is None else 1.0

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    lattice = randn(B, 3, 3)
    if lattice_init is not None:
        lattice = lattice_init.to(device=device, dtype=lattice.dtype)
    frac = torch.rand(N, 3, generator=gen, device=device)
    if frac_init is not None:
        frac = frac_init.to(device=device, dtype=frac.dtype)
    types_x = randn(N, NUM_ELEMENTS) if model.is_gen else types
    held = None
    if model.is_gen and types is not None:
        # generation model with known types (CSP): one fixed draw ε noises the known one-hot to
        # each level, √ᾱ_t·onehot + √(1−ᾱ_t)·ε, a sample of q(a_t | a_0) as in training
        onehot, eps_held = onehot_types(types).to(device), types_x

        def held(level: int) -> torch.Tensor:
            return lproc.add_noise(onehot, torch.tensor(level, device=device), eps_held)
    net = model.net
    # two-stage networks take the stage as a sixth argument; others are called exactly as always
    stage_arg = () if stage is None else (torch.full((B,), stage, device=device, dtype=torch.long),)

    def call(t: int, types_x, frac, lattice):
        with autocast(precision, device):
            eps_l, eps_f, eps_a = net(types_x, frac, lattice, num_atoms, torch.full((B,), t, device=device, dtype=torch.long),
                                      *stage_arg)
        eps_a = None if eps_a is None else eps_a.float()
        return eps_l.float(), eps_f.float() * fproc.lambdas[t].sqrt(), eps_a  # ŝ_F = ε̂_F·√λ_t

    for i, t in enumerate(times):
        s = times[i + 1] if i + 1 < len(times) else 0
        last = s == 0  # z = 0 in the last step, for corrector and predictor alike
        if held is not None:
            types_x = held(t)
        # 1. corrector: Langevin on F at noise level σ_t (two-stage: only while F is generated)
        if step_lr > 0 and move_f:
            _, score_f, _ = call(t, types_x, frac, lattice)
            z = torch.zeros(N, 3, device=device) if last else randn(N, 3)
            frac = fproc.corrector_step(frac, score_f, t, step_lr, z, temperature)
        # 2. predictor: every component from t to s (two-stage: only the one being generated)
        eps_l, score_f, eps_a = call(t, types_x, frac, lattice)
        if method in ("pc", "pc-ddim-lattice"):
            if move_l and method == "pc-ddim-lattice":
                lattice = lproc.ddim_step(lattice, eps_l, t, s, lat_clip)
            elif move_l:
                lattice = lproc.reverse_step(lattice, eps_l, t, s, None if last else predictor_temperature * randn(B, 3, 3),
                                             clip_x0=lat_clip)
            if move_f:
                frac = fproc.predictor_step(frac, score_f, t, s, None if last else predictor_temperature * randn(N, 3))
            if model.is_gen:  # with held types this step is replaced next loop, but keeps the random stream
                types_x = lproc.reverse_step(types_x, eps_a, t, s, None if last else randn(N, NUM_ELEMENTS), clip_x0=type_clip)
        else:
            lat_s = lproc.ddim_step(lattice, eps_l, t, s, lat_clip) if move_l else lattice
            frac_s = fproc.ddim_step(frac, score_f, t, s) if move_f else frac
            types_s = lproc.ddim_step(types_x, eps_a, t, s, type_clip) if model.is_gen else types_x
            if held is not None:  # Heun's second call sees the known types at level s
                types_s = held(s)
            if method == "heun" and not last:
                # Heun: average the noise estimates at both ends (in the σ variable of each
                # process, e = ε̂ for the DDPM parts and e = σ·ŝ for the coordinates).
                eps_l2, score_f2, eps_a2 = call(s, types_s, frac_s, lat_s)
                sig_t, sig_s = fproc.sigmas[t], fproc.sigmas[s]
                e_f = 0.5 * (sig_t * score_f + sig_s * score_f2)
                lat_s = lproc.ddim_step(lattice, 0.5 * (eps_l + eps_l2), t, s, lat_clip) if move_l else lattice
                frac_s = fproc.ddim_step(frac, e_f / sig_t, t, s) if move_f else frac
                if model.is_gen:
                    types_s = lproc.ddim_step(types_x, 0.5 * (eps_a + eps_a2), t, s, type_clip)
            lattice, frac, types_x = lat_s, frac_s, types_s
        if bar is not None:
            bar.update(1)
    out_types = types_x.argmax(-1) + 1 if types is None else types
    return out_types, frac, lattice


def onehot_types(numbers: torch.Tensor) -> torch.Tensor:
    """One-hot encoding of atomic numbers 1..100 (used by tests of the generation model)."""
    return F.one_hot(numbers - 1, NUM_ELEMENTS).float()
