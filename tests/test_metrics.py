"""CSP metrics on hand-built crystals with the real pymatgen StructureMatcher (no mocks).

Rock-salt NaCl (conventional 8-atom cell, primitive 2 atoms) and cubic SrTiO3 (5-atom primitive
perovskite) are transformed in ways that must not change the match (rotation, translation,
permutation, supercell) and in ways whose RMSE is known in closed form (one displaced atom).
"""

from __future__ import annotations

import csv
import signal
import threading
import time

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from diffcsp.metrics import (
    CSPReport,
    CrystalResult,
    evaluate_csp,
    evaluate_predictions,
    is_structurally_valid,
    make_matcher,
    rms_distance,
    rms_distance_limited,
)
from diffcsp.predictions import Predictions, structure_to_dict


def nacl() -> Structure:
    """Conventional rock-salt cell, 8 atoms (built by hand: from_spacegroup costs ~2 s on first use)."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, np.vstack([fcc, (fcc + 0.5) % 1.0]))


def srtio3() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def displaced(s: Structure, index: int, vector: list[float]) -> Structure:
    """Copy of ``s`` with one site moved by a Cartesian vector (others fixed)."""
    cart = s.cart_coords.copy()
    cart[index] += np.asarray(vector, dtype=float)
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True)


def expected_one_atom_rmse(s: Structure, d: float) -> float:
    """RMSE when one of N atoms moves by d (volume unchanged).

    The matcher removes the mean displacement d/N, leaving d(1-1/N) on the moved atom and d/N on
    the N-1 others: sum of squares d²(N-1)/N, RMS d·sqrt(N-1)/N, normalised by (V/N)^(1/3).
    """
    n = len(s)
    return d * np.sqrt(n - 1) / n / (s.volume / n) ** (1 / 3)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def big_p1_crystal() -> Structure:
    """135-atom SrTiO3 3x3x3 supercell with random displacements: no symmetry, slow to match (~0.2 s)."""
    s = srtio3()
    s.make_supercell([3, 3, 3])
    noise = np.random.default_rng(0).normal(scale=0.05, size=(len(s), 3))
    return Structure(s.lattice, s.species, s.cart_coords + noise, coords_are_cartesian=True)


# ------------------------------------------------------------------------------------------
# validity
# ------------------------------------------------------------------------------------------


def test_validity_rules() -> None:
    assert is_structurally_valid(nacl()) and is_structurally_valid(srtio3())
    # distance threshold: two atoms 0.4 Å apart invalid, 0.6 Å apart valid
    for gap, ok in [(0.1, False), (0.4, False), (0.6, True)]:
        s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [gap, 0, 0]], coords_are_cartesian=True)
        assert is_structurally_valid(s) is ok
    # tiny volume (0.4^3 = 0.064 Å^3); a single atom is only judged on volume (CDVAE ignores self-images)
    assert not is_structurally_valid(Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]]))
    assert is_structurally_valid(Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]]))
    # non-finite lattice / coordinates are invalid, not errors
    bad = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    bad_lat = Structure(Lattice(np.full((3, 3), np.nan)), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    bad_xyz = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.inf, 0.5, 0.5]])
    assert is_structurally_valid(bad)
    assert not is_structurally_valid(bad_lat)
    assert not is_structurally_valid(bad_xyz)


# ------------------------------------------------------------------------------------------
# matching
# ------------------------------------------------------------------------------------------


def test_matcher_tolerances() -> None:
    m = make_matcher()
    assert (m.stol, m.angle_tol, m.ltol) == (0.5, 10, 0.3)
    assert m.as_dict()["attempt_supercell"] is False and m.as_dict()["primitive_cell"] is True


@pytest.mark.parametrize("make", [nacl, srtio3])
def test_invariances_match_with_zero_rmse(make) -> None:
    gt = make()
    rot = random_rotation(1)
    rotated = Structure(Lattice(gt.lattice.matrix @ rot.T), gt.species, gt.frac_coords)
    assert not np.allclose(rotated.lattice.matrix, gt.lattice.matrix)
    translated = Structure(gt.lattice, gt.species, (gt.frac_coords + [0.137, 0.42, 0.871]) % 1.0)
    perm = np.random.default_rng(2).permutation(len(gt))
    permuted = Structure(gt.lattice, [gt.species[i] for i in perm], gt.frac_coords[perm])
    everything = Structure(Lattice(gt.lattice.matrix @ rot.T), [gt.species[i] for i in perm],
                           (gt.frac_coords[perm] + [0.3, 0.6, 0.9]) % 1.0)  # fmt: skip
    for pred in [gt.copy(), rotated, translated, permuted, everything]:
        rmse = rms_distance(pred, gt)
        assert rmse is not None and rmse == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", [nacl, srtio3])
def test_supercells_match_both_ways(make) -> None:
    """Default primitive_cell=True reduces both sides first, so supercells match without
    attempt_supercell; without that reduction they would not (same-size requirement)."""
    gt = make()
    sc = gt.copy()
    sc.make_supercell([2, 1, 1])
    assert len(sc) == 2 * len(gt)
    assert rms_distance(sc, gt) == pytest.approx(0.0, abs=1e-6)
    assert rms_distance(gt, sc) == pytest.approx(0.0, abs=1e-6)
    no_reduction = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3, primitive_cell=False)
    assert rms_distance(sc, gt, no_reduction) is None
    # conventional NaCl (8 atoms) vs its 2-atom primitive cell
    if make is nacl:
        prim = gt.get_primitive_structure()
        assert len(prim) == 2
        assert rms_distance(prim, gt) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("d", [0.02, 0.1, 0.25])
@pytest.mark.parametrize("vector", [[0, 0, 1], [1, 1, 0], [0.3, -0.5, 0.8]])
def test_one_displaced_atom_gives_closed_form_rmse(d: float, vector: list[float]) -> None:
    gt = srtio3()  # already primitive, so the reduction cannot absorb the displacement
    v = np.asarray(vector, dtype=float)
    pred = displaced(gt, 1, d * v / np.linalg.norm(v))
    assert rms_distance(pred, gt) == pytest.approx(expected_one_atom_rmse(gt, d), rel=1e-6)


def test_isotropic_scaling_is_ignored() -> None:
    """scale=True: a uniformly expanded cell still matches with zero RMSE (shape, not density)."""
    gt = srtio3()
    big = Structure(Lattice(gt.lattice.matrix * 1.1), gt.species, gt.frac_coords)
    assert rms_distance(big, gt) == pytest.approx(0.0, abs=1e-6)


def test_different_composition_never_matches() -> None:
    gt = nacl()
    kcl = gt.copy()
    kcl.replace_species({"Na": "K"})
    assert rms_distance(kcl, gt) is None
    sto = srtio3()
    missing_o = sto.copy()
    missing_o.remove_sites([4])
    assert rms_distance(missing_o, sto) is None
    assert rms_distance(sto, nacl()) is None


# ------------------------------------------------------------------------------------------
# evaluator
# ------------------------------------------------------------------------------------------


def overlapping_nacl() -> Structure:
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]], coords_are_cartesian=True)


def test_overlapping_atoms_are_invalid_and_unmatched_even_against_themselves() -> None:
    s = overlapping_nacl()
    assert not is_structurally_valid(s)
    assert rms_distance(s, s) == pytest.approx(0.0, abs=1e-6)  # the matcher alone would accept it
    report = evaluate_csp([("x", "NaCl", s, [s.copy()])], workers=1, progress=False)
    row = report.rows[0]
    assert row.gt_valid is False
    assert (row.valid_k1, row.matched_k1, row.rmse_k1) == (False, False, None)
    assert report.summary()["match_rate"] == 0.0


def k_sample_crystals() -> list[tuple[str, str, Structure, list[Structure]]]:
    sto = srtio3()
    kcl = nacl()
    kcl.replace_species({"Na": "K"})
    return [
        # [bad (overlapping), good, better]: k=1 fails, k=3 matches with the better RMSE
        ("sto", "SrTiO3", sto, [displaced(sto, 2, [0, 0, 1.7]), displaced(sto, 1, [0.1, 0, 0]),
                                displaced(sto, 1, [0, 0.02, 0])]),  # fmt: skip
        # first sample matches exactly, second is a wrong compound
        ("nacl", "NaCl", nacl(), [nacl(), kcl]),
        # nothing matches: wrong composition and an invalid sample
        ("kcl", "KCl", kcl, [nacl(), overlapping_nacl()]),
    ]


def test_k_sample_rule_and_summary() -> None:
    report = evaluate_csp(k_sample_crystals(), workers=1, progress=False)
    sto, na, k = report.rows
    assert [r.id for r in report.rows] == ["sto", "nacl", "kcl"]
    assert sto.sample_valid == [False, True, True]
    assert (sto.matched_k1, sto.rmse_k1, sto.valid_k1) == (False, None, False)
    assert sto.matched_k
    assert sto.sample_rmse[1] == pytest.approx(expected_one_atom_rmse(srtio3(), 0.1), rel=1e-6)
    assert sto.rmse_k == pytest.approx(expected_one_atom_rmse(srtio3(), 0.02), rel=1e-6)
    assert na.matched_k1 and na.matched_k and na.rmse_k == pytest.approx(0.0, abs=1e-6)
    assert na.sample_rmse[1] is None and na.valid_rate == 1.0
    assert not k.matched_k and k.rmse_k is None and k.valid_rate == 0.5

    s = report.summary()
    assert s["n"] == 3 and s["k"] == 3 and s["timeouts"] == 0
    assert s["match_rate"] == pytest.approx(1 / 3)
    assert s["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert s["valid_rate"] == pytest.approx(2 / 3)
    assert s["match_rate_k"] == pytest.approx(2 / 3)
    assert s["rmse_k"] == pytest.approx(expected_one_atom_rmse(srtio3(), 0.02) / 2, rel=1e-6)
    assert s["valid_rate_k"] == pytest.approx(5 / 7)
    assert report.match_rate_curve([1, 2, 3, 20]) == [
        (1, pytest.approx(1 / 3)), (2, pytest.approx(2 / 3)), (3, pytest.approx(2 / 3)), (20, pytest.approx(2 / 3)),
    ]  # fmt: skip


def test_empty_inputs() -> None:
    report = evaluate_csp([], workers=1, progress=False)
    assert report.summary() == {
        "n": 0, "k": 0, "match_rate": 0.0, "rmse": None, "valid_rate": 0.0,
        "match_rate_k": 0.0, "rmse_k": None, "valid_rate_k": 0.0, "timeouts": 0,
    }  # fmt: skip
    row = CrystalResult(id="a", formula="X", n_samples=0, sample_valid=[], sample_rmse=[])
    assert (row.matched_k1, row.matched_k, row.rmse_k, row.valid_rate) == (False, False, None, 0.0)


def test_undecodable_sample_is_invalid() -> None:
    gt = nacl()
    singular = {"numbers": [11, 17], "lattice": [[0, 0, 0]] * 3, "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]]}
    nan = {"numbers": [11, 17], "lattice": [[float("nan")] * 3] * 3, "frac_coords": [[0, 0, 0], [0.5, 0.5, 0.5]]}
    report = evaluate_csp([("a", "NaCl", structure_to_dict(gt), [singular, nan, structure_to_dict(gt)])],
                          workers=1, progress=False)  # fmt: skip
    assert report.rows[0].sample_valid == [False, False, True]
    assert report.rows[0].matched_k and not report.rows[0].matched_k1


def test_timeout_counts_as_unmatched_and_restores_handler() -> None:
    big = big_p1_crystal()
    sentinel = signal.getsignal(signal.SIGALRM)
    rmse, timed_out = rms_distance_limited(big, big.copy(), timeout=0.01)  # unbounded: ~0.2 s
    assert (rmse, timed_out) == (None, True)
    assert signal.getsignal(signal.SIGALRM) is sentinel
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    # a generous limit lets the same pair finish
    rmse, timed_out = rms_distance_limited(srtio3(), srtio3(), timeout=30)
    assert rmse == pytest.approx(0.0, abs=1e-6) and not timed_out

    report = evaluate_csp([("big", "SrTiO3", big, [big.copy(), big.copy()])], workers=1, timeout=0.01,
                          progress=False)  # fmt: skip
    assert report.timeouts == 2 and report.summary()["timeouts"] == 2
    assert report.rows[0].sample_valid == [True, True] and not report.rows[0].matched_k


def test_parallel_equals_serial() -> None:
    crystals = k_sample_crystals()
    serial = evaluate_csp(crystals, workers=1, progress=False)
    parallel = evaluate_csp(crystals, workers=2, progress=False)
    assert [r.id for r in parallel.rows] == [r.id for r in serial.rows] == ["sto", "nacl", "kcl"]
    for a, b in zip(serial.rows, parallel.rows, strict=True):
        assert a.sample_valid == b.sample_valid
        assert [x is None for x in a.sample_rmse] == [x is None for x in b.sample_rmse]
        assert [x or 0.0 for x in a.sample_rmse] == pytest.approx([x or 0.0 for x in b.sample_rmse], abs=1e-9)
    assert parallel.summary() == pytest.approx(serial.summary())


def test_timeouts_fire_inside_worker_processes() -> None:
    big = big_p1_crystal()
    crystals = [("big1", "SrTiO3", big, [big.copy()]), ("big2", "SrTiO3", big, [big.copy()])]
    report = evaluate_csp(crystals, workers=2, timeout=0.01, progress=False)
    assert report.timeouts == 2 and report.summary()["match_rate"] == 0.0
    assert [r.sample_valid for r in report.rows] == [[True], [True]]


class SwallowingMatcher(StructureMatcher):
    """Library code that eats the interruption (as pymatgen's lazy ``except ImportError`` imports can)."""

    def get_rms_dist(self, struct1, struct2):
        try:
            time.sleep(5)
        except BaseException:
            pass
        return super().get_rms_dist(struct1, struct2)


def test_swallowed_alarm_still_times_out_promptly() -> None:
    matcher = SwallowingMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    start = time.perf_counter()
    assert rms_distance_limited(srtio3(), srtio3(), timeout=0.05, matcher=matcher) == (None, True)
    assert time.perf_counter() - start < 2.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_off_main_thread_uses_a_worker_process() -> None:
    """SIGALRM cannot be installed from a thread; workers=1 then falls back to a one-process pool."""
    big = big_p1_crystal()
    out: list[CSPReport] = []
    thread = threading.Thread(target=lambda: out.append(
        evaluate_csp([("big", "SrTiO3", big, [big.copy()])], workers=1, timeout=0.01, progress=False)))  # fmt: skip
    thread.start()
    thread.join(60)
    assert out and out[0].timeouts == 1


def test_csv_and_predictions_round_trip(tmp_path) -> None:
    crystals = k_sample_crystals()
    preds = Predictions(
        task="csp", dataset="toy", split="test", num_samples=3,
        crystals=[{"id": cid, "formula": f, "ground_truth": structure_to_dict(gt),
                   "samples": [structure_to_dict(s) for s in samples]} for cid, f, gt, samples in crystals],
    )  # fmt: skip
    loaded = Predictions.load(preds.save(tmp_path / "p.json.gz"))
    report = evaluate_predictions(loaded, workers=1, progress=False)
    direct = evaluate_csp(crystals, workers=1, progress=False)
    assert report.summary() == pytest.approx(direct.summary())

    path = report.to_csv(tmp_path / "out" / "csp.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["sto", "nacl", "kcl"]
    assert {"id", "formula", "matched", "rmse", "valid", "matched_k1", "rmse_k1", "valid_k1"} <= set(rows[0])
    assert rows[0]["matched"] == "True" and rows[0]["matched_k1"] == "False" and rows[0]["rmse_k1"] == ""
    assert float(rows[0]["rmse"]) == pytest.approx(expected_one_atom_rmse(srtio3(), 0.02), rel=1e-6)
    assert float(rows[2]["valid"]) == 0.5 and rows[2]["rmse"] == ""
    assert not list(path.parent.glob(".*.tmp"))

    with pytest.raises(ValueError, match="csp"):
        evaluate_predictions(Predictions(task="gen", dataset="toy", split="test", num_samples=1))


def test_report_is_plain_dataclass() -> None:
    assert CSPReport().summary()["n"] == 0
