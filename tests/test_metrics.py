"""CSP metrics on hand-built crystals with the real pymatgen StructureMatcher (no mocks).

Rock-salt NaCl (conventional 8-atom cell, primitive 2 atoms) and cubic SrTiO3 (5-atom primitive
perovskite) are transformed in ways that must not change the match (rotation, translation,
permutation, supercell) and in ways whose RMSE is known in closed form (one displaced atom).
"""

from __future__ import annotations

import csv
import json
import signal
import threading
import time

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from diffcsp.metrics import (
    RULES,
    CSPReport,
    CrystalResult,
    evaluate_csp,
    evaluate_predictions,
    is_structurally_valid,
    is_valid,
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
        "match_rate_k": 0.0, "rmse_k": None, "valid_rate_k": 0.0, "gt_valid_rate": 0.0, "timeouts": 0,
        "rule": "official",
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
                          progress=False, rule="structure")  # fmt: skip
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
    report = evaluate_csp(crystals, workers=2, timeout=0.01, progress=False, rule="structure")
    assert report.timeouts == 2 and report.summary()["match_rate"] == 0.0
    assert [r.sample_valid for r in report.rows] == [[True], [True]]


class SwallowingMatcher(StructureMatcher):
    """Library code that eats the interruption (as pymatgen's lazy ``except ImportError`` imports can)."""

    slept_fully = False

    def get_rms_dist(self, struct1, struct2):
        try:
            time.sleep(5)
            self.slept_fully = True
        except BaseException:
            pass
        return super().get_rms_dist(struct1, struct2)


def test_swallowed_alarm_still_times_out_promptly() -> None:
    matcher = SwallowingMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    assert rms_distance_limited(srtio3(), srtio3(), timeout=0.05, matcher=matcher) == (None, True)
    assert not matcher.slept_fully  # the alarm cut the 5 s sleep short (behaviour, not a wall-clock bound)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_off_main_thread_uses_a_worker_process() -> None:
    """SIGALRM cannot be installed from a thread; workers=1 then falls back to a one-process pool."""
    big = big_p1_crystal()
    out: list[CSPReport] = []
    thread = threading.Thread(target=lambda: out.append(
        evaluate_csp([("big", "SrTiO3", big, [big.copy()])], workers=1, timeout=0.01, progress=False,
                     rule="structure")))  # fmt: skip
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


# ------------------------------------------------------------------------------------------
# the official validity rule (the DiffCSP authors' compute_metrics.py)
# ------------------------------------------------------------------------------------------


def cubic_perovskite(a: str, b: str, x: str, lattice: float = 4.0) -> Structure:
    """Cubic ABX3 perovskite (5 atoms), built by hand; well separated atoms, so structurally valid."""
    return Structure(
        Lattice.cubic(lattice),
        [a, b, x, x, x],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def test_rules_and_default() -> None:
    assert RULES[0] == "official" and set(RULES) == {"official", "structure"}
    with pytest.raises(ValueError, match="unknown validity rule"):
        evaluate_csp([], rule="bogus")


@pytest.mark.parametrize(
    ("structure", "official"),
    [
        # compositions from Perov-5's test split that fail SMACT's charge-neutrality test
        (cubic_perovskite("Cs", "K", "O"), False),  # Cs+ K+ 3 O2-: net -4
        (cubic_perovskite("K", "Li", "N"), False),  # K+ Li+ and one N state for all three N
        (Structure(Lattice.cubic(6.0), ["Sr", "Sr", "N", "N", "N"],
                   [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]), False),  # Sr2N3
        (srtio3(), True),
        (nacl(), True),
        (Structure(Lattice.cubic(3.567), ["C"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]), True),  # elemental
    ],
)  # fmt: skip
def test_official_validity_needs_smact(structure: Structure, official: bool) -> None:
    assert is_structurally_valid(structure)
    assert is_valid(structure, "structure") is True
    assert is_valid(structure, "official") is official


def test_k1_pair_rule_ground_truth_failing_smact_is_never_matched() -> None:
    gt = cubic_perovskite("Cs", "K", "O")
    crystals = [("cko", "CsKO3", gt, [gt.copy()]), ("sto", "SrTiO3", srtio3(), [srtio3()])]
    official = evaluate_csp(crystals, workers=1, progress=False)
    structure = evaluate_csp(crystals, workers=1, progress=False, rule="structure")
    # identical prediction, yet not matched: its composition (the ground truth's) fails SMACT
    cko = official.rows[0]
    assert (cko.gt_valid, cko.comp_valid, cko.sample_valid, cko.matched_k1) == (False, False, [False], False)
    assert official.rows[1].matched_k1 and official.rows[1].comp_valid is True
    s = official.summary()
    assert (s["rule"], s["match_rate"], s["match_rate_k"], s["gt_valid_rate"]) == ("official", 0.5, 0.5, 0.5)
    assert s["rmse"] == pytest.approx(0.0, abs=1e-6)
    # the structure-only rule counts both
    assert structure.summary()["match_rate"] == 1.0 and structure.summary()["rule"] == "structure"
    assert structure.rows[0].comp_valid is None


def test_k1_pair_rule_structurally_invalid_ground_truth() -> None:
    """k = 1 needs a valid ground truth; k > 1 (the authors' RecEvalBatch) checks the samples only.

    The ground truth is SrTiO3 shrunk to a = 0.97 Å (Ti-O 0.485 Å < 0.5 Å: structurally invalid);
    StructureMatcher rescales volumes, so a normal SrTiO3 sample matches it with RMSE 0.
    """
    sto = srtio3()
    shrunk = Structure(Lattice.cubic(0.97), sto.species, sto.frac_coords)
    assert not is_structurally_valid(shrunk)
    assert rms_distance(sto, shrunk) == pytest.approx(0.0, abs=1e-6)
    one = evaluate_csp([("s", "SrTiO3", shrunk, [sto.copy()])], workers=1, progress=False)
    assert one.rows[0].sample_valid == [True] and not one.rows[0].gt_valid
    assert not one.rows[0].matched_k1 and one.summary()["match_rate"] == 0.0 == one.summary()["match_rate_k"]
    two = evaluate_csp([("s", "SrTiO3", shrunk, [sto.copy(), sto.copy()])], workers=1, progress=False)
    row = two.rows[0]
    assert not row.matched_k1 and row.matched_k and row.rmse_k == pytest.approx(0.0, abs=1e-6)
    assert two.match_rate_curve([1, 2]) == [(1, 0.0), (2, 1.0)]
    # the structure rule never looks at the ground truth
    assert evaluate_csp([("s", "SrTiO3", shrunk, [sto.copy()])], workers=1, progress=False,
                        rule="structure").rows[0].matched_k1  # fmt: skip


def test_k_samples_invalid_sample_cannot_be_the_match() -> None:
    # every sample is an exact copy of the ground truth, but their composition fails SMACT
    gt = cubic_perovskite("K", "Li", "N")
    crystals = [("kln", "KLiN3", gt, [gt.copy(), gt.copy(), gt.copy()])]
    official = evaluate_csp(crystals, workers=1, progress=False).rows[0]
    assert official.sample_valid == [False] * 3 and not official.matched_k and official.rmse_k is None
    assert evaluate_csp(crystals, workers=1, progress=False, rule="structure").rows[0].matched_k
    # a structurally invalid sample cannot be the match either; the valid, worse one is
    sto = srtio3()
    near = displaced(sto, 1, [0.1, 0, 0])
    crushed = Structure(Lattice.cubic(0.97), sto.species, sto.frac_coords)  # matches with RMSE 0 if allowed
    row = evaluate_csp([("sto", "SrTiO3", sto, [crushed, near])], workers=1, progress=False).rows[0]
    assert row.sample_valid == [False, True] and row.sample_rmse[0] is None
    assert row.rmse_k == pytest.approx(expected_one_atom_rmse(sto, 0.1), rel=1e-6)


def test_evaluate_cli_reports_the_rule(tmp_path) -> None:
    from typer.testing import CliRunner

    from diffcsp.cli import app

    gt = cubic_perovskite("Cs", "K", "O")
    preds = Predictions(
        task="csp", dataset="perov_5", split="test", num_samples=1,
        crystals=[{"id": "a", "formula": "CsKO3", "ground_truth": structure_to_dict(gt), "samples": [structure_to_dict(gt)]},
                  {"id": "b", "formula": "SrTiO3", "ground_truth": structure_to_dict(srtio3()),
                   "samples": [structure_to_dict(srtio3())]}],
    )  # fmt: skip
    path = preds.save(tmp_path / "p.json.gz")
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["evaluate", "--help"], terminal_width=200).output.split())
    assert "official rule" in help_text and "SMACT" in help_text and "--rule" in help_text
    for rule, expected in [(None, 0.5), ("official", 0.5), ("structure", 1.0)]:
        out = tmp_path / f"{rule}.json"
        args = ["evaluate", str(path), "--json", str(out), "--csv", str(tmp_path / f"{rule}.csv"), "--workers", "1"]
        res = runner.invoke(app, args + (["--rule", rule] if rule else []), terminal_width=200)
        assert res.exit_code == 0, res.output
        summary = json.loads(out.read_text())
        assert summary["rule"] == (rule or "official") and summary["match_rate"] == expected
        assert f"rule: {rule or 'official'}" in res.output
        with (tmp_path / f"{rule}.csv").open() as handle:
            assert {row["rule"] for row in csv.DictReader(handle)} == {rule or "official"}
    res = runner.invoke(app, ["evaluate", str(path), "--rule", "loose"])
    assert res.exit_code == 1 and "error: unknown validity rule 'loose'" in res.output


def test_official_rule_without_smact_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Without the optional libraries the default rule stops with one line saying what to install."""
    import importlib.util

    from typer.testing import CliRunner

    from diffcsp.cli import app
    from diffcsp.errors import DependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "smact" else real(name, *a))
    with pytest.raises(DependencyError, match=r"needs smact: pip install smact \(or evaluate with --rule structure\)"):
        evaluate_csp([("s", "SrTiO3", srtio3(), [srtio3()])], workers=1, progress=False)
    assert evaluate_csp([("s", "SrTiO3", srtio3(), [srtio3()])], workers=1, progress=False,
                        rule="structure").summary()["match_rate"] == 1.0  # fmt: skip
    preds = Predictions(task="csp", dataset="perov_5", split="test", num_samples=1, crystals=[
        {"id": "s", "formula": "SrTiO3", "ground_truth": structure_to_dict(srtio3()), "samples": [structure_to_dict(srtio3())]}])  # fmt: skip
    res = CliRunner().invoke(app, ["evaluate", str(preds.save(tmp_path / "p.json.gz"))])
    assert res.exit_code == 1 and "error: the official metric rule needs smact" in res.output
    assert "Traceback" not in res.output
