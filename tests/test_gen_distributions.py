"""The generation benchmark's distribution plot: the plotted quantities on hand-made crystals."""

from __future__ import annotations

import importlib.util
import json
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
    # nearest neighbours from the geometry of the two lattices: a/2 in rock salt, a·√3/4 in diamond
    assert np.allclose(props["nn"], [5.64 / 2] * 8 + [3.567 * np.sqrt(3) / 4] * 8, rtol=1e-6)
    # a one-atom cell's nearest neighbour is its own image one lattice vector away
    assert np.allclose(gd.nearest_neighbour_distances(Structure(Lattice.cubic(2.5), ["Po"], [[0.3, 0.1, 0.9]])), [2.5])
    out = tmp_path / "d.png"
    gd.plot(props, gd.properties([diamond, diamond]), "test", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_plots_csp_samples_against_their_ground_truths(tmp_path: Path):
    """The CSP path end to end: a predictions file of two crystals, one sample each, through the CLI."""
    import subprocess
    import sys

    from diffcsp.predictions import Predictions, structure_to_dict

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    squeezed = rocksalt.copy()
    squeezed.scale_lattice(rocksalt.volume * 0.9)
    crystals = [{"id": f"x{i}", "formula": "NaCl", "ground_truth": structure_to_dict(rocksalt),
                 "samples": [structure_to_dict(squeezed)]} for i in range(2)]
    path = Predictions(task="csp", dataset="hand_made", split="test", num_samples=1, crystals=crystals).save(tmp_path / "p.json.gz")
    structures, reference, labels, _, _ = load_script().compared_sets(Predictions.load(path))
    assert [round(x.volume / rocksalt.volume, 6) for x in structures] == [0.9, 0.9]
    assert [x.volume for x in reference] == [rocksalt.volume] * 2 and labels == ("first samples", "ground truths")
    out = tmp_path / "csp.png"
    # rock salt's nearest neighbour is a/2 = 2.82 Å; the squeezed copy's 2.82·0.9^⅓ = 2.723 Å
    run = subprocess.run([sys.executable, str(SCRIPT), str(path), "--out", str(out), "--bond-window", "2.75,2.90"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    share = json.loads(run.stdout.strip().splitlines()[-1])["share_of_atoms"]
    assert share == {"first samples": 0.0, "ground truths": 1.0}
