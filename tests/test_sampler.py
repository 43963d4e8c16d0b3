"""The sampler end to end, driven by an oracle denoiser.

The oracle stands in for the network: it knows the clean crystals (L0, F0[, one-hot A0]) and
returns the exact noise for whatever noisy state it is shown — for the lattice (and one-hot
types) ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t); for coordinates the wrapped-normal direction g of the
displacement F_t − F_0 (wrapped to [−½, ½)) at σ_t, divided by √λ_t. ᾱ_t, σ_t, λ_t and g are
computed here in numpy/float64 from their closed forms (λ_t by quadrature), never by calling
the diffusion processes, so the references do not share code with what they check. With a
perfect denoiser every reverse step is the exact posterior, so ``sample()`` must hand back the
crystal the oracle knows — at any number of steps, with or without the corrector.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch import nn

from diffcsp import sampler as sampler_mod
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.registry import get_dataset
from diffcsp.predict import resolve_sampler
from diffcsp.sampler import sample, sampler_preset

T = 1000
NUM_ELEMENTS = 100
METHODS = getattr(sampler_mod, "METHODS", ("pc",))


# -- independent references ------------------------------------------------------------------------
def ref_alpha_bars(T: int = T, s: float = 0.008) -> np.ndarray:
    """ᾱ_0..ᾱ_T of the cosine schedule (Nichol & Dhariwal 2021), β clipped to [1e-4, 0.9999]."""
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 1e-4, 0.9999)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


def ref_sigmas(T: int = T, lo: float = 0.005, hi: float = 0.5) -> np.ndarray:
    """σ_0 = 0, then geometric from σ_1 = lo to σ_T = hi."""
    return np.concatenate([[0.0], lo * (hi / lo) ** (np.arange(T) / (T - 1))])


def ref_direction(x: np.ndarray, sigma: float, images: int = 5) -> np.ndarray:
    """g(x, σ) = −d/dx log Σ_k exp(−(x+k)²/2σ²) (stable: weights relative to the largest)."""
    shifted = x[..., None] + np.arange(-images, images + 1)
    logw = -(shifted**2) / (2 * sigma**2)
    w = np.exp(logw - logw.max(-1, keepdims=True))
    return (w * shifted).sum(-1) / (w.sum(-1) * sigma**2)


def ref_lambdas(sigmas: np.ndarray, points: int = 4096, images: int = 5) -> np.ndarray:
    """λ(σ) = E_{x~N_w(0,σ²)}[g(x,σ)²] by the midpoint rule on the circle (spectrally accurate
    for these smooth periodic integrands; 20+ points per σ at the smallest σ)."""
    x = (np.arange(points) + 0.5) / points - 0.5
    out = np.empty(len(sigmas))
    for lo in range(0, len(sigmas), 50):
        sig = sigmas[lo : lo + 50, None]  # (S, 1) against x (points,)
        shifted = x[None, :, None] + np.arange(-images, images + 1)  # (1, points, K)
        logw = -(shifted**2) / (2 * sig[..., None] ** 2)  # (S, points, K)
        w = np.exp(logw)
        dens = w.sum(-1) / (sig * math.sqrt(2 * math.pi))
        w = np.exp(logw - logw.max(-1, keepdims=True))
        g = (w * shifted).sum(-1) / (w.sum(-1) * sig**2)
        out[lo : lo + 50] = (dens * g**2).sum(-1) / points
    return out


AB, SIG = ref_alpha_bars(), ref_sigmas()


@pytest.fixture(scope="module")
def lambdas() -> np.ndarray:
    lam = np.concatenate([[1.0], ref_lambdas(SIG[1:])])
    # sanity of the quadrature itself: the small-σ limit 1/σ² (a single Gaussian)
    np.testing.assert_allclose(lam[1:100] * SIG[1:100] ** 2, 1.0, rtol=1e-6)
    return lam


def wrapped(d: np.ndarray) -> np.ndarray:
    return (d + 0.5) % 1.0 - 0.5


# -- crystals the oracle knows ---------------------------------------------------------------------
@dataclass
class Crystal:
    numbers: list[int]
    lengths: tuple[float, float, float]
    angles: tuple[float, float, float]
    frac: list[list[float]]
    lattice: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # pymatgen's from_parameters builds the same "c along z" frame the sampler returns
        self.lattice = Lattice.from_parameters(*self.lengths, *self.angles).matrix


CRYSTALS = [
    Crystal([38, 22, 8, 8, 8], (3.905, 3.905, 3.905), (90, 90, 90),
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    Crystal([6, 14], (3.1, 4.2, 5.3), (80, 95, 105), [[0.1, 0.2, 0.3], [0.6, 0.75, 0.9]]),
    Crystal([26], (2.48, 2.48, 2.48), (109.47, 109.47, 109.47), [[0.97, 0.02, 0.5]]),
    Crystal([8, 1, 1], (4.0, 5.0, 6.0), (90, 90, 120), [[0.2, 0.2, 0.2], [0.3, 0.25, 0.2], [0.15, 0.3, 0.22]]),
    Crystal([12, 8, 8], (3.0, 3.0, 7.0), (90, 90, 90), [[0, 0, 0], [0.5, 0.5, 0.1], [0.5, 0.5, 0.9]]),
]


class Oracle(nn.Module):
    """A perfect denoiser for known crystals, with CSPNet's call signature.

    ``key="types"`` finds each crystal of a call by its atom types (CSP: works across chunks and
    checks that types and atom counts stay together); ``key="order"`` takes them in order (gen).
    ``record`` keeps every call's time and inputs.
    """

    def __init__(self, crystals: list[Crystal], lambdas: np.ndarray, key: str = "types", record: bool = False):
        super().__init__()
        self.crystals, self.lam, self.key, self.record = crystals, lambdas, key, record
        self.by_types = {tuple(c.numbers): c for c in crystals}
        self.calls: list[dict] = []

    def lookup(self, types: torch.Tensor, num_atoms: torch.Tensor) -> list[Crystal]:
        if self.key == "order":
            assert len(num_atoms) == len(self.crystals)
            return self.crystals
        parts = torch.split(types, num_atoms.tolist())
        return [self.by_types[tuple(p.tolist())] for p in parts]

    def forward(self, types, frac, lattice, num_atoms, t):
        tt = int(t[0])
        assert (t == tt).all() and 1 <= tt <= T
        crystals = self.lookup(types, num_atoms)
        assert [len(c.numbers) for c in crystals] == num_atoms.tolist()
        ab, sig, lam = AB[tt], SIG[tt], self.lam[tt]
        L0 = np.stack([c.lattice for c in crystals])
        F0 = np.concatenate([np.asarray(c.frac, dtype=np.float64) for c in crystals])
        eps_l = (lattice.double().numpy() - math.sqrt(ab) * L0) / math.sqrt(1 - ab)
        eps_f = ref_direction(wrapped(frac.double().numpy() - F0), sig) / math.sqrt(lam)
        eps_a = None
        if types.dim() == 2:  # generation: noisy one-hot types
            A0 = np.eye(NUM_ELEMENTS)[np.concatenate([c.numbers for c in crystals]) - 1]
            eps_a = torch.from_numpy((types.double().numpy() - math.sqrt(ab) * A0) / math.sqrt(1 - ab)).float()
        if self.record:
            self.calls.append({"t": tt, "frac": frac.double().numpy().copy(), "lattice": lattice.double().numpy().copy(),
                               "score_f": eps_f * math.sqrt(lam), "eps_l": eps_l, "types": types.double().numpy().copy()})
        return torch.from_numpy(eps_l).float(), torch.from_numpy(eps_f).float(), eps_a


def oracle_model(lambdas: np.ndarray, crystals=CRYSTALS, task: str = "csp", key: str = "types", record: bool = False,
                 **config) -> DiffCSP:
    """A real DiffCSP (tiny config) whose network is the oracle. λ_t is a buffer that a real model
    loads from its checkpoint; here it gets the quadrature values the oracle divides by."""
    model = DiffCSP(ModelConfig(task=task, hidden=16, num_layers=1, num_freqs=4, time_dim=8, dataset="perov_5", **config),
                    compute_schedules=False)
    model.coord_process.lambdas.copy_(torch.from_numpy(lambdas).float())
    model.net = Oracle(crystals, lambdas, key=key, record=record)
    return model


def types_of(crystals) -> torch.Tensor:
    return torch.tensor([z for c in crystals for z in c.numbers])


def assert_returns(result, crystals, tol_lattice: float = 2e-5, tol_frac: float = 1e-6) -> None:
    """Each sampled crystal i is crystals[i]: atoms, lattice parameters and matrix, coordinates mod 1."""
    assert result.num_atoms.tolist() == [len(c.numbers) for c in crystals]
    for i, c in enumerate(crystals):
        numbers, lattice, frac = result.crystal(i)
        assert numbers.tolist() == c.numbers, (i, numbers)
        got = Lattice(lattice)
        np.testing.assert_allclose(got.abc, c.lengths, atol=tol_lattice, err_msg=f"crystal {i} lengths")
        np.testing.assert_allclose(got.angles, c.angles, atol=100 * tol_lattice, err_msg=f"crystal {i} angles")
        np.testing.assert_allclose(lattice, c.lattice, atol=tol_lattice, err_msg=f"crystal {i} matrix")
        d = np.abs(wrapped(frac - np.asarray(c.frac)))
        assert d.max() < tol_frac, (i, d.max())


# -- the sampler returns the crystal a perfect denoiser knows --------------------------------------
@pytest.mark.parametrize("steps,step_lr", [(1000, 0.0), (250, 0.0), (50, 0.0), (1000, "perov_5"), (250, "mp_20"),
                                           (50, "mp_20")])
def test_csp_returns_the_known_crystals(lambdas, steps, step_lr):
    gamma = get_dataset(step_lr).step_lr("csp") if isinstance(step_lr, str) else step_lr
    model = oracle_model(lambdas)
    result = sample(model, [len(c.numbers) for c in CRYSTALS], types_of(CRYSTALS), step_lr=gamma, steps=steps,
                    seed=0, progress=False, device="cpu")
    assert_returns(result, CRYSTALS)


@pytest.mark.parametrize("dataset", ["perov_5", "carbon_24", "mp_20"])
def test_fast_presets_return_the_known_crystals(lambdas, dataset):
    """`--sampler fast` in every dataset's version (Perov-5's has a cooler, larger corrector step)."""
    preset = sampler_preset("fast", dataset)
    model = oracle_model(lambdas)
    result = sample(model, [len(c.numbers) for c in CRYSTALS], types_of(CRYSTALS),
                    step_lr=get_dataset(dataset).step_lr("csp") * preset.step_lr_scale, seed=0, progress=False,
                    device="cpu", **preset.options())
    assert_returns(result, CRYSTALS)


def test_dataset_tuned_presets_apply_to_their_dataset_and_task_only(monkeypatch: pytest.MonkeyPatch):
    tuned, generic = sampler_preset("fast", "perov_5"), sampler_preset("fast")
    assert tuned.corrector_temperature < 1 and tuned.step_lr_scale != generic.step_lr_scale
    assert sampler_preset("fast", "perov_5", "gen") == generic == sampler_preset("fast", "carbon_24")
    assert sampler_preset("paper", "perov_5") == sampler_preset("paper")
    assert sampler_preset("paper").corrector_temperature == 1.0  # the paper's Langevin step
    # `auto` (diffcsp predict's default) is fast only where fast was measured to hold quality
    assert sampler_preset("auto", "perov_5") == tuned and sampler_preset("auto", "carbon_24") == generic
    assert sampler_preset("auto", "mp_20") == sampler_preset("auto", "perov_5", "gen") == sampler_preset("paper")
    # Carbon-24 generation: `auto` is the paper's 1000 steps with a cooler corrector; `paper` stays the paper's
    cool = sampler_preset("auto", "carbon_24", "gen")
    assert cool.corrector_temperature == 0.3 and cool.steps is None and cool.step_lr_scale == 1.0
    assert sampler_preset("paper", "carbon_24", "gen") == sampler_preset("paper")
    model = DiffCSP(ModelConfig(hidden=8, num_layers=1, num_freqs=2, time_dim=4, dataset="perov_5"), compute_schedules=False)
    gamma, options, label = resolve_sampler(model, "fast", None, None)
    assert gamma == pytest.approx(get_dataset("perov_5").step_lr("csp") * tuned.step_lr_scale)
    assert options["corrector_temperature"] == tuned.corrector_temperature and options["steps"] == 50
    # the name a file records: the preset's while nothing changes what runs, else "custom"
    assert label == "fast"
    assert resolve_sampler(model, "fast", 50, gamma, corrector_temperature=tuned.corrector_temperature,
                           precision="fp32")[2] == "fast"  # overrides equal to the preset's values
    assert resolve_sampler(model, "paper", model.config.timesteps, None)[2] == "paper"  # None means T steps
    # an option passed as None (a CLI flag left unset) keeps the preset's value: the tuned κ, not sample()'s 1.0
    unset = resolve_sampler(model, "fast", None, None, corrector_temperature=None, method=None)
    assert unset[1]["corrector_temperature"] == tuned.corrector_temperature and unset[1]["method"] == "pc"
    assert unset[2] == "fast"
    # options that cannot change what runs: rho on a uniform grid, the device
    assert resolve_sampler(model, "fast", None, None, rho=1.0, device="cpu")[2] == "fast"
    # precision "auto" counts as what it resolves to on the sampling device: fp32 (the default) only without native bf16
    import diffcsp.precision
    for native, label in [(True, "custom"), (False, "fast")]:
        monkeypatch.setattr(diffcsp.precision, "bf16_native", lambda device, native=native: native)
        assert resolve_sampler(model, "fast", None, None, precision="auto")[2] == label, native
    monkeypatch.undo()
    for steps, step_lr, overrides in [(100, None, {}), (None, 2 * gamma, {}), (None, None, {"corrector_temperature": 1.0}),
                                      (None, None, {"schedule": "power"}), (None, None, {"clip_lattice": False}),
                                      (None, None, {"precision": "bf16"}), (None, None, {"method": "ddim"})]:
        assert resolve_sampler(model, "fast", steps, step_lr, **overrides)[2] == "custom", (steps, step_lr, overrides)
    # a dataset without a paper step size: the fallback warns only when γ is not given
    own = DiffCSP(ModelConfig(hidden=8, num_layers=1, num_freqs=2, time_dim=4, dataset="my_lab"), compute_schedules=False)
    with pytest.warns(UserWarning, match="MP-20"):
        resolve_sampler(own, "paper", None, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_sampler(own, "paper", None, 1e-5)[0] == 1e-5
    assert not [w for w in caught if "MP-20" in str(w.message)]
    with pytest.raises(ValueError, match="corrector_temperature"):
        sample(model, [2], torch.tensor([8, 8]), steps=2, progress=False, corrector_temperature=1.5)
    with pytest.raises(ValueError, match="predictor_temperature"):
        sample(model, [2], torch.tensor([8, 8]), steps=2, progress=False, predictor_temperature=-0.1)
    assert resolve_sampler(model, "fast", None, None, predictor_temperature=0.5)[2] == "custom"


@pytest.mark.parametrize("method", [m for m in METHODS if m != "pc"])
def test_other_methods_return_the_known_crystals(lambdas, method):
    model = oracle_model(lambdas)
    result = sample(model, [len(c.numbers) for c in CRYSTALS], types_of(CRYSTALS), step_lr=1e-5, steps=50, seed=0,
                    progress=False, device="cpu", method=method)
    assert_returns(result, CRYSTALS)


@pytest.mark.parametrize("steps", [1000, 250, 50])
def test_generation_returns_the_known_crystals(lambdas, steps):
    model = oracle_model(lambdas, task="gen", key="order")
    result = sample(model, [len(c.numbers) for c in CRYSTALS], None, step_lr=get_dataset("perov_5").step_lr("gen"),
                    steps=steps, seed=1, progress=False, device="cpu")
    assert_returns(result, CRYSTALS)  # includes argmax of the one-hot types = A0


@pytest.mark.parametrize("method", ["pc", "heun"])
def test_generation_model_given_types_keeps_them(lambdas, method):
    """CSP with a generation model: given atom types, the type channel is held at them.

    The types given are not the oracle's (every atom Fe), so a sampler that sampled the types
    would return the oracle's. At every call the network must see the given one-hot noised to
    that call's level, √ᾱ_t·A + √(1−ᾱ_t)·ε, with one ε for the whole chain; lattice and
    coordinates come out as without types (same random stream, and this oracle ignores types)."""
    sizes = [len(c.numbers) for c in CRYSTALS]
    given = torch.full((sum(sizes),), 26)
    gamma = get_dataset("perov_5").step_lr("gen")
    model = oracle_model(lambdas, task="gen", key="order", record=True)
    result = sample(model, sizes, given, step_lr=gamma, steps=20, seed=1, progress=False, device="cpu", method=method)
    assert result.numbers.tolist() == given.tolist()
    onehot = np.eye(NUM_ELEMENTS)[given.numpy() - 1]
    eps = [(c["types"] - math.sqrt(AB[c["t"]]) * onehot) / math.sqrt(1 - AB[c["t"]]) for c in model.net.calls]
    assert len(eps) > 20 and {c["t"] for c in model.net.calls} >= {1, T}
    for e in eps:
        np.testing.assert_allclose(e, eps[0], atol=1e-3)  # float32 state against float64 ᾱ_t
    assert abs(eps[0].std() - 1) < 0.1  # a standard normal draw (1,400 numbers), not the one-hot
    free = oracle_model(lambdas, task="gen", key="order")
    unclamped = sample(free, sizes, None, step_lr=gamma, steps=20, seed=1, progress=False, device="cpu", method=method)
    assert unclamped.numbers.tolist() == types_of(CRYSTALS).tolist()  # the oracle's own types, when sampled
    np.testing.assert_array_equal(result.lattices, unclamped.lattices)
    np.testing.assert_array_equal(result.frac_coords, unclamped.frac_coords)


def test_chunks_keep_each_crystals_atoms(lambdas):
    """Chunks of 2 crystals (3 chunks for 5): types, counts and order stay with their crystal."""
    crystals = CRYSTALS[::-1] + CRYSTALS[:2]  # 7 crystals, repeated patterns across chunk borders
    model = oracle_model(lambdas)
    result = sample(model, [len(c.numbers) for c in crystals], types_of(crystals), step_lr=0.0, steps=50, seed=0,
                    batch_size=2, progress=False, device="cpu")
    assert result.numbers.tolist() == types_of(crystals).tolist()
    assert_returns(result, crystals)


# -- single steps against their closed forms -------------------------------------------------------
@pytest.mark.parametrize("kappa, tau", [(1.0, 1.0), (0.5, 0.6)])
def test_respaced_steps_match_their_closed_forms(lambdas, kappa, tau):
    """Recorded states of 1000 one-atom crystals, 10 steps (t → s skips ~110 times), corrector on:

    corrector:   F' = F − η·g + N(0, 2η), η = γ(σ_t/σ_1)²;
    coordinates: F_s = F' − (σ_t² − σ_s²)·g + N(0, σ_s²(σ_t² − σ_s²)/σ_t²);
    lattice:     L_s = √ᾱ_s β/(1−ᾱ_t)·L0 + √ᾱ_{t|s}(1−ᾱ_s)/(1−ᾱ_t)·L_t + N(0, β(1−ᾱ_s)/(1−ᾱ_t)),
                 β = 1 − ᾱ_t/ᾱ_s (the posterior q(L_s | L_t, L0): the oracle's x̂_0 is L0).

    Coordinate residuals are checked where their spread is small enough (< 0.1) for wrapping
    onto [−½, ½) not to distort them. With a corrector temperature κ the corrector's noise has
    κ times that spread, with a predictor temperature τ both predictor noises τ times theirs,
    and the means stay as they are.
    """
    crystal = Crystal([6], (2.5, 3.0, 3.5), (90, 100, 110), [[0.3, 0.6, 0.9]])
    model = oracle_model(lambdas, crystals=[crystal], record=True)
    B, gamma = 1000, 1e-6
    sample(model, [1] * B, torch.full((B,), 6), step_lr=gamma, steps=10, seed=0, batch_size=B, progress=False,
           device="cpu", corrector_temperature=kappa, predictor_temperature=tau)
    calls = model.net.calls
    times = [c["t"] for c in calls[::2]]
    assert [c["t"] for c in calls[1::2]] == times and times == [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1]

    def check(r: np.ndarray, std: float, what: str, mean_slack: float = 0.0) -> None:
        r = r.ravel()
        assert abs(r.mean()) < 5 * std / math.sqrt(r.size) + mean_slack, (what, r.mean(), std)
        assert abs(r.std() / std - 1) < 0.05, (what, r.std(), std)

    checked = {"corrector": 0, "predictor": 0}
    for i, t in enumerate(times[:-1]):
        s = times[i + 1]
        corr, pred, nxt = calls[2 * i], calls[2 * i + 1], calls[2 * i + 2]
        eta = gamma * (SIG[t] / SIG[1]) ** 2
        if math.sqrt(2 * eta) < 0.1:
            check(wrapped(pred["frac"] - corr["frac"] + eta * corr["score_f"]), kappa * math.sqrt(2 * eta), f"corrector t={t}")
            checked["corrector"] += 1
        var_t, var_s = SIG[t] ** 2, SIG[s] ** 2
        std = tau * math.sqrt(var_s * (var_t - var_s) / var_t)
        if std < 0.1:
            check(wrapped(nxt["frac"] - pred["frac"] + (var_t - var_s) * pred["score_f"]), std, f"coords {t}->{s}")
            checked["predictor"] += 1
        a_ts = AB[t] / AB[s]
        beta = 1 - a_ts
        mean = (math.sqrt(AB[s]) * beta / (1 - AB[t]) * crystal.lattice
                + math.sqrt(a_ts) * (1 - AB[s]) / (1 - AB[t]) * pred["lattice"])
        check(nxt["lattice"] - mean, tau * math.sqrt(beta * (1 - AB[s]) / (1 - AB[t])), f"lattice {t}->{s}", mean_slack=1e-3)
    assert checked["corrector"] >= 5 and checked["predictor"] >= 4, checked


def test_predictor_temperature_leaves_the_type_chain_alone(lambdas):
    """With the oracle, the one-hot types evolve on their own (their ε̂ depends on the types
    only), and τ rescales noise after it is drawn, so the random stream is the same: a cooler
    predictor must leave every recorded type state unchanged while the lattice path changes."""
    def run(tau: float) -> list[dict]:
        model = oracle_model(lambdas, task="gen", key="order", record=True)
        sample(model, [len(c.numbers) for c in CRYSTALS], None, step_lr=1e-6, steps=20, seed=3, progress=False,
               device="cpu", predictor_temperature=tau)
        return model.net.calls

    warm, cool = run(1.0), run(0.5)
    assert len(warm) == len(cool) == 40
    assert all(np.array_equal(w["types"], c["types"]) for w, c in zip(warm, cool))
    assert not np.allclose(warm[-1]["lattice"], cool[-1]["lattice"])
    with pytest.raises(ValueError, match="predictor_temperature"):
        sample(oracle_model(lambdas), [2], torch.tensor([8, 8]), steps=2, progress=False, method="ddim",
               predictor_temperature=0.5)


def test_last_step_adds_no_noise(lambdas):
    """At the last time (t = 1 → 0) the corrector and the predictor are deterministic given their
    inputs: the recorded state entering each call is the noise-free update of the one before."""
    gamma = 2e-5  # noise √(2γ)·z ≈ 0.006 would be plain to see
    model = oracle_model(lambdas, record=True)
    result = sample(model, [len(c.numbers) for c in CRYSTALS], types_of(CRYSTALS), step_lr=gamma, steps=3, seed=0,
                    progress=False, device="cpu")
    calls = model.net.calls
    assert [c["t"] for c in calls] == [1000, 1000, 500, 500, 1, 1]  # corrector + predictor per time
    corrector, predictor = calls[-2], calls[-1]
    eta = gamma * (SIG[1] / SIG[1]) ** 2
    d = wrapped(predictor["frac"] - (corrector["frac"] - eta * corrector["score_f"]))
    assert np.abs(d).max() < 1e-6
    d = wrapped(result.frac_coords - (predictor["frac"] - SIG[1] ** 2 * predictor["score_f"]))
    assert np.abs(d).max() < 1e-5
    final = (predictor["lattice"] - math.sqrt(1 - AB[1]) * predictor["eps_l"]) / math.sqrt(AB[1])
    for i in range(len(CRYSTALS)):
        np.testing.assert_allclose(Lattice(result.lattices[i]).abc, Lattice(final[i]).abc, atol=1e-5)
        np.testing.assert_allclose(Lattice(result.lattices[i]).angles, Lattice(final[i]).angles, atol=1e-3)


# -- seeds, lattice guard --------------------------------------------------------------------------
def test_seed_none_differs_fixed_seed_repeats():
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8), compute_schedules=False)
    kw = dict(num_atoms=[2, 3], atom_types=torch.tensor([6, 14, 8, 8, 12]), steps=3, progress=False)
    a, b = sample(model, seed=7, **kw), sample(model, seed=7, **kw)
    np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
    np.testing.assert_array_equal(a.lattices, b.lattices)
    c, d = sample(model, seed=None, **kw), sample(model, seed=None, **kw)
    assert not np.array_equal(c.frac_coords, d.frac_coords)
    assert not np.array_equal(c.lattices, d.lattices)
    assert not np.array_equal(a.frac_coords, c.frac_coords)


class Runaway(nn.Module):
    """A bad network: a huge lattice noise estimate at t = T, zero noise everywhere after."""

    def forward(self, types, frac, lattice, num_atoms, t):
        eps_l = torch.full_like(lattice, 1e4 if int(t[0]) == T else 0.0)
        return eps_l, torch.zeros_like(frac), None


@pytest.mark.parametrize("bound", [0.0, 20.0])
def test_lattice_guard(bound):
    """The x̂_0 guard (default bound 100 Å when the model records none) keeps the lattice
    bounded; without it the first step throws it to astronomical sizes."""
    model = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, lattice_bound=bound),
                    compute_schedules=False)
    model.net = Runaway()
    kw = dict(num_atoms=[2, 1], atom_types=torch.tensor([6, 6, 8]), step_lr=0.0, steps=10, progress=False, device="cpu")
    clipped = sample(model, **kw)
    limit = (bound or 100.0) * math.sqrt(3)  # an entry-wise bound b allows rows of length b√3
    lengths = np.linalg.norm(clipped.lattices, axis=-1)
    assert np.isfinite(lengths).all() and lengths.max() <= limit * (1 + 1e-6), lengths
    free = sample(model, clip_lattice=False, **kw)
    assert np.linalg.norm(free.lattices, axis=-1).min() > 1e4


# -- predict_split ---------------------------------------------------------------------------------
def test_predict_split_keeps_each_crystals_composition():
    from diffcsp.data import CrystalTable, structure_to_record
    from diffcsp.predict import predict_split

    structures = {
        "SrTiO3": Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "NaCl": Structure(Lattice.from_parameters(3.99, 3.99, 3.99, 60, 60, 60), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Si": Structure(Lattice.from_parameters(3.87, 3.87, 3.87, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "CaF2": Structure(Lattice.from_parameters(3.86, 3.86, 3.86, 60, 60, 60), ["Ca", "F", "F"],
                          [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
        "ZnO": Structure(Lattice.hexagonal(3.25, 5.21), ["Zn", "Zn", "O", "O"],
                         [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.382], [2 / 3, 1 / 3, 0.882]]),
    }
    records = [structure_to_record(s, id=name) for name, s in structures.items()]
    table = CrystalTable.from_records(records, source={"dataset": "perov_5", "split": "test"})
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, dataset="perov_5"), compute_schedules=False)
    preds = predict_split(model, table, num_samples=3, steps=3, batch_size=4, progress=False)
    assert [c["id"] for c in preds.crystals] == list(structures)
    for crystal, (name, structure) in zip(preds.crystals, structures.items()):
        assert crystal["formula"] == structure.composition.reduced_formula
        assert sorted(crystal["ground_truth"]["numbers"]) == sorted(site.specie.Z for site in structure)
        assert len(crystal["samples"]) == 3
        for s in crystal["samples"]:
            assert s["numbers"] == crystal["ground_truth"]["numbers"], name  # same atoms, same order
            assert len(s["frac_coords"]) == len(structure)
            assert np.shape(s["lattice"]) == (3, 3)  # (an untrained network: values are arbitrary)
        assert crystal["samples"][0]["frac_coords"] != crystal["samples"][1]["frac_coords"]  # independent samples
