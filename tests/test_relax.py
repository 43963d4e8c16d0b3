"""Relaxation and energy ranking with the pretrained CHGNet potential (``diffcsp.relax``).

Reference lattices are experimental (room temperature): rock-salt NaCl a = 5.640 Å, cubic SrTiO3
a = 3.905 Å. CHGNet (trained on PBE/PBE+U Materials Project data) overestimates lattice constants
by ~1 %, as GGA does, so we allow 3 %. The potential is loaded once for the module.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp
from typer.testing import CliRunner

try:
    import chgnet  # noqa: F401
except ImportError:  # `make test` installs the relax extra; CI must not silently skip
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        raise
    pytest.skip('needs the relax extra: pip install -e ".[relax]"', allow_module_level=True)

from diffcsp.cli import app
from diffcsp.metrics import evaluate_predictions
from diffcsp.predict import describe
from diffcsp.predictions import Predictions, structure_to_dict
from diffcsp.relax import (CONVERGED, DIVERGED, FAILED, INVALID, OPTIMIZERS, UNCONVERGED, load_potential, output_paths, rank_results,
                           relax_and_rank, relax_structures, top1_by_energy)

NACL_EXP_A = 5.640
SRTIO3_EXP_A = 3.905


@pytest.fixture(scope="module", autouse=True)
def _potential():
    """Load CHGNet once; inline (workers=1) relaxations in this process reuse it."""
    import torch

    torch.set_num_threads(1)
    return load_potential()


def nacl_primitive(a: float) -> Structure:
    """Rock-salt NaCl, 2-atom primitive cell of the conventional cube with edge ``a``."""
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def srtio3(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def distort(s: Structure, seed: int = 0) -> Structure:
    """Strain the cell by a few % (incl. shear) and rattle the atoms by 0.05 Å."""
    rng = np.random.default_rng(seed)
    out = s.copy()
    strain = np.eye(3) + np.array([[0.04, 0.02, 0.0], [0.02, -0.03, 0.01], [0.0, 0.01, 0.05]])
    lattice = Lattice(out.lattice.matrix @ strain)
    cart = lattice.get_cartesian_coords(out.frac_coords) + rng.normal(0, 0.05, (len(out), 3))
    return Structure(lattice, out.species, cart, coords_are_cartesian=True)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize(("make", "a_exp"), [(nacl_primitive, NACL_EXP_A), (srtio3, SRTIO3_EXP_A)], ids=["NaCl", "SrTiO3"])
def test_relaxation_recovers_known_lattice(make, a_exp, optimizer):
    start = distort(make(a_exp))
    [result] = relax_structures([start], fmax=0.02, steps=300, workers=1, progress=False, optimizer=optimizer)
    assert result.status == CONVERGED, result.message
    assert result.energy_per_atom < result.initial_energy_per_atom
    assert result.max_force < 0.03
    # Cube edge from the volume (the primitive NaCl cell holds a quarter of the cube).
    atoms_per_cube = 8 if make is nacl_primitive else 5
    a = (result.structure.volume * atoms_per_cube / len(result.structure)) ** (1 / 3)
    assert abs(a - a_exp) / a_exp < 0.03, f"a = {a:.3f} Å vs experiment {a_exp} Å"
    # ... and the cell shape comes back: equal edges, right angles of the cube
    lengths = np.array(result.structure.lattice.abc)
    assert np.ptp(lengths) / lengths.mean() < 0.01
    angles = result.structure.lattice.angles
    expected = 60.0 if make is nacl_primitive else 90.0
    assert np.allclose(angles, expected, atol=1.0), angles


def test_bad_structures_get_a_status_and_never_stop_the_batch():
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    isolated = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])  # no neighbour within CHGNet's 5 Å cut-off
    good = nacl_primitive(5.7)
    results = relax_structures([overlapping, good, isolated, distort(srtio3(3.9)), None], fmax=0.05, steps=2, workers=1,
                               progress=False)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert results[4].status == FAILED and "sampler" in results[4].message  # a sample the sampler could not produce
    # A carbon sheet 60 Å from its image: 540 Å³/atom, outside any real crystal: stopped as diverged.
    [blown_up] = relax_structures([Structure(Lattice.orthorhombic(3, 3, 60), ["C"], [[0, 0, 0]])], steps=2, workers=1,
                                  progress=False)
    assert blown_up.status == DIVERGED and "blew up" in blown_up.message and blown_up.energy_per_atom is None
    assert results[0].status == INVALID and results[0].energy_per_atom is None and "overlapping" in results[0].message
    assert results[1].status == CONVERGED  # already at CHGNet's minimum by symmetry
    assert results[2].status == FAILED and results[2].energy_per_atom is None and results[2].message
    assert results[3].status == UNCONVERGED and results[3].steps == 2 and np.isfinite(results[3].energy_per_atom)
    ranked = rank_results(results)
    assert sorted(i for c in ranked for i in c.members) == [1, 3]  # failed ones are not ranked


def test_ranking_merges_equivalent_structures():
    s = distort(srtio3(3.95), seed=1)
    moved = s.copy()
    moved.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 90))
    moved.translate_sites(range(len(moved)), [0.1, 0.2, 0.3])
    other = srtio3(3.95)
    other.replace_species({"Sr": "Ti", "Ti": "Sr"})  # wrong site assignment: a different, worse structure
    ranked = relax_and_rank([s, other, moved], fmax=0.1, steps=100, workers=1)
    assert [c.rank for c in ranked] == [1, 2]
    best, worse = ranked
    assert best.count == 2 and best.members == [0, 2]
    assert worse.count == 1 and worse.members == [1]
    assert best.e_above_min == 0.0 and worse.e_above_min > 100  # meV/atom
    assert re.fullmatch(r"\S+ \(\d+\)", best.spacegroup), best.spacegroup  # e.g. "Pm-3m (221)"


def test_worker_processes_give_the_same_results():
    structures = [nacl_primitive(5.8), distort(nacl_primitive(5.64))]
    inline = relax_structures(structures, fmax=0.05, steps=5, workers=1, progress=False)
    pooled = relax_structures(structures, fmax=0.05, steps=5, workers=2, progress=False)
    for a, b in zip(inline, pooled, strict=True):
        assert a.status == b.status and a.steps == b.steps
        assert a.energy_per_atom == pytest.approx(b.energy_per_atom, abs=1e-4)


def _tiny_predictions() -> Predictions:
    """Two 'test crystals' (SrTiO3, NaCl) with two samples each: the right structure and a wrong one."""
    sto, swapped = srtio3(3.93), srtio3(3.93)
    swapped.replace_species({"Sr": "Ti", "Ti": "Sr"})
    nacl, nacl_wrong = nacl_primitive(5.7), Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # CsCl type
    crystals = [
        {"id": "sto", "formula": "SrTiO3", "ground_truth": structure_to_dict(sto),
         "samples": [structure_to_dict(swapped), structure_to_dict(distort(sto))]},
        {"id": "nacl", "formula": "NaCl", "ground_truth": structure_to_dict(nacl),
         "samples": [structure_to_dict(distort(nacl)), structure_to_dict(nacl_wrong)]},
    ]
    return Predictions("csp", "perov_5", "test", 2, meta={}, crystals=crystals)


def test_relax_cli_and_top1_by_energy(tmp_path):
    src = _tiny_predictions().save(tmp_path / "preds.json.gz")
    res = CliRunner().invoke(app, ["relax", str(src), "--relax-steps", "30", "--fmax", "0.1", "--workers", "1"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "preds.relaxed.json.gz"
    top1, top1_unrelaxed = output_paths(out)
    relaxed = Predictions.load(out)
    sample = relaxed.crystals[0]["samples"][1]
    assert {"energy_per_atom", "status", "initial", "steps"} <= set(sample)
    assert sample["initial"]["energy_per_atom"] is not None
    for path in (top1, top1_unrelaxed):
        picked = Predictions.load(path)
        assert picked.num_samples == 1 and all(len(c["samples"]) == 1 for c in picked.crystals)
    # CHGNet prefers the right structure in both crystals: sample 1 of SrTiO3 and sample 0 of NaCl.
    picked = Predictions.load(top1)
    assert [c["samples"][0]["sample_index"] for c in picked.crystals] == [1, 0]
    report = evaluate_predictions(picked, workers=1, progress=False).summary()
    assert report["match_rate"] == 1.0
    first = evaluate_predictions(relaxed, workers=1, progress=False).summary()  # first sample: 1 of 2 right
    assert first["match_rate"] == 0.5 and first["match_rate_k"] == 1.0
    res = CliRunner().invoke(app, ["evaluate", str(top1), "--workers", "1"])
    assert res.exit_code == 0, res.output


def test_top1_by_energy_needs_energies_and_skips_failures():
    preds = _tiny_predictions()
    with pytest.raises(ValueError, match="diffcsp relax"):
        top1_by_energy(preds)
    for c in preds.crystals:
        for j, s in enumerate(c["samples"]):
            s.update(energy_per_atom=None if j == 0 else -1.0, status=FAILED if j == 0 else CONVERGED,
                     initial={**s, "energy_per_atom": -5.0 if j == 0 else -2.0})
    assert [c["samples"][0]["sample_index"] for c in top1_by_energy(preds).crystals] == [1, 1]
    assert [c["samples"][0]["sample_index"] for c in top1_by_energy(preds, initial=True).crystals] == [0, 0]


def test_relax_cli_rejects_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["relax", str(tmp_path / "missing.json.gz")])
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["relax", str(_tiny_predictions().save(tmp_path / "p.json.gz")), "--fmax", "0"])
    assert res.exit_code == 1 and "fmax" in res.output
    res = CliRunner().invoke(app, ["relax", str(tmp_path / "p.json.gz"), "--optimizer", "newton"])
    assert res.exit_code == 1 and "optimizer must be one of" in res.output
    # predict refuses it before loading a model or sampling: nothing is written
    res = CliRunner().invoke(app, ["predict", "SrTiO3", "-n", "1", "--relax", "--optimizer", "newton",
                                   "--out", str(tmp_path / "pred")])
    assert res.exit_code == 1 and "optimizer must be one of" in res.output
    assert not (tmp_path / "pred").exists()


def test_symprec_relaxes_within_the_space_group():
    rng = np.random.default_rng(3)
    cube = srtio3(4.0)
    lattice = Lattice(cube.lattice.matrix @ (np.eye(3) + 0.004 * rng.normal(size=(3, 3))))
    cart = lattice.get_cartesian_coords(cube.frac_coords) + rng.normal(0, 0.01, (5, 3))
    start = Structure(lattice, cube.species, cart, coords_are_cartesian=True)
    [r] = relax_structures([start], fmax=0.05, steps=100, workers=1, progress=False, symprec=0.1)
    assert r.status == CONVERGED, r.message
    assert describe(r.structure, symprec=1e-3)["spacegroup"] == "Pm-3m (221)"  # exact cube, not just within 0.1 Å
    assert r.structure.site_properties == {}


def test_predict_relax_end_to_end(tmp_path):
    """`diffcsp predict --relax` with the bundled model: raw samples kept, ranked files and table."""
    import csv

    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", "SrTiO3", "-n", "3", "-z", "1", "--steps", "50", "--relax",
                                   "--relax-steps", "20", "--fmax", "0.1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "samples").glob("*.cif") if not p.name.endswith("_sym.cif")) == \
        ["SrTiO3_00.cif", "SrTiO3_01.cif", "SrTiO3_02.cif"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    ranked = [r for r in rows if r["rank"]]
    assert ranked, rows
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(ranked) + 1))
    energies = [float(r["energy_per_atom"]) for r in ranked]
    assert energies == sorted(energies) and float(ranked[0]["e_above_min_meV"]) == 0.0
    assert sum(int(r["count"]) for r in rows) == 3  # every sample is accounted for, ranked or not
    assert sorted(int(i) for r in rows for i in r["samples"].split()) == [0, 1, 2]
    for r in ranked:
        assert (out / r["file"]).is_file() and r["file"].startswith(f"rank{int(r['rank']):02d}_SrTiO3")
        assert Structure.from_file(out / r["file"]).composition.reduced_formula == "SrTiO3"
    assert "distinct structure" in res.output


def test_pressure_compresses_diamond_by_its_bulk_modulus():
    """At 10 GPa diamond (bulk modulus 443 GPa, experiment) shrinks by ~P/B = 2.3 % in volume, and
    the ranked quantity is the enthalpy (E + PV)/N."""
    diamond = Structure(Lattice.cubic(3.567), ["C"] * 8, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                        [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])
    zero, squeezed = (relax_structures([diamond], fmax=0.02, steps=100, workers=1, progress=False, pressure=p)[0]
                      for p in (0.0, 10.0))
    assert zero.status == squeezed.status == CONVERGED
    shrink = 1 - squeezed.structure.volume / zero.structure.volume
    assert 0.015 < shrink < 0.035, shrink
    pv = 10.0 / 160.21766208 * squeezed.structure.volume / len(diamond)  # eV/atom
    assert squeezed.energy_per_atom - zero.energy_per_atom == pytest.approx(pv, abs=0.01)  # E barely changes


def test_unknown_optimizer_is_refused_before_any_work():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        relax_structures([nacl_primitive(NACL_EXP_A)], optimizer="newton", workers=1, progress=False)


def test_zero_steps_gives_single_point_energies_and_moves_nothing(tmp_path):
    """`--relax-steps 0` ranks the samples as sampled: energies from CHGNet's own API, structures untouched."""
    from diffcsp.relax import SINGLE_POINT

    distorted = distort(srtio3(3.9))
    results = relax_structures([distorted, nacl_primitive(5.7)], steps=0, workers=1, progress=False)
    assert results[0].status == SINGLE_POINT and results[0].steps == 0
    assert results[1].status == CONVERGED  # already below fmax by symmetry: nothing to do either way
    for r, s in zip(results, [distorted, nacl_primitive(5.7)]):
        assert np.allclose(r.structure.lattice.matrix, s.lattice.matrix, atol=1e-8)
        assert np.allclose(r.structure.cart_coords, s.cart_coords, atol=1e-8)
        reference = load_potential().model.predict_structure(s)["e"]  # CHGNet's energy per atom, independent of our ASE path
        assert r.energy_per_atom == pytest.approx(float(reference), abs=2e-3)
        assert r.initial_energy_per_atom == r.energy_per_atom
    # through the CLI: the single-point top-1 picks what the relaxed run's single-point top-1 picks
    src = _tiny_predictions().save(tmp_path / "preds.json.gz")
    res = CliRunner().invoke(app, ["relax", str(src), "--relax-steps", "0", "--workers", "1"])
    assert res.exit_code == 0, res.output
    _, top1_unrelaxed = output_paths(tmp_path / "preds.relaxed.json.gz")
    picked = Predictions.load(top1_unrelaxed)
    assert [c["samples"][0]["sample_index"] for c in picked.crystals] == [1, 0]
    with pytest.raises(ValueError, match="steps ≥ 0"):
        relax_structures([distorted], steps=-1, workers=1, progress=False)


def test_relax_cli_relaxes_a_generation_file(tmp_path):
    """`diffcsp relax` on a `diffcsp generate` file: the first --limit crystals relaxed, energies down, no top-1 files."""
    crystals = [structure_to_dict(distort(nacl_primitive(5.7))), structure_to_dict(distort(srtio3(3.9)))]
    src = Predictions("gen", "perov_5", "test", 1, meta={}, generated=crystals).save(tmp_path / "gen.json.gz")
    out = tmp_path / "gen.relaxed.json.gz"
    res = CliRunner().invoke(app, ["relax", str(src), "--relax-steps", "100", "--fmax", "0.1", "--workers", "1",
                                   "--limit", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    relaxed = Predictions.load(out)
    assert relaxed.task == "gen" and relaxed.crystals == [] and len(relaxed.generated) == 1
    [entry] = relaxed.generated
    assert entry["status"] == CONVERGED and entry["energy_per_atom"] < entry["initial"]["energy_per_atom"]
    volume = Structure(entry["lattice"], entry["numbers"], entry["frac_coords"]).volume
    assert abs((4 * volume) ** (1 / 3) - NACL_EXP_A) / NACL_EXP_A < 0.03  # the conventional cube holds 4 primitive cells
    assert not any(p.name.endswith(".top1.json.gz") for p in tmp_path.iterdir())
