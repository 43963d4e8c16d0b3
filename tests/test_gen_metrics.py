"""Ab initio generation metrics on small hand-made crystals (docs/method.md, "Evaluation")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

pytest.importorskip("smact")
pytest.importorskip("matminer")

from diffcsp import gen_metrics  # noqa: E402
from diffcsp.cdvae_constants import COMP_SCALER_MEANS, COMP_SCALER_STDS  # noqa: E402
from diffcsp.gen_metrics import (  # noqa: E402
    analyse_generated,
    cdvae_comp_scale,
    compute_fingerprints,
    coverage,
    evaluate_generation,
    reference_fingerprints,
    smact_validity,
    structural_validity,
    structures_hash,
    wasserstein_density,
    wasserstein_num_elements,
)


def perovskite(a: str, b: str, lattice: float) -> Structure:
    """Cubic ABO3 perovskite, 5 atoms."""
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(lattice), [a, b, "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


def rocksalt(a: str, b: str, lattice: float) -> Structure:
    """Rock-salt primitive cell, 2 atoms."""
    conv = Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return conv.get_primitive_structure()


def diamond(lattice: float = 3.567) -> Structure:
    """Diamond carbon primitive cell, 2 atoms."""
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(lattice), ["C"], [[0, 0, 0]])
    return conv.get_primitive_structure()


@pytest.fixture(scope="module")
def perovskites() -> list[Structure]:
    return [perovskite("Sr", "Ti", 3.905), perovskite("Ba", "Ti", 4.00), perovskite("Ca", "Ti", 3.84)]


@pytest.fixture(scope="module")
def mixed() -> list[Structure]:
    return [perovskite("Sr", "Ti", 3.905), rocksalt("Na", "Cl", 5.64), rocksalt("K", "Cl", 6.29)]


# ------------------------------------------------------------------ validity


@pytest.mark.parametrize("formula", ["NaCl", "SrTiO3", "BaTiO3", "Fe2O3", "Na4Cl4"])
def test_charge_neutral_compositions_are_valid(formula: str) -> None:
    assert smact_validity(Composition(formula))


@pytest.mark.parametrize("formula", ["NaO2", "Na2Cl", "NaCl2", "CsKO3", "KLiN3", "Sr2N3"])
def test_non_neutral_compositions_are_invalid(formula: str) -> None:
    # CsKO3, KLiN3, Sr2N3 are in Perov-5's test split: Cs+ K+ O2- (net -4); K+ Li+ with one N
    # state for all three N (2 + 3n = 0 has no integer solution); Sr2+ N (4 + 3n = 0, likewise).
    # NaO2: Na(+1) and one O state for both O cannot balance (SMACT has no superoxide O(-1/2));
    # Na2Cl would need Cl(-2); Na(-1)Cl(+2)-type balances fail the Pauling test.
    assert not smact_validity(Composition(formula))


@pytest.mark.parametrize("formula", ["C", "C8", "CuZn", "Cu3Au", "Fe"])
def test_elemental_and_all_metal_are_valid(formula: str) -> None:
    assert smact_validity(Composition(formula))


def test_uses_smact14_oxidation_states() -> None:
    # Sr is {+2, +4} in SMACT>=3's ICSD-24 default but {+1, +2} in the 2014 list CDVAE used;
    # Sr2O (Sr+1) is neutral only with the latter.
    assert smact_validity(Composition("Sr2O"))


def test_structural_validity() -> None:
    assert structural_validity(rocksalt("Na", "Cl", 5.64))
    overlap = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.25 Å apart
    assert not structural_validity(overlap)


# ------------------------------------------------------------------ coverage (no featurisation)


def test_coverage_needs_both_cutoffs_and_counts_missing_fingerprints() -> None:
    ref_s = [np.zeros(3), np.full(3, 10.0)]
    ref_c = [np.array([0.0, 0.0]), np.array([1.0, 1.0])]
    # gen 0: close to ref 0 in both spaces; gen 1: structure equal to ref 1 but composition far
    # (standardised by the reference mean 0.5 / std 0.5: distance 98*sqrt(2));
    # gen 2: fingerprint failed -> a miss that still counts in COV-P's denominator.
    gen_s = [np.zeros(3) + 0.01, np.full(3, 10.0), None]
    gen_c = [np.array([0.0, 0.0]), np.array([50.0, 50.0]), np.array([0.0, 0.0])]
    kw = dict(struct_cutoff=0.1, comp_scaler="reference")
    cov_r, cov_p = coverage(gen_s, gen_c, ref_s, ref_c, comp_cutoff=1.0, **kw)
    assert cov_r == pytest.approx(0.5)
    assert cov_p == pytest.approx(1 / 3)
    # a looser composition cut-off lets gen 1 cover ref 1
    cov_r, cov_p = coverage(gen_s, gen_c, ref_s, ref_c, comp_cutoff=1000.0, **kw)
    assert (cov_r, cov_p) == (pytest.approx(1.0), pytest.approx(2 / 3))


# ------------------------------------------------------------------ with real fingerprints


def test_fingerprint_shapes(mixed: list[Structure]) -> None:
    struct_fps, comp_fps = compute_fingerprints(mixed[:1], workers=1, progress=False)
    assert struct_fps[0].shape == (61,) and comp_fps[0].shape == (132,)


def test_parallel_matches_serial(mixed: list[Structure]) -> None:
    serial = compute_fingerprints(mixed, workers=1, progress=False)
    parallel = compute_fingerprints(mixed, workers=2, progress=False)
    for a, b in zip(serial[0] + serial[1], parallel[0] + parallel[1], strict=True):
        np.testing.assert_allclose(a, b)


def test_identical_sets_full_coverage_zero_distances(mixed: list[Structure]) -> None:
    out = evaluate_generation(mixed, mixed, struct_cutoff=0.4, comp_cutoff=10.0, workers=1, progress=False)
    assert out["n"] == 3
    assert out["struct_valid"] == out["comp_valid"] == out["valid"] == 1.0
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == 1.0
    assert out["wdist_density"] == pytest.approx(0.0, abs=1e-12)
    assert out["wdist_num_elems"] == pytest.approx(0.0, abs=1e-12)


def test_disjoint_sets_zero_coverage(perovskites: list[Structure]) -> None:
    carbon = [diamond(3.567), diamond(3.7)]
    out = evaluate_generation(
        carbon, perovskites, struct_cutoff=0.2, comp_cutoff=4.0, workers=1, progress=False
    )
    assert out["valid"] == 1.0  # elemental carbon is valid
    assert out["cov_recall"] == 0.0 and out["cov_precision"] == 0.0
    assert out["wdist_num_elems"] == pytest.approx(2.0)  # 1 element vs 3
    assert out["wdist_density"] > 1.0


def test_invalid_crystals_counted_and_excluded(mixed: list[Structure]) -> None:
    non_neutral = Structure(Lattice.cubic(4.0), ["Na", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    overlap = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    generated = [*mixed, non_neutral, overlap]
    kw = dict(struct_cutoff=0.4, comp_cutoff=10.0, workers=1, progress=False)
    out = evaluate_generation(generated, mixed, coverage_on="valid", **kw)
    assert out["n"] == 5
    assert out["struct_valid"] == pytest.approx(4 / 5)
    assert out["comp_valid"] == pytest.approx(4 / 5)
    assert out["valid"] == pytest.approx(3 / 5)
    assert out["cov_recall"] == 1.0 and out["cov_precision"] == 1.0  # 3 of 3 valid
    # property statistics only see the valid crystals, identical to the reference
    assert out["wdist_density"] == pytest.approx(0.0, abs=1e-12)
    assert out["wdist_num_elems"] == pytest.approx(0.0, abs=1e-12)
    # CDVAE's protocol: all generated crystals enter coverage, COV-P divides by all 5
    out_all = evaluate_generation(generated, mixed, **kw)
    assert out_all["cov_recall"] == 1.0
    assert 3 / 5 <= out_all["cov_precision"] <= 1.0


def test_kept_analysis_scores_like_a_fresh_one(mixed: list[Structure], perovskites: list[Structure]) -> None:
    """One analysis of a generated set, scored against two references, equals two fresh evaluations."""
    overlap = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    generated = [*mixed, overlap]
    kw = dict(struct_cutoff=0.4, comp_cutoff=10.0, workers=1, progress=False)
    analysis = analyse_generated(generated, workers=1, progress=False)
    assert analysis.valid.tolist() == [True, True, True, False]
    for reference in (mixed, perovskites):
        assert evaluate_generation(generated, reference, analysis=analysis, **kw) == evaluate_generation(
            generated, reference, **kw
        )
    with pytest.raises(ValueError, match="analysis covers 4 crystals, but 3"):
        evaluate_generation(mixed, mixed, analysis=analysis, **kw)
    # the kept analysis is what gets scored: one of another set changes the result
    other = analyse_generated([perovskites[0]] * 4, workers=1, progress=False)
    assert evaluate_generation(generated, mixed, analysis=other, **kw) != evaluate_generation(generated, mixed, **kw)


def test_wasserstein_values() -> None:
    a, b = rocksalt("Na", "Cl", 5.64), diamond()
    assert wasserstein_density([a], [b]) == pytest.approx(abs(a.density - b.density))
    assert wasserstein_num_elements([a, a], [b, b]) == pytest.approx(1.0)


# ------------------------------------------------------------------ reference cache


def test_reference_cache_is_reused(
    perovskites: list[Structure], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = gen_metrics.compute_fingerprints

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_metrics, "compute_fingerprints", counting)
    cache = tmp_path / "cache" / "ref_fps.npz"
    first = reference_fingerprints(perovskites, cache, workers=1, progress=False)
    assert cache.is_file() and calls == [3]
    mtime = os.stat(cache).st_mtime_ns

    second = reference_fingerprints(perovskites, cache, workers=1, progress=False)
    assert calls == [3], "second call recomputed instead of reading the cache"
    assert os.stat(cache).st_mtime_ns == mtime
    for x, y in zip(first[0] + first[1], second[0] + second[1], strict=True):
        np.testing.assert_array_equal(x, y)

    # a different reference set must not reuse the cache
    reference_fingerprints(perovskites[:2], cache, workers=1, progress=False)
    assert calls == [3, 2]


def test_structures_hash_is_content_based(perovskites: list[Structure]) -> None:
    s = perovskites[0]
    shifted = Structure(s.lattice, s.species, s.frac_coords + 1.0)  # same crystal, coords + 1
    assert structures_hash([s]) == structures_hash([shifted])
    assert structures_hash([s]) != structures_hash([perovskites[1]])
    assert structures_hash(perovskites) != structures_hash(perovskites[:2])


def test_constant_reference_feature_does_not_explode() -> None:
    # Carbon-24: every reference composition fingerprint is the same, up to float noise; that
    # noise must not become the unit of distance.
    base = np.array([1.0, 2.5, 300.0])
    ref_c = [base, base * (1 + 1e-16), base]
    ref_s = [np.zeros(2)] * 3
    cov_r, cov_p = coverage([np.zeros(2)], [base + 1e-12], ref_s, ref_c, 0.2, 4.0, comp_scaler="reference")
    assert (cov_r, cov_p) == (1.0, 1.0)


def test_collapsed_cell_is_not_fingerprinted() -> None:
    # CrystalNN would take ~40 s here; the crystal is invalid (volume < 0.1 Å³) anyway.
    tiny = Structure(Lattice.cubic(0.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    struct_fps, comp_fps = compute_fingerprints([tiny], workers=1, progress=False)
    assert struct_fps[0] is None and comp_fps[0] is not None


def test_coverage_takes_structure_and_composition_minima_separately():
    """CDVAE's rule: the nearest crystal in structure and in composition may be different ones."""
    gen_s, gen_c = [np.array([0.0, 0.0])], [np.array([0.0])]
    ref_s = [np.array([0.0, 0.0]), np.array([5.0, 5.0])]
    ref_c = [np.array([9.0]), np.array([0.0])]
    scale = (np.zeros(1), np.ones(1))
    cov_r, cov_p = gen_metrics.coverage(gen_s, gen_c, ref_s, ref_c, 0.1, 0.1, comp_scaler=scale)
    assert cov_p == 1.0  # structure-nearest is ref 0, composition-nearest is ref 1
    assert cov_r == 0.0  # ref 0: composition too far; ref 1: structure too far


# ------------------------------------------------------------------ CDVAE's composition scaler


def test_cdvae_scaler_on_a_hand_computed_magpie_vector() -> None:
    """NaCl's Magpie vector, standardised with CDVAE's CompScaler, against hand arithmetic.

    Magpie features come in blocks of six per element property (minimum, maximum, range, mean,
    avg_dev, mode), the first property being the atomic number: for NaCl (Z = 11, 17) the block
    is 11, 17, 6, 14, 3, 11. The statistics are CDVAE's published CompScalerMeans/Stds.
    """
    _, comp_fps = compute_fingerprints([rocksalt("Na", "Cl", 5.64)], workers=1, progress=False)
    raw = comp_fps[0]
    np.testing.assert_allclose(raw[:6], [11, 17, 6, 14, 3, 11])
    scaled = cdvae_comp_scale(raw[None, :])[0]
    # mean Z: (14 - 36.52738520455582) / 16.816765336550194, CDVAE's 4th mean and std
    assert scaled[3] == pytest.approx((14 - 36.52738520455582) / 16.816765336550194, rel=1e-12)
    assert scaled[3] == pytest.approx(-1.3395790, abs=1e-6)
    # minimum Z: (11 - 21.194441759304013) / 16.35781741152948
    assert scaled[0] == pytest.approx(-0.6232153, abs=1e-6)
    assert len(COMP_SCALER_MEANS) == len(COMP_SCALER_STDS) == 132 == len(raw)


def test_cdvae_scaler_replaces_nan_after_scaling() -> None:
    # CDVAE's StandardScaler.transform: (X - means) / stds first, then NaN -> 0. A missing
    # feature therefore sits at CDVAE's mean (0), not at -mean/std (what NaN -> 0 first would give).
    x = np.array(COMP_SCALER_MEANS, dtype=float) + np.array(COMP_SCALER_STDS) * 2.0
    x[0] = np.nan
    z = cdvae_comp_scale(x[None, :])[0]
    assert z[0] == 0.0
    np.testing.assert_allclose(z[1:], 2.0, rtol=1e-12)
    with pytest.raises(ValueError, match="132"):
        cdvae_comp_scale(np.zeros((1, 3)))


def test_coverage_uses_cdvae_scaler_by_default() -> None:
    """The cut-off is in CDVAE's standard deviations, not the reference set's.

    Two reference crystals differ only in feature 0, by 20 (reference std 10); the generated one
    sits 3 CDVAE standard deviations (3 * 16.357... = 49.07) below the first. CDVAE's scaler:
    distances 3 (<= 4, ref 0 covered) and 69.07 / 16.357 = 4.22 (ref 1 not); the reference
    scaler: 49.07 / 10 = 4.9 > 4, nothing covered.
    """
    ref_c = [np.array(COMP_SCALER_MEANS, dtype=float), np.array(COMP_SCALER_MEANS, dtype=float)]
    ref_c[1][0] += 20.0
    gen_c = [ref_c[0].copy()]
    gen_c[0][0] -= 3.0 * COMP_SCALER_STDS[0]
    ref_s, gen_s = [np.zeros(2), np.zeros(2)], [np.zeros(2)]
    assert coverage(gen_s, gen_c, ref_s, ref_c, 0.2, 4.0) == (0.5, 1.0)
    assert coverage(gen_s, gen_c, ref_s, ref_c, 0.2, 4.0, comp_scaler="cdvae") == (0.5, 1.0)
    assert coverage(gen_s, gen_c, ref_s, ref_c, 0.2, 4.0, comp_scaler="reference") == (0.0, 0.0)
    with pytest.raises(ValueError, match="comp_scaler"):
        coverage(gen_s, gen_c, ref_s, ref_c, 0.2, 4.0, comp_scaler="minmax")


def test_evaluate_generation_reports_its_scaler(mixed: list[Structure]) -> None:
    out = evaluate_generation(mixed[:1], mixed[:1], struct_cutoff=0.4, comp_cutoff=10.0, workers=1, progress=False)
    assert out["comp_scaler"] == "cdvae" and out["cov_recall"] == 1.0
    with pytest.raises(ValueError, match="comp_scaler"):
        evaluate_generation(mixed[:1], mixed[:1], 0.4, 10.0, workers=1, progress=False, comp_scaler="x")
