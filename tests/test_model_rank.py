"""bench/model_rank.py's score of a finished crystal (the model's denoising loss) on real crystals.

The benchmark's conclusions rest on this score, so it is tested like library code. The
references are physical, not the code's: a real crystal against the same crystal with its
atoms shaken, a crystal against its own rigid translation (the network sees only differences of
fractional coordinates), and a crystal against itself elsewhere in a list.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from diffcsp.checkpoint import load_model
from diffcsp.data import load_split
from diffcsp.model import DiffCSP, ModelConfig

from conftest import load_bench_script

LEVELS = (5, 50, 200)
_script = load_bench_script("model_rank")
denoising_losses, model_scores = _script.denoising_losses, _script.model_scores


@pytest.fixture(scope="module")
def model() -> DiffCSP:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("perov_5_wide")


@pytest.fixture(scope="module")
def crystals(datasets_dir) -> list:
    return load_split("perov_5", "test", datasets_dir, progress=False).structures()[:12]


def shaken(structure, angstrom: float, seed: int):
    out = structure.copy()
    rng = np.random.default_rng(seed)
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(0, angstrom, 3), frac_coords=False, to_unit_cell=True)
    return out


def test_real_crystals_score_better_than_shaken_ones(model, crystals):
    """The trained model finds real Perov-5 test crystals more typical than the same crystals
    with every atom moved by ~0.2 Å; an untrained network of the same kind tells them apart no
    better than chance would."""
    real = model_scores(model, crystals, levels=LEVELS)
    shook = model_scores(model, [shaken(s, 0.2, i) for i, s in enumerate(crystals)], levels=LEVELS)
    assert (real < shook).sum() >= 11, (real, shook)
    torch.manual_seed(0)
    untrained = DiffCSP(ModelConfig(**{**model.config.to_dict(), "hidden": 16, "num_layers": 1}))
    u_real = model_scores(untrained, crystals, levels=LEVELS)
    u_shook = model_scores(untrained, [shaken(s, 0.2, i) for i, s in enumerate(crystals)], levels=LEVELS)
    assert (u_real < u_shook).sum() < 11


def test_same_crystal_same_noise_anywhere_in_the_list(model, crystals):
    """Common random numbers: a crystal's score depends on the crystal, not on its place in the
    list, its neighbours or the batching."""
    first = model_scores(model, crystals[:3], levels=LEVELS)
    later = model_scores(model, [crystals[5], crystals[1], crystals[0], crystals[2]], levels=LEVELS, batch_size=2)
    np.testing.assert_allclose(later[[2, 1, 3]], first, rtol=1e-5)


def test_rigid_translation_does_not_change_the_score(model, crystals):
    moved = []
    for s in crystals[:4]:
        m = s.copy()
        m.translate_sites(list(range(len(m))), [0.31, 0.17, 0.62], frac_coords=True, to_unit_cell=True)
        moved.append(m)
    a = np.stack(denoising_losses(model, crystals[:4], levels=LEVELS))
    b = np.stack(denoising_losses(model, moved, levels=LEVELS))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6)


def test_bad_requests_are_clear_errors(model, crystals):
    with pytest.raises(ValueError, match="levels must lie in 1..1000"):
        model_scores(model, crystals[:1], levels=(0, 5))
    gen = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, task="gen"), compute_schedules=False)
    with pytest.raises(ValueError, match="CSP models"):
        model_scores(gen, crystals[:1])
