"""The sampler benchmark's corrector-temperature window (``bench/sampler_curve.py``, ``belowN``/``aboveN``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffcsp.checkpoint import load_model
from diffcsp.data import load_split
from diffcsp.predict import predict_split

from conftest import load_bench_script


def test_temperature_window_cools_only_the_named_levels(datasets_dir: Path, tmp_path: Path):
    sc = load_bench_script("sampler_curve")
    setting = sc.Setting.parse("pc:20:temp0.3:below500")
    assert (setting.temperature, setting.window) == (0.3, "below500")
    assert setting.name == "pc:20:uniform:corrector:temp0.3:below500"
    model = load_model("carbon_24")
    table = load_split("carbon_24", "test", data_dir=datasets_dir, cache_dir=tmp_path, workers=1,
                       progress=False).subset(np.arange(2))

    def coords(kappa: float, window: str = "") -> np.ndarray:
        with sc.temperature_window(model, window):
            preds = predict_split(model, table, 1, steps=20, step_lr=1e-5, progress=False, corrector_temperature=kappa)
        return np.concatenate([np.ravel(s["frac_coords"]) for c in preds.crystals for s in c["samples"]])

    # references from the sampler alone: κ = 1 everywhere and κ = 0.3 everywhere
    warm, cool = coords(1.0), coords(0.3)
    assert not np.array_equal(warm, cool)
    # a window covering no level is the warm chain, one covering every level the cool chain
    assert np.array_equal(coords(0.3, "below0"), warm)
    assert np.array_equal(coords(0.3, "above0"), cool)
    halves = coords(0.3, "below500"), coords(0.3, "above500")
    assert all(not np.array_equal(h, warm) and not np.array_equal(h, cool) for h in halves)
    assert not np.array_equal(*halves)
    # the wrapper is gone after the block: the model samples as before
    assert "corrector_step" not in vars(model.coord_process)
    assert np.array_equal(coords(0.3), cool)
    with pytest.raises(SystemExit, match="cannot read"):
        sc.Setting.parse("pc:20:belowx")


def test_setting_parses_the_predictor_temperature():
    """``ptempT`` is read apart from ``tempK`` (the prefixes overlap) and named back the same way."""
    sc = load_bench_script("sampler_curve")
    setting = sc.Setting.parse("pc:1000:temp0.3:ptemp0.5")
    assert (setting.temperature, setting.predictor_temperature) == (0.3, 0.5)
    assert setting.name == "pc:1000:uniform:corrector:temp0.3:ptemp0.5"
    assert sc.Setting.parse(setting.name) == setting
    assert sc.Setting.parse("pc:1000:temp0.3").name == "pc:1000:uniform:corrector:temp0.3"  # τ = 1 is not named
