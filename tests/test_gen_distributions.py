"""The generation benchmark's distribution plot: the plotted quantities on hand-made crystals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gen_distributions.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gen_distributions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_properties_and_plot_on_hand_made_crystals(tmp_path: Path):
    gd = load_script()
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    diamond = Structure(Lattice.cubic(3.567), ["C"] * 8, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                                                           [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
    props = gd.properties([rocksalt, diamond])
    assert props["elements"].tolist() == [2, 1]
    assert props["atoms"].tolist() == [8, 8]
    # densities from molar masses and Avogadro's number, not from pymatgen's own property
    na_cl = 4 * (22.98977 + 35.453) / 6.02214076e23 / (5.64e-8) ** 3
    carbon = 8 * 12.011 / 6.02214076e23 / (3.567e-8) ** 3
    assert np.allclose(props["density"], [na_cl, carbon], rtol=1e-3)  # 2.165 and 3.52 g/cm³
    assert sorted(props["lengths"].tolist()) == sorted([5.64] * 3 + [3.567] * 3)
    out = tmp_path / "d.png"
    gd.plot(props, gd.properties([diamond, diamond]), "test", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
