"""CSPNet, its symmetries, the training loss and the sampler (docs/method.md).

Small float32 networks on random crystals; every symmetry is checked to ~1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcsp.batching import batch_from_arrays
from diffcsp.cspnet import NUM_ELEMENTS, CSPNet, fully_connected_edges
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.sampler import onehot_types, sample

ATOL = 1e-5


# (hidden, layers, K, num_atoms per crystal)
SETTINGS = [
    (32, 2, 8, [1, 3, 5]),
    (48, 3, 12, [4, 1, 7, 2, 20]),
    (64, 3, 16, [8, 8, 6, 13]),
    (32, 2, 8, [5, 5, 5, 5]),  # one size: the bucketed path runs without gathers
]


def make_net(hidden: int, layers: int, freqs: int, gen: bool, seed: int = 0) -> CSPNet:
    torch.manual_seed(seed)
    net = CSPNet(hidden=hidden, num_layers=layers, num_freqs=freqs, time_dim=32, predict_types=gen)
    # LayerNorms start at (1, 0); perturb so the tests do not rely on that special point
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return net.eval()


def make_crystals(num_atoms: list[int], gen: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    na = torch.tensor(num_atoms)
    N, B = int(na.sum()), len(num_atoms)
    if gen:
        types = torch.randn(N, NUM_ELEMENTS, generator=g)  # noisy one-hots
    else:
        types = torch.randint(1, NUM_ELEMENTS + 1, (N,), generator=g)
    return {
        "types": types,
        "frac": torch.rand(N, 3, generator=g),
        "lattice": 3 * torch.eye(3) + 0.4 * torch.randn(B, 3, 3, generator=g),  # well conditioned
        "num_atoms": na,
        "t": torch.randint(1, 1001, (B,), generator=g),
    }


def run(net: CSPNet, x: dict[str, torch.Tensor], reference: bool = False, grad: bool = False, fast: str = "forward"):
    """``fast``: which fast path — ``forward`` (size buckets) or ``forward_edges`` (edge list)."""
    fn = net.forward_reference if reference else getattr(net, fast)
    with torch.set_grad_enabled(grad):
        return fn(x["types"], x["frac"], x["lattice"], x["num_atoms"], x["t"])


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def batch_index(num_atoms: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)


params = pytest.mark.parametrize("gen", [False, True], ids=["csp", "gen"])
settings = pytest.mark.parametrize("hidden,layers,freqs,num_atoms", SETTINGS)


# ----------------------------------------------------------------------------------------------
# fast forward == reference forward
# ----------------------------------------------------------------------------------------------
fast_paths = pytest.mark.parametrize("path", ["forward", "forward_edges"])


@params
@settings
@fast_paths
def test_fast_equals_reference(gen, hidden, layers, freqs, num_atoms, path):
    net = make_net(hidden, layers, freqs, gen)
    x = make_crystals(num_atoms, gen)
    fast, ref = run(net, x, fast=path), run(net, x, reference=True)
    assert fast[0].shape == (len(num_atoms), 3, 3)
    assert fast[1].shape == (sum(num_atoms), 3)
    if gen:
        assert fast[2].shape == (sum(num_atoms), NUM_ELEMENTS)
    else:
        assert fast[2] is None and ref[2] is None
    for a, b in zip(fast, ref):
        if a is not None:
            assert torch.isfinite(a).all()
            close(a, b)


@params
@pytest.mark.parametrize("hidden,layers,freqs,num_atoms", SETTINGS[:2])
@fast_paths
def test_fast_equals_reference_float64(gen, hidden, layers, freqs, num_atoms, path):
    net = make_net(hidden, layers, freqs, gen).double()
    x = make_crystals(num_atoms, gen)
    x = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
    for a, b in zip(run(net, x, fast=path), run(net, x, reference=True)):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@params
@settings
@fast_paths
def test_fast_equals_reference_gradients(gen, hidden, layers, freqs, num_atoms, path):
    net = make_net(hidden, layers, freqs, gen).train()
    x = make_crystals(num_atoms, gen)
    g = torch.Generator().manual_seed(1)
    outs = run(net, x, grad=True)
    weights = [torch.randn(o.shape, generator=g) if o is not None else None for o in outs]

    def grads(reference: bool) -> dict[str, torch.Tensor]:
        net.zero_grad()
        loss = sum((o * w).sum() for o, w in zip(run(net, x, reference, grad=True, fast=path), weights) if o is not None)
        loss.backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    fast, ref = grads(False), grads(True)
    assert fast.keys() == ref.keys()
    assert any(k.startswith("layers.0.edge_in") for k in fast)
    for name in fast:
        diff = (fast[name] - ref[name]).norm()
        scale = ref[name].norm().clamp_min(1e-6)
        assert diff / scale <= 1e-4, (name, float(diff / scale))


# ----------------------------------------------------------------------------------------------
# symmetries (docs/method.md §Symmetries)
# ----------------------------------------------------------------------------------------------
@params
@settings
def test_permutation_within_crystals(gen, hidden, layers, freqs, num_atoms):
    net = make_net(hidden, layers, freqs, gen)
    x = make_crystals(num_atoms, gen)
    g = torch.Generator().manual_seed(2)
    offsets = np.concatenate([[0], np.cumsum(num_atoms)])
    perm = torch.cat([lo + torch.randperm(n, generator=g) for lo, n in zip(offsets[:-1], num_atoms)])
    assert not torch.equal(perm, torch.arange(len(perm)))
    xp = dict(x, types=x["types"][perm], frac=x["frac"][perm])
    out, outp = run(net, x), run(net, xp)
    close(outp[0], out[0])
    close(outp[1], out[1][perm])
    if gen:
        close(outp[2], out[2][perm])


@params
@settings
def test_permutation_of_crystals(gen, hidden, layers, freqs, num_atoms):
    net = make_net(hidden, layers, freqs, gen)
    x = make_crystals(num_atoms, gen)
    B = len(num_atoms)
    cperm = torch.roll(torch.randperm(B, generator=torch.Generator().manual_seed(3)), 1)
    if torch.equal(cperm, torch.arange(B)):
        cperm = cperm.flip(0)
    offsets = np.concatenate([[0], np.cumsum(num_atoms)])
    atom_perm = torch.cat([torch.arange(offsets[c], offsets[c + 1]) for c in cperm.tolist()])
    xp = {
        "types": x["types"][atom_perm], "frac": x["frac"][atom_perm], "lattice": x["lattice"][cperm],
        "num_atoms": x["num_atoms"][cperm], "t": x["t"][cperm],
    }
    out, outp = run(net, x), run(net, xp)
    close(outp[0], out[0][cperm])
    close(outp[1], out[1][atom_perm])
    if gen:
        close(outp[2], out[2][atom_perm])


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@params
@settings
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_o3_equivariance(gen, hidden, layers, freqs, num_atoms, reflect):
    net = make_net(hidden, layers, freqs, gen)
    x = make_crystals(num_atoms, gen)
    Q = random_orthogonal(hidden + layers, reflect)
    assert torch.det(Q).item() == pytest.approx(-1.0 if reflect else 1.0)
    xr = dict(x, lattice=(x["lattice"].double() @ Q.T).float())
    out, outr = run(net, x), run(net, xr)
    expected_l = (out[0].double() @ Q.T).float()
    close(outr[0], expected_l, atol=ATOL * max(1.0, float(expected_l.abs().max())))
    close(outr[1], out[1])
    if gen:
        close(outr[2], out[2])
    # Cartesian ε̂_L really co-rotates (not invariant): a generic Q changes it
    assert not torch.allclose(outr[0], out[0], atol=1e-3)


@params
@settings
def test_periodic_translation(gen, hidden, layers, freqs, num_atoms):
    net = make_net(hidden, layers, freqs, gen)
    x = make_crystals(num_atoms, gen)
    g = torch.Generator().manual_seed(4)
    batch = batch_index(x["num_atoms"])
    tau = torch.rand(len(num_atoms), 3, generator=g)  # a different shift for every crystal
    xt = dict(x, frac=(x["frac"] + tau[batch]) % 1.0)
    out, outt = run(net, x), run(net, xt)
    for a, b in zip(outt, out):
        if a is not None:
            close(a, b)
    # integer shifts of single atoms (F is only defined mod 1)
    shift = torch.randint(-3, 4, x["frac"].shape, generator=g).float()
    assert shift.abs().sum() > 0
    outi = run(net, dict(x, frac=x["frac"] + shift))
    for a, b in zip(outi, out):
        if a is not None:
            close(a, b)


@params
def test_not_trivially_invariant(gen):
    """Sanity: the symmetry tests would notice if the outputs ignored the geometry."""
    net = make_net(32, 2, 8, gen)
    x = make_crystals([4, 6], gen)
    out = run(net, x)
    moved = x["frac"].clone()
    moved[0] += 0.1  # one atom moved: not a symmetry
    out2 = run(net, dict(x, frac=moved))
    assert (out2[1] - out[1]).abs().max() > 1e-4
    out3 = run(net, dict(x, lattice=x["lattice"] * 1.1))  # strain: not a symmetry
    assert (out3[1] - out[1]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# graph
# ----------------------------------------------------------------------------------------------
def test_fully_connected_edges_small():
    src, dst = fully_connected_edges(torch.tensor([1, 3, 2]))
    expected = [(0, 0)]
    expected += [(i, j) for i in (1, 2, 3) for j in (1, 2, 3)]
    expected += [(i, j) for i in (4, 5) for j in (4, 5)]
    assert list(zip(src.tolist(), dst.tolist())) == expected


@pytest.mark.parametrize("num_atoms", [[1], [5], [2, 1, 4, 1], [20, 3, 52]])
def test_fully_connected_edges_general(num_atoms):
    src, dst = fully_connected_edges(torch.tensor(num_atoms))
    offsets = np.concatenate([[0], np.cumsum(num_atoms)])
    expected = {(i, j) for lo, hi in zip(offsets[:-1], offsets[1:]) for i in range(lo, hi) for j in range(lo, hi)}
    got = list(zip(src.tolist(), dst.tolist()))
    assert len(got) == sum(n * n for n in num_atoms)
    assert set(got) == expected
    assert src.dtype == torch.long and dst.dtype == torch.long


# ----------------------------------------------------------------------------------------------
# DiffCSP loss (docs/method.md §Training objective)
# ----------------------------------------------------------------------------------------------
TINY = dict(hidden=32, num_layers=2, num_freqs=8, time_dim=32, timesteps=100)


@pytest.fixture(scope="module")
def models() -> dict[str, DiffCSP]:
    torch.manual_seed(0)
    return {task: DiffCSP(ModelConfig(task=task, **TINY)) for task in ("csp", "gen")}


def random_batch(num_atoms: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    N = sum(num_atoms)
    lattices = 4 * np.eye(3) + 0.5 * rng.standard_normal((len(num_atoms), 3, 3))
    return batch_from_arrays(rng.integers(1, 101, N), rng.random((N, 3)), lattices, np.array(num_atoms))


@pytest.mark.parametrize("task", ["csp", "gen"])
def test_loss_runs_and_backward(models, task):
    model = models[task].train()
    batch = random_batch([5, 2, 8, 1])
    torch.manual_seed(5)
    losses = model.loss(batch)
    keys = {"loss", "loss_lattice", "loss_coord"} | ({"loss_type"} if task == "gen" else set())
    assert set(losses) == keys
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    cfg = model.config
    total = cfg.cost_lattice * losses["loss_lattice"] + cfg.cost_coord * losses["loss_coord"]
    if task == "gen":
        total = total + cfg.cost_type * losses["loss_type"]
    torch.testing.assert_close(losses["loss"], total)
    model.zero_grad()
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert grads["net.layers.0.edge_in.weight"].abs().sum() > 0
    if task == "gen":
        assert grads["net.type_out.weight"].abs().sum() > 0
        assert grads["net.type_embed.weight"].abs().sum() > 0
    # schedules are buffers, never trained
    assert not any("alpha_bars" in n or "lambdas" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("task", ["csp", "gen"])
def test_loss_matches_spec_by_hand(models, task):
    """Recompute the loss (docs/method.md §Training objective) by hand with the same random draws (order: t, ε_L, ε_F[, ε_A])."""
    model = models[task]
    batch = random_batch([3, 6, 1], seed=1)
    torch.manual_seed(11)
    losses = model.loss(batch)

    torch.manual_seed(11)
    B = batch.num_graphs
    t = torch.randint(1, model.config.timesteps + 1, (B,))
    eps_l = torch.randn_like(batch.lattice)
    eps_f = torch.randn_like(batch.frac_coords)
    ab = model.lattice_process.alpha_bars
    sig = model.coord_process.sigmas[t][batch.batch].unsqueeze(-1)
    lam = model.coord_process.lambdas[t][batch.batch].unsqueeze(-1)
    lat_t = ab[t].sqrt().view(-1, 1, 1) * batch.lattice + (1 - ab[t]).sqrt().view(-1, 1, 1) * eps_l
    frac_t = (batch.frac_coords + sig * eps_f) % 1.0
    from diffcsp.diffusion import wrapped_normal_direction

    target_f = wrapped_normal_direction(sig * eps_f, sig.expand_as(eps_f)) / lam.sqrt()
    if task == "gen":
        onehot = onehot_types(batch.atom_types)
        eps_a = torch.randn_like(onehot)
        ab_a = ab[t][batch.batch].unsqueeze(-1)
        types_in = ab_a.sqrt() * onehot + (1 - ab_a).sqrt() * eps_a
    else:
        types_in = batch.atom_types
    pl, pf, pa = model.net(types_in, frac_t, lat_t, batch.num_atoms, t)
    close(losses["loss_lattice"], ((pl - eps_l) ** 2).mean())
    close(losses["loss_coord"], ((pf - target_f) ** 2).mean())
    if task == "gen":
        close(losses["loss_type"], ((pa - eps_a) ** 2).mean())


# ----------------------------------------------------------------------------------------------
# sampler (docs/method.md §Sampling)
# ----------------------------------------------------------------------------------------------
NUM_ATOMS = [2, 5, 1, 3]


def run_sampler(model, seed, steps=5, **kw):
    types = None if model.is_gen else torch.tensor([8, 22, 38, 38, 8, 8, 8, 6, 14, 14, 8])
    return sample(model, NUM_ATOMS, atom_types=types, steps=steps, seed=seed, progress=False, step_lr=1e-5, **kw)


@pytest.mark.parametrize("task", ["csp", "gen"])
def test_sample_shapes_and_ranges(models, task):
    res = run_sampler(models[task], seed=0)
    N = sum(NUM_ATOMS)
    assert res.frac_coords.shape == (N, 3)
    assert res.lattices.shape == (len(NUM_ATOMS), 3, 3)
    assert res.numbers.shape == (N,)
    assert list(res.num_atoms) == NUM_ATOMS
    assert np.isfinite(res.frac_coords).all() and np.isfinite(res.lattices).all()
    assert (res.frac_coords >= 0).all() and (res.frac_coords < 1).all()
    if task == "gen":
        assert res.numbers.min() >= 1 and res.numbers.max() <= NUM_ELEMENTS
    else:
        assert res.numbers.tolist() == [8, 22, 38, 38, 8, 8, 8, 6, 14, 14, 8]
    numbers, lat, frac = res.crystal(1)
    assert len(numbers) == 5 and frac.shape == (5, 3) and lat.shape == (3, 3)


@pytest.mark.parametrize("task", ["csp", "gen"])
def test_sample_deterministic(models, task):
    a, b, c = (run_sampler(models[task], seed=s) for s in (0, 0, 1))
    for field in ("frac_coords", "lattices", "numbers"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.frac_coords, c.frac_coords)
    assert not np.array_equal(a.lattices, c.lattices)


def test_sample_full_schedule_and_chunks(models):
    """steps=None walks all T times; chunking by batch_size still gives valid output."""
    res = run_sampler(models["csp"], seed=3, steps=None, batch_size=3)
    assert (res.frac_coords >= 0).all() and (res.frac_coords < 1).all()
    assert np.isfinite(res.lattices).all()


def test_sample_csp_needs_types(models):
    with pytest.raises(ValueError):
        sample(models["csp"], [2, 3], atom_types=None, steps=2, progress=False)
    with pytest.raises(ValueError):
        sample(models["csp"], [2], atom_types=torch.tensor([1, 1]), steps=0, progress=False)


def test_onehot_types():
    oh = onehot_types(torch.tensor([1, 100, 8]))
    assert oh.shape == (3, NUM_ELEMENTS)
    assert oh.argmax(-1).tolist() == [0, 99, 7]
    assert torch.equal(oh.sum(-1), torch.ones(3))
    assert F.one_hot(torch.tensor([7]), NUM_ELEMENTS).float().equal(oh[2:3])


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_half_pairs_give_every_ordered_pair(n):
    """ψ_ij·Wᵀ for all n² ordered pairs, from the sines and cosines of the pairs i < j only,
    equals the product of the full Fourier features (computed independently, per pair)."""
    from diffcsp.cspnet import HalfPairs, fourier_features

    g = torch.Generator().manual_seed(n)
    K, H, c = 6, 7, 3
    f = torch.rand(c, n, 3, generator=g, dtype=torch.float64)
    w = torch.randn(H, 6 * K, generator=g, dtype=torch.float64)
    got = HalfPairs.of(f, K).project(w)
    diff = f.unsqueeze(1) - f.unsqueeze(2)  # [c, i, j] = f_j − f_i
    want = (fourier_features(diff.reshape(-1, 3), K) @ w.T).view(c, n, n, H)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
