"""Few-step sampling: DDIM/Heun updates against closed forms, time grids, call counts, and the
rotation-equivariant lattice guard.

Reference values are written from the formulas with numpy (float64), not with the package's
schedules: ᾱ from the cosine schedule, σ_t geometric.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffcsp.diffusion import CosineDDPM, WrappedNormalVE, clamp_row_norms
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.sampler import _sample_chunk, network_calls, sample, time_schedule

T = 1000


def ref_alpha_bars(T: int = T, s: float = 0.008) -> np.ndarray:
    x = np.arange(T + 1, dtype=np.float64)
    f = np.cos((x / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = f / f[0]
    betas = np.clip(1 - ab[1:] / ab[:-1], 1e-4, 0.9999)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


def ref_sigmas(T: int = T, lo: float = 0.005, hi: float = 0.5) -> np.ndarray:
    return np.concatenate([[0.0], np.exp(np.linspace(math.log(lo), math.log(hi), T))])


@pytest.mark.parametrize("t,s", [(1000, 900), (500, 20), (37, 0), (2, 1)])
def test_ddim_step_lattice_closed_form(t, s):
    ab = ref_alpha_bars()
    rng = np.random.default_rng(t)
    x, e = rng.normal(size=(4, 3, 3)), rng.normal(size=(4, 3, 3))
    x0 = (x - np.sqrt(1 - ab[t]) * e) / np.sqrt(ab[t])
    want = np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s]) * e
    got = CosineDDPM(T).double().ddim_step(torch.from_numpy(x), torch.from_numpy(e), t, s)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)  # schedules are stored in float32


def test_ddim_step_with_oracle_noise_lands_on_x0():
    """Given the exact noise, a single deterministic step from any t to any s is exact."""
    ab = ref_alpha_bars()
    ddpm = CosineDDPM(T).double()
    rng = np.random.default_rng(1)
    x0, eps = rng.normal(size=(3, 3, 3)), rng.normal(size=(3, 3, 3))
    for t, s in [(1000, 0), (800, 300), (50, 10)]:
        xt = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
        got = ddpm.ddim_step(torch.from_numpy(xt), torch.from_numpy(eps), t, s).numpy()
        np.testing.assert_allclose(got, np.sqrt(ab[s]) * x0 + np.sqrt(1 - ab[s]) * eps, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t,s", [(1000, 500), (300, 299), (10, 0)])
def test_ddim_step_coordinates_closed_form(t, s):
    sig = ref_sigmas()
    rng = np.random.default_rng(s)
    f, score = rng.random((6, 3)), rng.normal(size=(6, 3))
    want = (f - sig[t] * (sig[t] - sig[s]) * score) % 1.0
    got = WrappedNormalVE(T, mc_samples=0).double().ddim_step(torch.from_numpy(f), torch.from_numpy(score), t, s)
    d = (got.numpy() - want + 0.5) % 1.0 - 0.5  # compare on the torus
    np.testing.assert_allclose(d, 0.0, atol=1e-7)


def test_clamp_row_norms_commutes_with_rotation_and_leaves_short_rows():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(8, 3, 3)) * 10)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = torch.from_numpy(q)
    clip = clamp_row_norms(5.0)
    torch.testing.assert_close(clip(x @ q.T), clip(x) @ q.T)
    assert float(clip(x).norm(dim=-1).max()) <= 5.0 + 1e-9
    short = torch.from_numpy(rng.normal(size=(4, 3, 3)) * 0.1)
    torch.testing.assert_close(clip(short), short)
    # an entry-wise clamp does not commute with rotations: the reason for the row-norm bound
    ent = lambda y: y.clamp(-5.0, 5.0)  # noqa: E731
    assert not torch.allclose(ent(x @ q.T), ent(x) @ q.T)


def test_power_time_grid():
    times = time_schedule(T, 50, "power", 2.0)
    assert times[0] == T and times[-1] == 1 and times == sorted(set(times), reverse=True)
    gaps = -np.diff(times)
    assert gaps[-1] < gaps[0]  # denser at low noise
    assert time_schedule(T, 50, "power", 1.0) == time_schedule(T, 50, "uniform")
    assert time_schedule(T, T, "power", 3.0) == list(range(T, 0, -1))
    with pytest.raises(ValueError, match="schedule"):
        time_schedule(T, 50, "cosine")
    with pytest.raises(ValueError, match="rho"):
        time_schedule(T, 50, "power", 0.0)


def test_network_calls_are_counted_by_the_sampler():
    """network_calls() is what a run really costs: count calls through a wrapped network."""
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, lattice_bound=20.0), compute_schedules=False)
    calls = {"n": 0}
    inner = model.net

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            calls["n"] += 1
            return self.inner(*args)

    model.net = Counting()
    for method, steps, step_lr in [("pc", 20, 1e-5), ("pc", 20, 0.0), ("ddim", 15, 0.0), ("heun", 10, 0.0), ("heun", 10, 1e-5)]:
        calls["n"] = 0
        sample(model, [3, 2], torch.tensor([8, 8, 22, 3, 9]), step_lr=step_lr, steps=steps, method=method,
               schedule="power", rho=2.0, progress=False, batch_size=8)
        assert calls["n"] == network_calls(time_schedule(T, steps, "power", 2.0), method, step_lr), (method, steps, step_lr)
    # two-stage variants: two chains, the corrector only in the coordinate chain (20 + 2·20 calls)
    for variant in ("lattice-then-coords", "coords-then-lattice"):
        two = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, lattice_bound=20.0, variant=variant),
                      compute_schedules=False)
        inner = two.net
        two.net = Counting()
        calls["n"] = 0
        sample(two, [3, 2], torch.tensor([8, 8, 22, 3, 9]), step_lr=1e-5, steps=20, progress=False)
        assert calls["n"] == network_calls(time_schedule(T, 20), "pc", 1e-5, variant) == 60, variant


@pytest.mark.parametrize("method", ["ddim", "heun"])
def test_sampling_from_a_rotated_lattice_gives_the_rotated_result(method):
    """With the row-norm guard active (a small bound, so it clips), the deterministic sampler
    maps L_T·Qᵀ to L_0·Qᵀ: the sampled distribution is O(3)-equivariant."""
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=32, num_layers=2, num_freqs=4, time_dim=8), compute_schedules=False)
    num_atoms = torch.tensor([3, 4])
    types = torch.tensor([8, 8, 22, 3, 3, 9, 9])
    rng = np.random.default_rng(0)
    q = torch.from_numpy(np.linalg.qr(rng.normal(size=(3, 3)))[0]).float()
    lat = torch.from_numpy(rng.normal(size=(2, 3, 3)) * 3).float()
    times = time_schedule(T, 12, "power", 2.0)
    outs = []
    for init in (lat, lat @ q.T):
        gen = torch.Generator().manual_seed(7)
        _, frac, lattice = _sample_chunk(model, num_atoms, types, 0.0, times, gen, lattice_bound=1.5, method=method,
                                         lattice_init=init)
        outs.append((frac, lattice))
    (f1, l1), (f2, l2) = outs
    torch.testing.assert_close(l2, l1 @ q.T, rtol=1e-4, atol=1e-4)  # float32 network
    d = (f2 - f1 + 0.5) % 1.0 - 0.5
    assert float(d.abs().max()) < 1e-4
    # the guard was active: an unclipped run ends elsewhere
    gen = torch.Generator().manual_seed(7)
    _, _, free = _sample_chunk(model, num_atoms, types, 0.0, times, gen, lattice_bound=None, method=method, lattice_init=lat)
    assert not torch.allclose(free, l1, atol=1e-3)


def test_precision_choices():
    from diffcsp.precision import bf16_native, resolve

    assert resolve("fp32") == "fp32" and resolve("bf16") == "bf16"
    assert resolve("auto") == ("bf16" if bf16_native("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve("fp8")


def test_bf16_sampling_stays_close_to_fp32():
    """The network under bf16 autocast, the updates in fp32: same seed, nearby lattices."""
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=32, num_layers=2, num_freqs=8, time_dim=16, lattice_bound=20.0), compute_schedules=False)
    kw = dict(step_lr=0.0, steps=10, method="ddim", progress=False)
    a = sample(model, [4, 4], torch.tensor([8, 8, 22, 38] * 2), precision="fp32", **kw)
    b = sample(model, [4, 4], torch.tensor([8, 8, 22, 38] * 2), precision="bf16", **kw)
    assert b.finite.all() and b.lattices.dtype == np.float64
    assert np.abs(a.lattices - b.lattices).max() < 0.05 * np.abs(a.lattices).max()
    assert not np.array_equal(a.lattices, b.lattices)  # bf16 really ran
