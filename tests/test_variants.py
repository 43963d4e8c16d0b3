"""The paper's ablations (``--variant``): each trains and samples; each removes exactly what it
claims to remove; the default keeps the symmetries; a saved variant comes back as itself.

Tiny float32 networks, real crystals from the bundled data fixture, every check to ~1e-5.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from diffcsp.batching import collate_table
from diffcsp.checkpoint import export_model, load_model
from diffcsp.cli import app
from diffcsp.cspnet import CSPNet
from diffcsp.data import load_split
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.sampler import _sample_chunk, sample, time_schedule
from diffcsp.variants import VARIANTS, stage_moves, two_stage_inputs, weighted_mse

T = 50  # a short diffusion keeps every test fast; nothing here depends on T
SMALL = {"hidden": 32, "num_layers": 2, "num_freqs": 8, "time_dim": 16, "timesteps": T}
TWO_STAGE = ["lattice-then-coords", "coords-then-lattice"]
PATHS = ["forward", "forward_edges", "forward_reference"]


@functools.cache
def score_normalisers() -> torch.Tensor:
    """λ_t of the coordinate process for T steps, estimated once (seconds of Monte Carlo)."""
    return DiffCSP(ModelConfig(**SMALL)).coord_process.lambdas.clone()


def make_model(variant: str, task: str = "csp", seed: int = 0) -> DiffCSP:
    torch.manual_seed(seed)
    model = DiffCSP(ModelConfig(task=task, variant=variant, **SMALL), compute_schedules=False)
    model.coord_process.lambdas.copy_(score_normalisers())
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb so no test relies on that point
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model.eval()


@pytest.fixture(scope="module")
def crystals(datasets_dir):
    """12 real MP-20 crystals of several sizes (so the size-bucketed path has several buckets)."""
    table = load_split("mp_20_mini", "val", datasets_dir, progress=False)
    batch = collate_table(table, np.arange(12))
    assert len(torch.unique(batch.num_atoms)) > 2
    return batch


def inputs(batch, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = batch.num_graphs
    return {"types": batch.atom_types, "frac": batch.frac_coords.clone(), "lattice": batch.lattice.clone(),
            "num_atoms": batch.num_atoms, "t": torch.randint(1, T + 1, (B,), generator=g)}


def run(net: CSPNet, x: dict, path: str = "forward", stage: torch.Tensor | None = None):
    with torch.no_grad():
        return getattr(net, path)(x["types"], x["frac"], x["lattice"], x["num_atoms"], x["t"], stage)


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.float()


def close(a, b, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def assert_differ(a, b, least: float = 1e-3) -> None:
    assert (a - b).abs().max().item() > least


# ----------------------------------------------------------------------------------------------
# every variant trains and samples
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,variant", [("csp", v) for v in VARIANTS] + [("gen", "no-fourier"), ("gen", "no-o3")])
def test_variant_trains_and_samples(crystals, task, variant):
    model = make_model(variant, task).train()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(4):
        losses = model.loss(crystals)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    changed = [k for k, v in model.net.state_dict().items() if not torch.equal(v, before[k])]
    assert "coord_out.weight" in changed and "lattice_out.weight" in changed
    if variant in TWO_STAGE:
        assert "stage_embed.weight" in changed
    result = sample(model, crystals.num_atoms, None if task == "gen" else crystals.atom_types, steps=4, seed=1,
                    progress=False)
    N, B = int(crystals.num_atoms.sum()), crystals.num_graphs
    assert result.frac_coords.shape == (N, 3) and result.lattices.shape == (B, 3, 3)
    assert np.isfinite(result.frac_coords).all() and np.isfinite(result.lattices).all() and result.finite.all()
    if task == "csp":
        assert np.array_equal(result.numbers, crystals.atom_types.numpy())


def test_unknown_or_unsupported_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model variant 'no-gram'"):
        ModelConfig(variant="no-gram")
    with pytest.raises(ValueError, match="CSP only"):
        ModelConfig(task="gen", variant="lattice-then-coords")


def test_default_network_is_built_as_before():
    """``joint`` builds the published network: no stage embedding, ψ of width 6K, the same keys
    as a CSPNet constructed without any variant option."""
    model = make_model("joint")
    plain = CSPNet(SMALL["hidden"], SMALL["num_layers"], SMALL["num_freqs"], SMALL["time_dim"])
    assert list(model.net.state_dict()) == list(plain.state_dict())
    assert model.net.stage_embed is None
    assert model.net.layers[0].edge_in.in_features == 2 * 32 + 9 + 6 * 8


# ----------------------------------------------------------------------------------------------
# no-o3: the lattice matrix as input breaks O(3) invariance; the default keeps it
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
@pytest.mark.parametrize("path", PATHS)
def test_default_is_o3_equivariant_and_no_o3_is_not(crystals, path, reflect):
    q = random_orthogonal(7, reflect)
    x = inputs(crystals)
    rotated = {**x, "lattice": x["lattice"] @ q.T}
    eps_l, eps_f, _ = run(make_model("joint").net, x, path)
    eps_l_r, eps_f_r, _ = run(make_model("joint").net, rotated, path)
    close(eps_f_r, eps_f)  # ε̂_F(L·Qᵀ) = ε̂_F(L)
    close(eps_l_r, eps_l @ q.T, atol=1e-4)  # ε̂_L(L·Qᵀ) = ε̂_L(L)·Qᵀ (entries of size ~10)

    net = make_model("no-o3").net
    assert net.layers[0].edge_in.in_features == 2 * 32 + 9 + 6 * 8  # 9 numbers either way
    eps_l, eps_f, _ = run(net, x, path)
    eps_l_r, eps_f_r, _ = run(net, rotated, path)
    assert_differ(eps_f_r, eps_f)
    assert_differ(eps_l_r, eps_l @ q.T)


def test_no_o3_sees_exactly_the_lattice_matrix(crystals):
    """Two lattices with the same L·Lᵀ (one rotated) are told apart by no-o3 only; two equal
    matrices give equal outputs (what it sees is L, nothing else about the lattice)."""
    x = inputs(crystals)
    q = random_orthogonal(3, False)
    rotated = {**x, "lattice": x["lattice"] @ q.T}
    for variant in ("no-o3", "joint"):
        net = make_model(variant).net
        same = torch.allclose(run(net, x)[1], run(net, rotated)[1], atol=1e-5)
        assert same == (variant == "joint")


# ----------------------------------------------------------------------------------------------
# no-fourier: raw wrapped differences as the edge input
# ----------------------------------------------------------------------------------------------
def test_no_fourier_edge_input_is_the_wrapped_difference(crystals):
    net = make_model("no-fourier").net
    assert net.layers[0].edge_in.in_features == 2 * 32 + 9 + 3
    d = torch.rand(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1  # (−1, 1)
    got = net._pair_input(d)
    # reference: the periodic image of d with the smallest magnitude, per axis
    images = d.unsqueeze(-1) + torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    want = images.gather(-1, images.abs().argmin(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert got.min() >= -0.5 and got.max() < 0.5


@pytest.mark.parametrize("path", PATHS)
def test_no_fourier_is_periodic_and_translation_invariant(crystals, path):
    """Away from the jump at ±½ (generic coordinates: real symmetric crystals often hold atoms
    exactly half a cell apart, where any shift may flip the sign of that input)."""
    net = make_model("no-fourier").net
    g = torch.Generator().manual_seed(1)
    x = {**inputs(crystals), "frac": torch.rand(crystals.frac_coords.shape, generator=g)}
    out = run(net, x, path)
    shift = torch.rand(crystals.num_graphs, 3, generator=g)[crystals.batch]  # one τ per crystal
    images = torch.randint(-2, 3, x["frac"].shape, generator=g).float()  # every atom to another image
    for frac in ((x["frac"] + shift) % 1.0, x["frac"] + images):
        moved = run(net, {**x, "frac": frac}, path)
        close(moved[0], out[0], atol=1e-4)
        close(moved[1], out[1], atol=1e-4)
    # and the coordinates do matter
    assert_differ(run(net, {**x, "frac": torch.rand(x["frac"].shape, generator=g)}, path)[1], out[1], least=1e-4)


@pytest.mark.parametrize("variant", ["no-fourier", "no-o3", "lattice-then-coords"])
def test_variant_fast_paths_equal_reference(crystals, variant):
    net = make_model(variant).net
    x = inputs(crystals)
    stage = (torch.arange(crystals.num_graphs) % 2) if variant in TWO_STAGE else None
    ref = run(net, x, "forward_reference", stage)
    for path in ("forward", "forward_edges"):
        for a, b in zip(run(net, x, path, stage), ref):
            if a is not None:
                close(a, b)


# ----------------------------------------------------------------------------------------------
# two-stage variants: the component not generated yet never reaches the network
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", TWO_STAGE)
def test_two_stage_network_never_sees_the_absent_component(crystals, variant, path):
    net = make_model(variant).net
    x = inputs(crystals)
    g = torch.Generator().manual_seed(2)
    lattice_first = variant == "lattice-then-coords"
    # the absent component of stage 0, changed to unrelated values
    other = ({**x, "frac": torch.rand(x["frac"].shape, generator=g)} if lattice_first
             else {**x, "lattice": 5 * torch.randn(x["lattice"].shape, generator=g)})
    B = crystals.num_graphs
    stage0, stage1 = torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)
    a, b = run(net, x, path, stage0), run(net, other, path, stage0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # no output changes at all
    # in stage 1 the same change does reach the network (so the check above can fail)
    a1, b1 = run(net, x, path, stage1), run(net, other, path, stage1)
    assert_differ(a1[1], b1[1])
    # mixed batch: crystals in stage 0 unaffected, crystals in stage 1 affected
    mixed = torch.arange(B) % 2
    a, b = run(net, x, path, mixed), run(net, other, path, mixed)
    if lattice_first:
        assert torch.equal(a[0][mixed == 0], b[0][mixed == 0])
        assert_differ(a[0][mixed == 1], b[0][mixed == 1])
    else:
        atoms0 = (mixed == 0)[crystals.batch]
        assert torch.equal(a[1][atoms0], b[1][atoms0])
        assert_differ(a[1][~atoms0], b[1][~atoms0])


def test_two_stage_networks_need_a_stage_and_others_refuse_one(crystals):
    x = inputs(crystals)
    with pytest.raises(ValueError, match="needs the stage"):
        run(make_model("lattice-then-coords").net, x)
    with pytest.raises(ValueError, match="no stages"):
        run(make_model("joint").net, x, stage=torch.zeros(crystals.num_graphs, dtype=torch.long))


@pytest.mark.parametrize("first", ["lattice", "coords"])
def test_two_stage_training_inputs(first):
    """Stage 1 gets the earlier component clean; each crystal trains one component only."""
    g = torch.Generator().manual_seed(0)
    num_atoms = torch.tensor([2, 3, 1, 2])
    atom_crystal = torch.repeat_interleave(torch.arange(4), num_atoms)
    stage = torch.tensor([0, 1, 0, 1])
    l0, lt = torch.randn(4, 3, 3, generator=g), torch.randn(4, 3, 3, generator=g)
    f0, ft = torch.rand(8, 3, generator=g), torch.rand(8, 3, generator=g)
    lat_in, frac_in, w_l, w_f = two_stage_inputs(first, stage, atom_crystal, l0, lt, f0, ft)
    if first == "lattice":
        want_lat = torch.stack([lt[0], l0[1], lt[2], l0[3]])
        want_frac = ft
        want_w_l = torch.tensor([1.0, 0, 1, 0])
    else:
        want_lat = lt
        want_frac = torch.cat([ft[0:2], f0[2:5], ft[5:6], f0[6:8]])
        want_w_l = torch.tensor([0.0, 1, 0, 1])
    assert torch.equal(lat_in, want_lat) and torch.equal(frac_in, want_frac)
    assert torch.equal(w_l, want_w_l)
    assert torch.equal(w_f, (1 - want_w_l)[atom_crystal])


def test_weighted_mse_is_the_mse_of_the_selected_rows():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 3, 3, generator=g), torch.randn(7, 3, 3, generator=g)
    w = torch.tensor([1.0, 0, 1, 1, 0, 0, 1])
    close(weighted_mse(pred, target, w), F.mse_loss(pred[w.bool()], target[w.bool()]))
    close(weighted_mse(pred, target, torch.ones(7)), F.mse_loss(pred, target))
    assert weighted_mse(pred, target, torch.zeros(7)).item() == 0.0


@pytest.mark.parametrize("method", ["pc", "ddim", "heun"])
@pytest.mark.parametrize("variant", TWO_STAGE)
def test_two_stage_sampling_order(crystals, variant, method):
    """Stage 0 moves only the first component and does not depend on the other one's value;
    the full run is stage 0, then stage 1 with the first component fixed at its result."""
    model = make_model(variant)
    na, types = crystals.num_atoms, crystals.atom_types
    times = time_schedule(T, 6)
    B, N = crystals.num_graphs, int(na.sum())
    lattice_first = variant == "lattice-then-coords"
    g = torch.Generator().manual_seed(3)
    absent = [{"frac_init": torch.rand(N, 3, generator=g)} if lattice_first else
              {"lattice_init": 4 * torch.randn(B, 3, 3, generator=g)} for _ in range(2)]

    def chunk(stage, **init):
        with torch.no_grad():
            return _sample_chunk(model, na, types, 1e-5, times, torch.Generator().manual_seed(0), method=method,
                                 stage=stage, **init)

    (_, f_a, l_a), (_, f_b, l_b) = chunk(0, **absent[0]), chunk(0, **absent[1])
    if lattice_first:
        assert torch.equal(l_a, l_b)  # the lattice chain ignores the coordinates
        assert torch.equal(f_a, absent[0]["frac_init"])  # which did not move
    else:
        assert torch.equal(f_a, f_b)
        assert torch.equal(l_a, absent[0]["lattice_init"])
    assert stage_moves(variant, 0) == (lattice_first, not lattice_first)
    _, f_full, l_full = chunk(None, **absent[0])
    if lattice_first:
        assert torch.equal(l_full, l_a)  # stage 1 keeps the lattice of stage 0 ...
        assert_differ(f_full, f_a)  # ... and generates the coordinates
    else:
        assert torch.equal(f_full, f_a)
        assert_differ(l_full, l_a)
    assert torch.isfinite(f_full).all() and torch.isfinite(l_full).all()


def test_two_stage_sampling_calls_the_network_twice_per_chain(crystals):
    """Two full chains: 2 × steps predictor calls, plus corrector calls only in the coordinate chain."""
    model = make_model("lattice-then-coords")
    calls = {"n": 0}
    forward = model.net.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    model.net.forward = counted
    sample(model, crystals.num_atoms[:3], crystals.atom_types[: int(crystals.num_atoms[:3].sum())], steps=5,
           step_lr=1e-5, progress=False)
    assert calls["n"] == 5 + 2 * 5


# ----------------------------------------------------------------------------------------------
# a saved variant comes back as itself
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_and_load_keep_the_variant(crystals, tmp_path, variant):
    model = make_model(variant)
    export_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["variant"] == variant
    loaded = load_model(tmp_path / "m")
    assert loaded.config.variant == variant
    assert list(loaded.state_dict()) == list(model.state_dict())
    x = inputs(crystals)
    stage = torch.arange(crystals.num_graphs) % 2 if variant in TWO_STAGE else None
    for a, b in zip(run(model.net, x, stage=stage), run(loaded.net, x, stage=stage)):
        if a is not None:
            assert torch.equal(a, b)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    """no-fourier weights do not fit a Fourier network: loading them under another variant fails."""
    export_model(make_model("no-fourier"), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    payload = json.loads(path.read_text())
    payload["config"]["variant"] = "joint"
    path.write_text(json.dumps(payload))
    from diffcsp.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")


def test_cli_trains_a_variant_and_samples_with_it(tmp_path, datasets_dir):
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run_dir), "--epochs", "1",
            "--limit", "8", "--batch-size", "4", "--hidden", "16", "--num-layers", "1", "--num-freqs", "4", "--quiet",
            "--threads", "1", "--variant", "coords-then-lattice"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "config.json").read_text())["model"]["variant"] == "coords-then-lattice"
    for path in (run_dir, run_dir / "checkpoints" / "last.ckpt"):
        assert load_model(path).config.variant == "coords-then-lattice"
    preds = tmp_path / "preds.json.gz"
    res = CliRunner().invoke(app, ["sample", "-c", str(run_dir), "--dataset", "perov_5", "--data-dir", str(datasets_dir),
                                   "--limit", "3", "--steps", "3", "--out", str(preds)])
    assert res.exit_code == 0, res.output
    assert preds.is_file()
    # the resumed run keeps its variant: --variant is refused there like every other model setting
    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--variant", "joint"])
    assert res.exit_code == 1 and "--variant" in res.output


@pytest.mark.parametrize("extra,message", [(["--variant", "no-gram"], "unknown model variant 'no-gram'"),
                                           (["--task", "gen", "--variant", "lattice-then-coords"], "CSP only")])
def test_cli_bad_variant_is_one_line(tmp_path, datasets_dir, extra, message):
    res = CliRunner().invoke(app, ["train", "--dataset", "perov_5", "--data-dir", str(datasets_dir),
                                   "--out", str(tmp_path / "r"), "--quiet", *extra])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip()] and res.output.startswith("error:")
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
