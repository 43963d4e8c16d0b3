"""The corruption processes and reverse steps of DiffCSP (docs/method.md) against independent maths.

Reference values are computed here in numpy / float64 (or mpmath where float64 underflows)
without calling the functions under test, so a shared mistake cannot hide.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from diffcsp.diffusion import (
    CosineDDPM,
    WrappedNormalVE,
    cosine_betas,
    score_normaliser,
    wrapped_normal_direction,
    wrapped_normal_log_density,
)
from diffcsp.sampler import time_schedule

T = 1000
S = 0.008
SIGMAS_TESTED = [0.005, 0.05, 0.2, 0.5]



# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------
def ref_cosine(T: int = T, s: float = S) -> tuple[np.ndarray, np.ndarray]:
    """(betas[0..T], alpha_bars[0..T]) of docs/method.md §Noise processes in float64; index 0 is the clean state."""
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos(((t / T) + s) / (1 + s) * np.pi / 2) ** 2
    ab_raw = f / f[0]
    betas = np.clip(1 - ab_raw[1:] / ab_raw[:-1], 1e-4, 0.9999)
    alpha_bars = np.concatenate([[1.0], np.cumprod(1 - betas)])
    return np.concatenate([[0.0], betas]), alpha_bars


def ref_sigmas(T: int = T) -> np.ndarray:
    return np.concatenate([[0.0], np.exp(np.linspace(np.log(0.005), np.log(0.5), T))])


def ref_neg_log_density(x: float, sigma: float) -> float:
    """−log N_w(x; 0, σ²) as a plain sum of Gaussians over images k = −10..10 (float64)."""
    k = np.arange(-10, 11, dtype=np.float64)
    dens = np.sum(np.exp(-((x + k) ** 2) / (2 * sigma**2))) / (sigma * np.sqrt(2 * np.pi))
    return -np.log(dens)


def ref_direction_fd(x: float, sigma: float) -> float:
    """Central difference of −log N_w in float64 (step relative to σ)."""
    h = 1e-4 * sigma
    return (ref_neg_log_density(x + h, sigma) - ref_neg_log_density(x - h, sigma)) / (2 * h)


def g(x, sigma) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return wrapped_normal_direction(x, torch.full_like(x, sigma))


# ----------------------------------------------------------------------------------------------
# cosine DDPM schedule
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddpm() -> CosineDDPM:
    return CosineDDPM(T)


@pytest.fixture(scope="module")
def ve() -> WrappedNormalVE:
    # λ_t is not needed by the step formulas; mc_samples=0 keeps the fixture instant.
    return WrappedNormalVE(T, mc_samples=0)


def test_cosine_schedule_matches_closed_form(ddpm):
    betas, alpha_bars = ref_cosine()
    assert ddpm.betas.shape == (T + 1,) and ddpm.alpha_bars.shape == (T + 1,)
    np.testing.assert_allclose(ddpm.betas.double().numpy(), betas, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ddpm.alpha_bars.double().numpy(), alpha_bars, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(cosine_betas(T, S).numpy(), betas[1:], rtol=1e-12, atol=1e-15)


def test_cosine_schedule_shape(ddpm):
    ab = ddpm.alpha_bars.double()
    assert ab[0] == 1.0
    assert torch.all(ab[1:] < ab[:-1]), "ᾱ_t must be strictly decreasing"
    assert ab[T] < 1e-6
    assert 0.99 < ab[1] < 1.0
    b = ddpm.betas[1:]
    assert b.min() >= 1e-4 * (1 - 1e-6) and b.max() <= 0.9999 * (1 + 1e-6)
    assert abs(float(ddpm.betas[T]) - 0.9999) < 1e-6  # f(T) = 0 → β_T clipped


def test_add_noise(ddpm):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 3, generator=gen)
    eps = torch.randn(6, 3, 3, generator=gen)
    t = torch.tensor([1, 10, 200, 500, 900, 1000])
    _, ab = ref_cosine()
    ab_t = torch.tensor(ab[t.numpy()], dtype=torch.float32).view(-1, 1, 1)
    torch.testing.assert_close(ddpm.add_noise(x0, t, torch.zeros_like(x0)), ab_t.sqrt() * x0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ddpm.add_noise(x0, t, eps), ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps,
                               rtol=1e-5, atol=1e-6)
    # one-hot atom types: (N, 100) with per-atom t
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 5, 99]), 100).float()
    ta = torch.tensor([3, 300, 1000])
    out = ddpm.add_noise(onehot, ta, torch.zeros_like(onehot))
    torch.testing.assert_close(out, torch.tensor(ab[ta.numpy()], dtype=torch.float32).sqrt()[:, None] * onehot)


# ----------------------------------------------------------------------------------------------
# σ_t schedule
# ----------------------------------------------------------------------------------------------
def test_sigma_schedule(ve):
    s = ve.sigmas.double()
    assert s.shape == (T + 1,)
    assert s[0] == 0.0
    assert abs(float(s[1]) - 0.005) < 1e-9
    assert abs(float(s[T]) - 0.5) < 1e-7
    ratio = (s[2:] / s[1:-1]).numpy()
    np.testing.assert_allclose(ratio, 100 ** (1 / (T - 1)), rtol=1e-6)
    np.testing.assert_allclose(s.numpy(), ref_sigmas(), rtol=1e-6)
    assert ve.lambdas[0] == 1.0


# ----------------------------------------------------------------------------------------------
# wrapped normal: direction g and density
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS_TESTED)
def test_direction_matches_numerical_derivative(sigma):
    xs = np.linspace(-0.5, 1.5, 81, endpoint=False) + 0.0123
    # keep points where the plain float64 sum does not underflow (nearest image within ~35σ)
    d = np.abs(xs - np.round(xs))
    xs = xs[d**2 / (2 * sigma**2) < 600]
    assert len(xs) >= 8
    ours = g(xs, sigma).numpy()
    ref = np.array([ref_direction_fd(x, sigma) for x in xs])
    scale = 1 / sigma  # g is O(1/σ) where the density has mass; O(d/σ²) elsewhere
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("sigma", [0.005, 0.02])
@pytest.mark.parametrize("x", [0.3, 0.45, 0.499, 0.5, 0.501, 0.55, -0.4, 1.49])
def test_direction_far_from_mode_mpmath(sigma, x):
    """Where the float64 plain sum underflows (x far from an integer, tiny σ): mpmath."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60

    def neglog(y):
        return -mpmath.log(mpmath.fsum(mpmath.exp(-((y + k) ** 2) / (2 * mpmath.mpf(sigma) ** 2)) for k in range(-10, 11)))

    ref = float(mpmath.diff(neglog, mpmath.mpf(x)))
    ours = float(g([x], sigma)[0])
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9 / sigma**2)


@pytest.mark.parametrize("sigma", SIGMAS_TESTED)
def test_direction_periodic_and_odd(sigma):
    xs = torch.linspace(-0.5, 1.5, 401, dtype=torch.float64)[:-1]
    s = torch.full_like(xs, sigma)
    base = wrapped_normal_direction(xs, s)
    scale = 1 / sigma**2
    torch.testing.assert_close(wrapped_normal_direction(xs + 1, s), base, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(wrapped_normal_direction(xs - 1, s), base, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(wrapped_normal_direction(-xs, s), -base, rtol=0, atol=1e-9 * scale)
    # zeros at the mode and at the antipode
    assert abs(float(g([0.0], sigma)[0])) < 1e-12
    assert abs(float(g([0.5], sigma)[0])) < 1e-9 * scale


@pytest.mark.parametrize("sigma", [0.005, 0.01, 0.02])
def test_direction_small_sigma_limit(sigma):
    xs = torch.linspace(-3 * sigma, 3 * sigma, 13, dtype=torch.float64)
    torch.testing.assert_close(g(xs, sigma), xs / sigma**2, rtol=1e-9, atol=1e-9)


def test_direction_float32_stable():
    """Tiny σ in float32 must not give NaN/inf (softmax formulation)."""
    x = torch.rand(1000) * 2 - 0.5
    out = wrapped_normal_direction(x, torch.full_like(x, 0.005))
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 0.5 / 0.005**2 * (1 + 1e-5)


@pytest.mark.parametrize("sigma", SIGMAS_TESTED)
def test_log_density_normalised(sigma):
    n = 400_001
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    dens = wrapped_normal_log_density(xs, torch.full_like(xs, sigma)).exp()
    integral = torch.trapezoid(dens, xs).item()
    assert integral == pytest.approx(1.0, abs=1e-6)
    # and it agrees with the plain sum away from underflow
    for x in [0.0, 0.01, 0.9]:
        if min(x, 1 - x) ** 2 / (2 * sigma**2) < 600:
            ours = float(wrapped_normal_log_density(torch.tensor([x], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64))[0])
            assert ours == pytest.approx(-ref_neg_log_density(x, sigma), rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------------------------
# λ_t (score normaliser) and the training target
# ----------------------------------------------------------------------------------------------
SIG_GRID = torch.exp(torch.linspace(math.log(0.005), math.log(0.5), 21, dtype=torch.float64))


@pytest.fixture(scope="module")
def lam_grid() -> torch.Tensor:
    return score_normaliser(SIG_GRID)


def test_lambda_small_sigma_and_monotone(lam_grid):
    assert (lam_grid > 0).all()
    # small σ: E[g²] = E[x²]/σ⁴ = 1/σ² (MC error ~1.4 % with 10⁴ samples)
    for i in range(3):
        assert float(lam_grid[i] * SIG_GRID[i] ** 2) == pytest.approx(1.0, rel=0.04)
    # decreasing on a coarse grid (adjacent t differ by only ~1 %, less than the MC error)
    assert torch.all(lam_grid[1:] < lam_grid[:-1])
    # σ = 0.5: the wrapped normal is almost uniform, λ is tiny
    assert float(lam_grid[-1]) < 0.05


def test_lambda_deterministic(lam_grid):
    again = score_normaliser(SIG_GRID)
    assert torch.equal(again, lam_grid)
    other = score_normaliser(SIG_GRID, seed=1)
    assert not torch.equal(other, lam_grid)
    torch.testing.assert_close(other, lam_grid, rtol=0.06, atol=0)


def test_module_lambdas_are_score_normaliser():
    ve_small = WrappedNormalVE(20, mc_samples=2000)
    assert ve_small.lambdas[0] == 1.0 and ve_small.sigmas[0] == 0.0
    expected = score_normaliser(ve_small.sigmas[1:].double(), num_samples=2000)
    torch.testing.assert_close(ve_small.lambdas[1:].double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("idx", [0, 5, 10, 15, 20])
def test_target_unit_mean_square(ve, lam_grid, idx):
    sigma = SIG_GRID[idx].float()
    lam = lam_grid[idx].float()
    gen = torch.Generator().manual_seed(123)
    eps = torch.randn(100_000, 3, generator=gen)
    sig = torch.full((100_000, 1), float(sigma))
    tgt = ve.target(sig, eps, torch.full((100_000, 1), float(lam)))
    assert tgt.shape == eps.shape
    assert float((tgt**2).mean()) == pytest.approx(1.0, rel=0.05)


def test_add_noise_wraps(ve):
    gen = torch.Generator().manual_seed(0)
    f0 = torch.rand(200, 3, generator=gen)
    eps = torch.randn(200, 3, generator=gen)
    sigma = ve.sigmas[torch.randint(1, T + 1, (200,), generator=gen)].unsqueeze(-1)
    ft = ve.add_noise(f0, sigma, eps)
    assert ((ft >= 0) & (ft < 1)).all()
    d = (ft.double() - (f0.double() + sigma.double() * eps.double())) % 1.0
    assert torch.minimum(d, 1 - d).max() < 1e-6


# ----------------------------------------------------------------------------------------------
# reverse steps (docs/method.md §Sampling)
# ----------------------------------------------------------------------------------------------
STEP_TIMES = [1, 2, 10, 250, 500, 900, 999, 1000]


@pytest.mark.parametrize("t", STEP_TIMES)
def test_ddpm_reverse_step_matches_spec(ddpm, t):
    betas, ab = ref_cosine()
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    e = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    beta, alpha = betas[t], 1 - betas[t]
    mean = (x - beta / np.sqrt(1 - ab[t]) * e) / np.sqrt(alpha)
    sig = np.sqrt(beta * (1 - ab[t - 1]) / (1 - ab[t]))
    expected = mean + (sig * z if t > 1 else 0)  # z = 0 at t = 1
    got = ddpm.reverse_step(x.float(), e.float(), t, t - 1, z.float()).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(ddpm.reverse_step(x.float(), e.float(), t, t - 1, None).double(), mean,
                               rtol=1e-4, atol=1e-4 * float(mean.abs().max()))


@pytest.mark.parametrize("t", [1, 10, 300, 700, 950])
def test_ddpm_perfect_noise_recovers_x0(ddpm, t):
    gen = torch.Generator().manual_seed(t)
    x0 = torch.randn(8, 3, 3, generator=gen)
    eps = torch.randn(8, 3, 3, generator=gen)
    xt = ddpm.add_noise(x0, torch.full((8,), t), eps)
    atol = 1e-5 / math.sqrt(float(ddpm.alpha_bars[t]))
    torch.testing.assert_close(ddpm.reverse_step(xt, eps, t, 0, None), x0, rtol=1e-4, atol=atol)
    # z is ignored when stepping to 0
    torch.testing.assert_close(ddpm.reverse_step(xt, eps, t, 0, torch.randn_like(x0)), x0, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("t,s", [(1000, 800), (500, 250), (100, 99), (20, 3)])
def test_ddpm_respaced_step_is_posterior(ddpm, t, s):
    """With the true ε the respaced mean is that of q(x_s | x_t, x_0), variance likewise.

    Run in float64: near t = T the ε-form divides by √ᾱ_{t|s} ~ 1e-4·…, so float32 inputs
    alone carry ~1e-3 of (intrinsic, not implementation) error.
    """
    _, ab = ref_cosine()
    ddpm = copy.deepcopy(ddpm).double()
    gen = torch.Generator().manual_seed(t + s)
    x0 = torch.randn(8, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(8, 3, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(8, 3, 3, generator=gen, dtype=torch.float64)
    xt = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
    a_ts = ab[t] / ab[s]
    b_ts = 1 - a_ts
    mu = np.sqrt(ab[s]) * b_ts / (1 - ab[t]) * x0 + np.sqrt(a_ts) * (1 - ab[s]) / (1 - ab[t]) * xt
    var = b_ts * (1 - ab[s]) / (1 - ab[t])
    got = ddpm.reverse_step(xt, eps, t, s, z)
    torch.testing.assert_close(got, mu + np.sqrt(var) * z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1, 2, 100, 600, 1000])
def test_ve_predictor_matches_spec(ve, t):
    sig = ref_sigmas()
    gen = torch.Generator().manual_seed(t)
    f = torch.rand(50, 3, generator=gen, dtype=torch.float64)
    score = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 3
    z = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    vt, vs = sig[t] ** 2, sig[t - 1] ** 2
    noise = np.sqrt(vs * (vt - vs) / vt) * z if t > 1 else 0.0  # z = 0 at t = 1
    expected = (f - (vt - vs) * score + noise) % 1.0
    got = ve.predictor_step(f.float(), score.float(), t, t - 1, z.float())
    assert ((got >= 0) & (got < 1)).all()
    d = (got.double() - expected) % 1.0
    assert torch.minimum(d, 1 - d).max() < 1e-5
    got_nz = ve.predictor_step(f.float(), score.float(), t, t - 1, None).double()
    d = (got_nz - (f - (vt - vs) * score) % 1.0) % 1.0
    assert torch.minimum(d, 1 - d).max() < 1e-5


@pytest.mark.parametrize("t", [1, 50, 500, 1000])
@pytest.mark.parametrize("gamma", [1e-5, 5e-7])
def test_ve_corrector_matches_spec(ve, t, gamma):
    sig = ref_sigmas()
    gen = torch.Generator().manual_seed(t)
    f = torch.rand(50, 3, generator=gen, dtype=torch.float64)
    score = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 3
    z = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    eta = gamma * (sig[t] / sig[1]) ** 2
    expected = (f - eta * score + np.sqrt(2 * eta) * z) % 1.0
    got = ve.corrector_step(f.float(), score.float(), t, gamma, z.float())
    assert ((got >= 0) & (got < 1)).all()
    d = (got.double() - expected) % 1.0
    assert torch.minimum(d, 1 - d).max() < 1e-5
    for tau in (0.0, 0.5):  # a cooler corrector (temperature κ = tau) scales only the noise term
        expected = (f - eta * score + tau * np.sqrt(2 * eta) * z) % 1.0
        d = (ve.corrector_step(f.float(), score.float(), t, gamma, z.float(), temperature=tau).double() - expected) % 1.0
        assert torch.minimum(d, 1 - d).max() < 1e-5


@pytest.mark.parametrize("tau", [1.0, 0.7, 0.5])
def test_cool_corrector_samples_the_sharpened_density(ve, tau):
    """Langevin at temperature τ with the exact score of N(0, σ²) has the stationary variance of
    the AR(1) chain x' = (1 − a)x + τ√(2η) z, a = η/σ²: τ²σ²·2/(2 − a) (→ τ²σ² for small steps)."""
    t, gamma = 200, 5e-6
    sigma = float(ve.sigmas[t])
    eta = gamma * (sigma / float(ve.sigmas[1])) ** 2
    a = eta / sigma**2
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(20_000)
    for _ in range(400):  # ≈ 400·a ≈ 80 relaxation times
        centred = (x + 0.5) % 1.0 - 0.5
        x = ve.corrector_step(x, centred / sigma**2, t, gamma, torch.randn(x.shape, generator=gen), temperature=tau)
    var = float((((x + 0.5) % 1.0 - 0.5) ** 2).mean())
    expected = tau**2 * sigma**2 * 2 / (2 - a)
    assert abs(var / expected - 1) < 0.05, (var, expected)


@pytest.mark.parametrize("t", [1, 200, 400])
def test_ve_perfect_score_recovers_f0(ve, t):
    """For σ_t ≤ 0.05 the wrapped normal is one Gaussian, so F − σ_t²·g(σ_t ε) = F_0 (mod 1)."""
    gen = torch.Generator().manual_seed(t)
    f0 = torch.rand(100, 3, generator=gen)
    eps = torch.randn(100, 3, generator=gen).clamp(-4, 4)
    sigma = ve.sigmas[t]
    assert sigma <= 0.05
    ft = ve.add_noise(f0, sigma, eps)
    score = wrapped_normal_direction(sigma * eps, sigma.expand_as(eps))
    out = ve.predictor_step(ft, score, t, 0, torch.randn_like(f0))
    d = (out - f0) % 1.0
    assert torch.minimum(d, 1 - d).max() < 1e-5


# ----------------------------------------------------------------------------------------------
# sampler time schedule
# ----------------------------------------------------------------------------------------------
def test_time_schedule_full():
    assert time_schedule(T, None) == list(range(T, 0, -1))
    assert time_schedule(T, T) == list(range(T, 0, -1))
    assert time_schedule(7, None) == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("timesteps", [1000, 100, 7])
def test_time_schedule_respaced(timesteps):
    for steps in range(2, timesteps + 1):
        times = time_schedule(timesteps, steps)
        assert len(times) == steps, steps
        assert times[0] == timesteps and times[-1] == 1
        assert all(isinstance(x, int) for x in times)
        assert all(a > b for a, b in zip(times, times[1:]))
    assert time_schedule(timesteps, 1) == [timesteps]
    for steps in (2, 5, 37, timesteps // 2 + 1):
        if 2 <= steps <= timesteps:  # evenly spaced: each time within ½ of the exact grid
            grid = np.linspace(timesteps, 1, steps)
            assert np.abs(np.array(time_schedule(timesteps, steps)) - grid).max() <= 0.5


@pytest.mark.parametrize("steps", [0, -1, 1001])
def test_time_schedule_invalid(steps):
    with pytest.raises(ValueError):
        time_schedule(T, steps)


def test_clipped_x0_form_equals_eps_form_when_in_range():
    """The x̂_0 form used for clipping is algebraically the paper's ε form."""
    ddpm = CosineDDPM(1000).double()
    gen = torch.Generator().manual_seed(5)
    for t, s in [(1000, 999), (700, 699), (10, 9), (500, 200)]:
        x, e = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(ddpm.reverse_step(x, e, t, s, None, clip_x0=1e30), ddpm.reverse_step(x, e, t, s, None),
                                   rtol=1e-6, atol=1e-8)


def test_clipped_x0_stops_runaway_first_step():
    """At t = T an ε̂ error of 0.05 moves the unclipped mean by ~5; the clipped one stays O(1)."""
    ddpm = CosineDDPM(1000)
    x = torch.randn(64, 3, 3, generator=torch.Generator().manual_seed(0))
    eps_hat = x + 0.05  # a slightly wrong prediction of the (pure) noise
    free = ddpm.reverse_step(x, eps_hat, 1000, 999, None)
    clipped = ddpm.reverse_step(x, eps_hat, 1000, 999, None, clip_x0=20.0)
    assert free.abs().max() > 4.0
    assert clipped.abs().max() < 0.5


# ----------------------------------------------------------------------------------------------
# independent checks: λ_t by quadrature, and the training loss by hand
# ----------------------------------------------------------------------------------------------
def ref_g_and_density(x: float, sigma: float) -> tuple[float, float]:
    """(g(x, σ), N_w(x; 0, σ²)) written from the formulas: sums over images k = −10..10, with the
    largest exponent factored out so that neither underflows (numpy float64)."""
    y = x + np.arange(-10, 11, dtype=np.float64)
    e = -(y**2) / (2 * sigma**2)
    w = np.exp(e - e.max())
    g = float((w * y).sum() / w.sum() / sigma**2)
    density = float(w.sum() * np.exp(e.max()) / (sigma * np.sqrt(2 * np.pi)))
    return g, density


@functools.lru_cache(maxsize=None)
def ref_lambda_quad(sigma: float) -> tuple[float, float]:
    """(E[g²], E[g⁴]) under N_w(0, σ²) by adaptive quadrature over x ∈ [−½, ½), split where the
    density has its mass so quad sees the peak."""
    from scipy.integrate import quad

    c = min(0.5, 12 * sigma)
    edges = sorted({-0.5, -c, 0.0, c, 0.5})
    moments = []
    for power in (2, 4):
        def f(x: float, p: int = power) -> float:
            g, dens = ref_g_and_density(x, sigma)
            return g**p * dens

        moments.append(sum(quad(f, a, b, limit=200, epsabs=0, epsrel=1e-10)[0] for a, b in zip(edges, edges[1:])))
    return moments[0], moments[1]


def test_lambda_quadrature_reference_small_sigma_limit():
    """The reference itself: for σ ≪ 1 the wrapped normal is a Gaussian, E[g²] = 1/σ², E[g⁴] = 3/σ⁴."""
    m2, m4 = ref_lambda_quad(0.005)
    assert m2 * 0.005**2 == pytest.approx(1.0, rel=1e-7)
    assert m4 * 0.005**4 == pytest.approx(3.0, rel=1e-7)


def test_lambdas_match_quadrature():
    """WrappedNormalVE.lambdas (Monte Carlo, 10⁴ samples per σ) against quadrature, within 4
    standard errors of the MC mean (√(Var g²/10⁴), from the quadrature's E[g⁴])."""
    ve_mc = WrappedNormalVE(10)  # σ_t for t = 1..10: geometric from 0.005 to 0.5
    sigmas = np.exp(np.linspace(np.log(0.005), np.log(0.5), 10))
    for t, sigma in enumerate(sigmas, start=1):
        m2, m4 = ref_lambda_quad(float(sigma))
        se = np.sqrt((m4 - m2**2) / 10_000)
        assert abs(float(ve_mc.lambdas[t]) - m2) < 4 * se, (t, sigma, float(ve_mc.lambdas[t]), m2, se)
    assert float(ve_mc.lambdas[0]) == 1.0


@pytest.mark.parametrize("task", ["csp", "gen"])
def test_loss_by_hand_from_closed_forms(task, monkeypatch):
    """DiffCSP.loss against a hand computation that shares neither the model's schedules nor its
    draw order: t and every noise are fixed tensors handed to the model when it asks for them
    (recognised by shape), ᾱ_t and σ_t come from their closed forms, λ_t from quadrature (written
    into the model, as a checkpoint would), g from the formula above; only the network is shared."""
    from diffcsp.batching import batch_from_arrays
    from diffcsp.model import DiffCSP, ModelConfig

    T_small = 10
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(task=task, hidden=16, num_layers=1, num_freqs=4, time_dim=16, timesteps=T_small),
                    compute_schedules=False)
    sigmas = np.concatenate([[0.0], np.exp(np.linspace(np.log(0.005), np.log(0.5), T_small))])
    lambdas = np.array([1.0] + [ref_lambda_quad(float(s))[0] for s in sigmas[1:]])
    model.coord_process.lambdas.copy_(torch.tensor(lambdas))
    _, alpha_bars = ref_cosine(T_small)

    rng = np.random.default_rng(42)
    num_atoms = np.array([2, 5, 1, 3])
    N, B = int(num_atoms.sum()), len(num_atoms)
    numbers = rng.integers(1, 101, N)
    frac0 = rng.random((N, 3))
    lat0 = 4 * np.eye(3) + 0.5 * rng.standard_normal((B, 3, 3))
    batch = batch_from_arrays(numbers, frac0, lat0, num_atoms)
    t = np.array([1, 4, 10, 7])
    eps_l, eps_f, eps_a = rng.standard_normal((B, 3, 3)), rng.standard_normal((N, 3)), rng.standard_normal((N, 100))

    asked = []

    def fixed_randint(low, high, size, **kw):
        assert (low, high, tuple(size)) == (1, T_small + 1, (B,))
        asked.append("t")
        return torch.as_tensor(t, device=kw.get("device"))

    def fixed_randn_like(x, **kw):
        name, value = {(B, 3, 3): ("eps_l", eps_l), (N, 3): ("eps_f", eps_f), (N, 100): ("eps_a", eps_a)}[tuple(x.shape)]
        asked.append(name)
        return torch.as_tensor(value, dtype=x.dtype)

    monkeypatch.setattr(torch, "randint", fixed_randint)
    monkeypatch.setattr(torch, "randn_like", fixed_randn_like)
    losses = model.loss(batch)
    monkeypatch.undo()
    assert sorted(asked) == sorted(["t", "eps_l", "eps_f"] + (["eps_a"] if task == "gen" else []))

    # by hand, float64
    atom_t = np.repeat(t, num_atoms)
    ab = alpha_bars[t][:, None, None]
    lat_t = np.sqrt(ab) * lat0 + np.sqrt(1 - ab) * eps_l
    sig = sigmas[atom_t][:, None]
    frac_t = (frac0 + sig * eps_f) % 1.0
    g = np.vectorize(lambda x, s: ref_g_and_density(x, s)[0])(sig * eps_f, np.broadcast_to(sig, eps_f.shape))
    target_f = g / np.sqrt(lambdas[atom_t])[:, None]
    if task == "gen":
        onehot = np.eye(100)[numbers - 1]
        ab_a = alpha_bars[atom_t][:, None]
        types_in = torch.tensor(np.sqrt(ab_a) * onehot + np.sqrt(1 - ab_a) * eps_a, dtype=torch.float32)
    else:
        types_in = torch.as_tensor(numbers)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        pl, pf, pa = (None if p is None else p.double().numpy()
                      for p in model.net(types_in, f32(frac_t), f32(lat_t), torch.as_tensor(num_atoms), torch.as_tensor(t)))
    expected = {"loss_lattice": ((pl - eps_l) ** 2).mean(), "loss_coord": ((pf - target_f) ** 2).mean()}
    if task == "gen":
        expected["loss_type"] = ((pa - eps_a) ** 2).mean()
    expected["loss"] = expected["loss_lattice"] + expected["loss_coord"] + (20 * expected["loss_type"] if task == "gen" else 0)
    for key, value in expected.items():
        assert float(losses[key].detach()) == pytest.approx(value, rel=2e-4), key
