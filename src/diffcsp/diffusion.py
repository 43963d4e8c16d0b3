"""The two corruption processes of DiffCSP and their reverse steps (docs/method.md).

* :class:`CosineDDPM` – variance-preserving DDPM with the cosine schedule. Used for the lattice
  and, in ab initio generation, for one-hot atom types.
* :class:`WrappedNormalVE` – variance-exploding wrapped normal on the torus [0, 1)^3 for
  fractional coordinates, with the score normaliser λ_t.

Schedules are tensors indexed by the integer time t = 0..T (index 0 is the clean state), stored
as buffers so they travel with the model's weights. Reverse steps take a pair (t, s) with s < t
so that a sampler may skip steps (respaced DDPM, Nichol & Dhariwal 2021); with s = t − 1 they
are exactly the paper's formulas (docs/method.md §Sampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

#: a bound on the predicted clean sample x̂_0: an entry-wise bound, a function, or none
X0Clip = float | Callable[[torch.Tensor], torch.Tensor] | None


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """β_1..β_T of the cosine schedule, clipped to [1e-4, 0.9999] (docs/method.md §Noise processes)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alpha_bar = f / f[0]
    return torch.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 1e-4, 0.9999)


class CosineDDPM(nn.Module):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (docs/method.md §Noise processes), with ᾱ_0 = 1 at index 0."""

    def __init__(self, timesteps: int = 1000, s: float = 0.008):
        super().__init__()
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), cosine_betas(timesteps, s)])
        alpha_bars = torch.cumprod(1 - betas, dim=0)
        self.timesteps = timesteps
        self.register_buffer("betas", betas.float())
        self.register_buffer("alpha_bars", alpha_bars.float())

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Noise ``x0`` to time ``t`` (broadcast over trailing dims of ``x0``)."""
        ab = self.alpha_bars[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_x0(self, x_t: torch.Tensor, eps_hat: torch.Tensor, t: int, clip_x0: X0Clip = None) -> torch.Tensor:
        """x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, optionally bounded (see :meth:`reverse_step`)."""
        ab_t = self.alpha_bars[t]
        x0 = (x_t - (1 - ab_t).sqrt() * eps_hat) / ab_t.sqrt()
        return _apply_clip(x0, clip_x0)

    def reverse_step(self, x_t: torch.Tensor, eps_hat: torch.Tensor, t: int, s: int, z: torch.Tensor | None,
                     clip_x0: X0Clip = None) -> torch.Tensor:
        """One ancestral step from t to s < t given the predicted noise.

        With ᾱ_{t|s} = ᾱ_t/ᾱ_s and β = 1 − ᾱ_{t|s}: mean = (x_t − β/√(1−ᾱ_t)·ε̂)/√ᾱ_{t|s},
        variance = β(1−ᾱ_s)/(1−ᾱ_t). For s = t−1 this is the paper's predictor.

        ``clip_x0``: near t = T (β_T = 0.9999) the formula multiplies the error of ε̂ by
        β/√(α(1−ᾱ)) ≈ 100, so an imperfect network can throw the lattice to hundreds of Å in the
        first step. With a bound, the same mean is computed in its equivalent x̂_0 form,
        mean = √ᾱ_s β/(1−ᾱ_t)·x̂_0 + √ᾱ_{t|s}(1−ᾱ_s)/(1−ᾱ_t)·x_t, with x̂_0 bounded (the
        "clipped x̂_0" of Ho et al. 2020): a float clamps every entry to [−b, b], a callable
        such as :func:`clamp_row_norms` is applied to x̂_0. Where x̂_0 is within the bound the
        result equals the unclipped formula.
        """
        ab_t, ab_s = self.alpha_bars[t], self.alpha_bars[s]
        alpha = ab_t / ab_s
        beta = 1 - alpha
        if clip_x0 is None:
            mean = (x_t - beta / (1 - ab_t).sqrt() * eps_hat) / alpha.sqrt()
        else:
            x0 = self.predict_x0(x_t, eps_hat, t, clip_x0)
            mean = (ab_s.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_s) * x_t) / (1 - ab_t)
        if z is None or s == 0:
            return mean
        sigma = (beta * (1 - ab_s) / (1 - ab_t)).sqrt()
        return mean + sigma * z

    def ddim_step(self, x_t: torch.Tensor, eps_hat: torch.Tensor, t: int, s: int, clip_x0: X0Clip = None) -> torch.Tensor:
        """Deterministic DDIM step (Song et al. 2021, η = 0): x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s) ε̂.

        It is the exact solution over [s, t] of the probability-flow ODE when ε̂ is constant in
        the variable σ = √((1−ᾱ)/ᾱ), which is why it tolerates large steps. With a bound on
        x̂_0, ε̂ is recomputed from the bounded x̂_0 so that both terms stay consistent.
        """
        ab_t, ab_s = self.alpha_bars[t], self.alpha_bars[s]
        x0 = self.predict_x0(x_t, eps_hat, t, clip_x0)
        if clip_x0 is not None:
            eps_hat = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
        return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps_hat


def _apply_clip(x0: torch.Tensor, clip_x0) -> torch.Tensor:
    if clip_x0 is None:
        return x0
    if callable(clip_x0):
        return clip_x0(x0)
    return x0.clamp(-clip_x0, clip_x0)


def clamp_row_norms(bound: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """x̂_0 bound for lattices: shorten any lattice vector (row) longer than ``bound`` Å.

    Unlike an entry-wise clamp this commutes with rotations of the Cartesian frame
    (L → L·Qᵀ keeps every row's length), so the sampled distribution stays O(3)-equivariant.
    """

    def clip(x0: torch.Tensor) -> torch.Tensor:
        norms = x0.norm(dim=-1, keepdim=True)
        return x0 * (bound / norms.clamp_min(bound))

    return clip


def wrapped_normal_direction(x: torch.Tensor, sigma: torch.Tensor, n_images: int = 10) -> torch.Tensor:
    """g(x, σ) = −∂/∂x log N_w(x; 0, σ²), the wrapped normal's negative score (docs/method.md §Noise processes).

    Computed as a softmax-weighted mean over periodic images k = −n..n, which is the same
    quantity as the plain ratio of sums but cannot overflow/underflow for small σ.
    """
    k = torch.arange(-n_images, n_images + 1, dtype=x.dtype, device=x.device)
    shifted = x.unsqueeze(-1) + k  # (..., 2n+1)
    sigma = sigma.unsqueeze(-1)
    weights = torch.softmax(-(shifted**2) / (2 * sigma**2), dim=-1)
    return (weights * shifted).sum(-1) / sigma.squeeze(-1) ** 2


def wrapped_normal_log_density(x: torch.Tensor, sigma: torch.Tensor, n_images: int = 10) -> torch.Tensor:
    """log N_w(x; 0, σ²) on the unit circle (used by tests to check the direction)."""
    k = torch.arange(-n_images, n_images + 1, dtype=x.dtype, device=x.device)
    shifted = x.unsqueeze(-1) + k
    sigma = sigma.unsqueeze(-1)
    return torch.logsumexp(-(shifted**2) / (2 * sigma**2), dim=-1) - torch.log(sigma.squeeze(-1) * math.sqrt(2 * math.pi))


def score_normaliser(sigmas: torch.Tensor, num_samples: int = 10_000, seed: int = 0) -> torch.Tensor:
    """λ(σ) = E_{x~N_w(0,σ²)}[g(x,σ)²] by Monte Carlo (fixed seed so it is reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(sigmas, dtype=torch.float64)
    for start in range(0, len(sigmas), 100):  # chunks keep memory at ~100·10⁴·21 doubles
        sig = sigmas[start : start + 100].to(torch.float64)
        x = (torch.randn(num_samples, len(sig), generator=gen, dtype=torch.float64) * sig) % 1.0
        out[start : start + 100] = (wrapped_normal_direction(x, sig.expand_as(x)) ** 2).mean(0)
    return out


class WrappedNormalVE(nn.Module):
    """F_t = (F_0 + σ_t ε) mod 1 with geometric σ_t from σ_1 to σ_T, σ_0 = 0 (docs/method.md §Noise processes)."""

    def __init__(self, timesteps: int = 1000, sigma_begin: float = 0.005, sigma_end: float = 0.5, mc_samples: int = 10_000):
        super().__init__()
        sigmas = torch.exp(torch.linspace(math.log(sigma_begin), math.log(sigma_end), timesteps, dtype=torch.float64))
        # mc_samples=0: placeholder ones, for models whose stored λ_t is loaded right after.
        lambdas = score_normaliser(sigmas, num_samples=mc_samples) if mc_samples else torch.ones_like(sigmas)
        self.timesteps = timesteps
        self.register_buffer("sigmas", torch.cat([torch.zeros(1, dtype=torch.float64), sigmas]).float())
        self.register_buffer("lambdas", torch.cat([torch.ones(1, dtype=torch.float64), lambdas]).float())

    def add_noise(self, f0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Noise fractional coordinates with per-atom σ (shape (N, 1))."""
        return (f0 + sigma * eps) % 1.0

    def target(self, sigma: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Training target g(σε, σ)/√λ: unit-scale at every noise level."""
        return wrapped_normal_direction(sigma * eps, sigma.expand_as(eps)) / lam.sqrt()

    def corrector_step(self, f: torch.Tensor, score_dir: torch.Tensor, t: int, step_lr: float, z: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
        """Langevin step F ← F − η ŝ + κ√(2η) z with η = γ (σ_t/σ_1)² (docs/method.md §Sampling, step 1).

        κ = 1 is the paper's Langevin step. κ < 1 samples a sharpened density p^(1/κ²) at each
        noise level (low-temperature Langevin): a few-step sampler loses precision where a
        long chain would have averaged its noise out, and a cooler corrector buys it back.
        """
        eta = step_lr * (self.sigmas[t] / self.sigmas[1]) ** 2
        return (f - eta * score_dir + temperature * torch.sqrt(2 * eta) * z) % 1.0

    def ddim_step(self, f: torch.Tensor, score_dir: torch.Tensor, t: int, s: int) -> torch.Tensor:
        """Deterministic step from σ_t to σ_s: F_s = F_t − σ_t(σ_t − σ_s)·ŝ.

        With the noise estimate e = σ_t ŝ this is F_s = F_t − (σ_t − σ_s)·e, i.e. x̂_0 + σ_s e:
        DDIM for a variance-exploding process (the exact probability-flow solution when e is
        constant in σ). ``score_dir`` is ŝ = ε̂_F·√λ_t, as for the other steps.
        """
        sig_t, sig_s = self.sigmas[t], self.sigmas[s]
        return (f - sig_t * (sig_t - sig_s) * score_dir) % 1.0

    def predictor_step(self, f: torch.Tensor, score_dir: torch.Tensor, t: int, s: int, z: torch.Tensor | None) -> torch.Tensor:
        """Reverse-SDE step from σ_t to σ_s (docs/method.md §Sampling, step 2); no noise when s = 0."""
        var_t, var_s = self.sigmas[t] ** 2, self.sigmas[s] ** 2
        f = f - (var_t - var_s) * score_dir
        if z is not None and s > 0:
            f = f + torch.sqrt(var_s * (var_t - var_s) / var_t) * z
        return f % 1.0
