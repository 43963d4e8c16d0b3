"""Ab initio generation metrics (docs/method.md, "Evaluation"): validity, coverage and property statistics.

The definitions follow CDVAE's ``scripts/eval_utils.py`` / ``compute_metrics.py``, which the
DiffCSP paper reuses, so that numbers are comparable with the published tables:

* **Compositional validity** -- charge neutrality under SMACT's rules with the Pauling
  electronegativity test; elemental and all-metal compositions count as valid.
* **Structural validity** -- every periodic interatomic distance > 0.5 Å and volume > 0.1 Å³.
* **Coverage** (COV-R, COV-P) -- nearest-neighbour distances between generated and reference
  crystals in two fingerprint spaces (CrystalNN structure fingerprint, Magpie composition
  fingerprint standardised with CDVAE's fixed ``CompScaler`` statistics); a pair is "close"
  only when it is within *both* cut-offs.
* **Property statistics** -- Wasserstein distances between the density and number-of-elements
  distributions of the valid generated crystals and of the reference set.

Where this module departs from CDVAE it says so in the docstring concerned (missing
electronegativities under SMACT >= 3, no random 1000-crystal subsample, collapsed cells not
fingerprinted, the optional ``comp_scaler="reference"``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from diffcsp.cdvae_constants import COMP_SCALER_MEANS, COMP_SCALER_STDS
from diffcsp.fileio import atomic_write
from diffcsp.metrics import is_structurally_valid
from diffcsp.parallel import run_in_pool, run_inline, worker_count

__all__ = [
    "COMP_SCALERS",
    "FINGERPRINT_VERSION",
    "GeneratedAnalysis",
    "analyse_generated",
    "cdvae_comp_scale",
    "compute_fingerprints",
    "coverage",
    "evaluate_generation",
    "reference_cache_path",
    "reference_fingerprints",
    "smact_validity",
    "structural_validity",
    "structure_fingerprint",
    "structures_hash",
    "wasserstein_density",
    "wasserstein_num_elements",
]

#: Part of the reference-cache key: bump it whenever the fingerprint definition changes, so a
#: stale cache is recomputed instead of silently reused.
FINGERPRINT_VERSION = "crystalnn-ops-sitemean+magpie/v1"

#: Below this volume per atom (Å³) no structure fingerprint is attempted; real crystals have > 5.
MIN_VOLUME_PER_ATOM = 0.1

#: How composition fingerprints are standardised before coverage distances: ``"cdvae"`` with
#: CDVAE's fixed ``CompScaler`` statistics (the published protocol, the default), or
#: ``"reference"`` with the mean/std of the reference set itself (our earlier default).
COMP_SCALERS = ("cdvae", "reference")

#: CDVAE's smact_validity gives up (returns False) beyond this many oxidation-state combinations.
MAX_OX_COMBINATIONS = 1e7

Fingerprint = np.ndarray | None
T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------------------------


def _integer_counts(composition: Composition) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols and the smallest integer counts (counts divided by their gcd)."""
    comp = composition.element_composition  # drop oxidation-state decorations
    amounts = [comp[el] for el in comp.elements]
    if all(abs(a - round(a)) < 1e-6 for a in amounts):
        counts = [int(round(a)) for a in amounts]
    else:  # fractional occupancies: let pymatgen find the integer formula
        formula, _ = comp.get_integer_formula_and_factor()
        comp = Composition(formula)
        counts = [int(round(comp[el])) for el in comp.elements]
    g = math.gcd(*counts)
    symbols = tuple(el.symbol for el in comp.elements)
    return symbols, tuple(c // g for c in counts)


@lru_cache(maxsize=65536)
def _smact_valid(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """Cached core of :func:`smact_validity` (generated sets repeat compositions a lot)."""
    import smact
    from smact.screening import pauling_test

    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    try:
        space = smact.element_dictionary(symbols)
    except (NameError, KeyError, ValueError):
        return False  # an element SMACT has no data for cannot be shown to be neutral
    elements = [space[s] for s in symbols]
    # CDVAE ran SMACT 2.x, whose default ``oxidation_states`` was the 2014 list; SMACT >= 3
    # renamed it ``oxidation_states_smact14`` and made an ICSD-2024 list the default.
    ox_lists = [getattr(e, "oxidation_states_smact14", None) or e.oxidation_states or [] for e in elements]
    if math.prod(len(ox) for ox in ox_lists) > MAX_OX_COMBINATIONS:
        return False  # as CDVAE: too many combinations to enumerate counts as invalid
    enegs = [e.pauling_eneg for e in elements]
    # SMACT 2.x raised TypeError on a missing electronegativity and CDVAE then accepted the
    # combination ("no data: assume it is okay"); SMACT >= 3 returns False instead. Keep
    # CDVAE's behaviour by skipping the Pauling test when some electronegativity is unknown.
    eneg_known = all(x is not None for x in enegs)
    stoichs = [(c,) for c in counts]
    for ox_states in product(*ox_lists):
        ratios = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=max(counts))
        if isinstance(ratios, tuple):  # SMACT 2.x returned (exists, ratios)
            ratios = ratios[1]
        if not ratios:
            continue
        if not eneg_known or pauling_test(ox_states, enegs):
            return True
    return False


def smact_validity(composition: Composition) -> bool:
    """Charge neutrality under SMACT's rules, as CDVAE's ``smact_validity``.

    Elemental and all-metal (alloy) compositions are valid. Otherwise some assignment of one
    SMACT (2014 list) oxidation state per element must make the integer formula neutral and
    pass the Pauling test (cations less electronegative than anions). Compositions with an
    element unknown to SMACT are invalid.
    """
    symbols, counts = _integer_counts(composition)
    return _smact_valid(symbols, counts)


def structural_validity(structure: Structure, cutoff: float = 0.5, min_volume: float = 0.1) -> bool:
    """Structural validity (distances > 0.5 Å, volume > 0.1 Å³); delegates to :func:`diffcsp.metrics.is_structurally_valid`.

    One definition shared with CSP evaluation, so the two tasks can never disagree on it.
    """
    return is_structurally_valid(structure, cutoff=cutoff, min_volume=min_volume)


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------

_FEATURIZERS: dict[str, Any] = {}


def _featurizer(name: str) -> Any:
    """One featurizer per process (building them is not free; matminer imports are slow)."""
    if name not in _FEATURIZERS:
        if name == "crystalnn":
            from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

            _FEATURIZERS[name] = CrystalNNFingerprint.from_preset("ops")
        else:
            from matminer.featurizers.composition.composite import ElementProperty

            _FEATURIZERS[name] = ElementProperty.from_preset("magpie")
    return _FEATURIZERS[name]


def structure_fingerprint(structure: Structure) -> Fingerprint:
    """Mean over sites of the CrystalNN "ops" fingerprint (61 values); ``None`` if it fails.

    CDVAE and DiffCSP count a crystal whose fingerprint raises as invalid, in generation *and*
    in CSP (the official CSP validity rule, :mod:`diffcsp.metrics`), so this one function
    decides it for both. CrystalNN warns about missing oxidation states on every site; that is
    expected here (CDVAE featurises undecorated structures too), so warnings are silenced. A
    collapsed cell (volume per atom < :data:`MIN_VOLUME_PER_ATOM`) gets no fingerprint:
    CrystalNN's cost grows like 1/volume (40 s for two atoms in a 0.3 Å cube) and such a
    crystal is structurally invalid anyway.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if not structure.volume / max(len(structure), 1) >= MIN_VOLUME_PER_ATOM:  # NaN too
                raise ValueError("collapsed cell")
            cnn = _featurizer("crystalnn")
            site_fps = [cnn.featurize(structure, i) for i in range(len(structure))]
            return np.asarray(site_fps, dtype=float).mean(axis=0)
        except Exception:
            return None


def _fingerprint_one(structure: Structure) -> tuple[Fingerprint, Fingerprint]:
    """(structure fingerprint, composition fingerprint); an exception gives ``None``."""
    struct_fp = structure_fingerprint(structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            magpie = _featurizer("magpie").featurize(structure.composition)
            comp_fp: Fingerprint = np.asarray(magpie, dtype=float)
        except Exception:
            comp_fp = None
    return struct_fp, comp_fp


def _parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int | None, progress: bool, desc: str
) -> list[R]:
    """Order-preserving map over worker processes with a tqdm bar.

    Workers come from :func:`diffcsp.parallel.run_in_pool` (never a plain fork: the caller may
    have torch's OpenMP threads running). With one worker (or one item) it runs in-process.
    """
    n = len(items)
    workers = worker_count(workers, n)
    tasks = [(item,) for item in items]
    with tqdm(total=n, desc=desc, disable=not progress, unit="crystal") as bar:
        if workers <= 1 or n <= 1:
            return run_inline(fn, tasks, bar)
        preload = ["diffcsp.metrics", "diffcsp.gen_metrics", "matminer.featurizers.site.fingerprint",
                   "matminer.featurizers.composition.composite"]
        return run_in_pool(fn, tasks, workers, bar, preload=preload)


def compute_fingerprints(
    structures: Sequence[Structure], workers: int | None = None, progress: bool = True
) -> tuple[list[Fingerprint], list[Fingerprint]]:
    """Structure and composition fingerprints of every crystal, in parallel.

    Structure fingerprint: mean over sites of matminer's ``CrystalNNFingerprint`` ("ops"
    preset, 61 values). Composition fingerprint: matminer's Magpie ``ElementProperty`` (132
    values, raw -- may contain NaN for elements lacking data; :func:`coverage` standardises).
    A fingerprint whose computation raises is ``None`` (the crystal then cannot be covered).
    """
    pairs = _parallel_map(_fingerprint_one, list(structures), workers, progress, "fingerprints")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def structures_hash(structures: Iterable[Structure]) -> str:
    """Content hash (species, lattice, fractional coordinates to 1e-6) plus fingerprint version.

    Used as the reference-cache key, so a changed split (or fingerprint definition, or
    matminer version) never reuses stale fingerprints.
    """
    import matminer

    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_VERSION}|matminer-{getattr(matminer, '__version__', '?')}".encode())
    count = 0
    for s in structures:
        numbers = np.array([site.specie.Z for site in s], dtype=np.int64)
        lattice = np.round(np.asarray(s.lattice.matrix, dtype=np.float64), 6) + 0.0
        frac = (np.round(np.asarray(s.frac_coords, dtype=np.float64) % 1.0, 6) % 1.0) + 0.0
        h.update(np.int64(len(numbers)).tobytes())
        h.update(numbers.tobytes())
        h.update(lattice.tobytes())
        h.update(frac.tobytes())
        count += 1
    h.update(np.int64(count).tobytes())
    return h.hexdigest()


def _stack(fps: Sequence[Fingerprint]) -> tuple[np.ndarray, np.ndarray]:
    """List with ``None`` holes -> (n, d) float array (NaN rows for holes), boolean ok-mask."""
    ok = np.array([fp is not None for fp in fps], dtype=bool)
    dim = next((len(fp) for fp in fps if fp is not None), 0)
    arr = np.full((len(fps), dim), np.nan)
    for i, fp in enumerate(fps):
        if fp is not None:
            arr[i] = fp
    return arr, ok


def _unstack(arr: np.ndarray, ok: np.ndarray) -> list[Fingerprint]:
    return [arr[i].copy() if ok[i] else None for i in range(len(ok))]


def reference_cache_path(dataset: str, split: str, n: int) -> Path:
    """Where the fingerprints of the first ``n`` crystals of a reference split are cached (the
    file's content hash still decides whether a cache is reused, see :func:`reference_fingerprints`)."""
    from diffcsp.registry import default_cache_dir

    return default_cache_dir() / "fingerprints" / f"{dataset}-{split}-{n}.npz"


def reference_fingerprints(
    structures: Sequence[Structure],
    cache_path: Path | str | None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[Fingerprint], list[Fingerprint]]:
    """:func:`compute_fingerprints` for the reference set, cached on disk.

    ``cache_path`` is an ``.npz`` file holding the fingerprints and the :func:`structures_hash`
    of the set they belong to; a file for a different set (or fingerprint version) is
    recomputed and replaced. Written atomically, so a killed run never leaves a torn cache.
    ``None`` disables caching.
    """
    structures = list(structures)
    key = structures_hash(structures) if cache_path is not None else ""
    if cache_path is not None:
        cache_path = Path(cache_path)
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as data:
                    if str(data["key"]) == key:
                        return (
                            _unstack(data["struct"], data["struct_ok"]),
                            _unstack(data["comp"], data["comp_ok"]),
                        )
            except (OSError, KeyError, ValueError):
                pass  # unreadable or foreign file: recompute and overwrite
    struct_fps, comp_fps = compute_fingerprints(structures, workers=workers, progress=progress)
    if cache_path is not None:
        s_arr, s_ok = _stack(struct_fps)
        c_arr, c_ok = _stack(comp_fps)
        with atomic_write(cache_path) as handle:
            np.savez(handle, key=np.array(key), struct=s_arr, struct_ok=s_ok, comp=c_arr, comp_ok=c_ok)
    return struct_fps, comp_fps


# --------------------------------------------------------------------------------------------
# Coverage and property statistics
# --------------------------------------------------------------------------------------------


def cdvae_comp_scale(fps: np.ndarray) -> np.ndarray:
    """CDVAE's ``CompScaler.transform``: ``(X - means) / stds`` with its fixed statistics, then NaN -> 0.

    The order matters: a feature matminer could not compute (NaN) becomes 0 *after* scaling,
    i.e. it sits at CDVAE's mean, not at ``-mean/std``. Statistics: :mod:`diffcsp.cdvae_constants`.
    """
    x = np.asarray(fps, dtype=float)
    if x.shape[-1] != len(COMP_SCALER_MEANS):
        raise ValueError(
            f"CDVAE's composition scaler needs {len(COMP_SCALER_MEANS)}-value Magpie fingerprints, got {x.shape[-1]}"
        )
    z = (x - np.asarray(COMP_SCALER_MEANS)) / np.asarray(COMP_SCALER_STDS)
    return np.where(np.isnan(z), 0.0, z)


def _standardise(
    gen: np.ndarray, ref: np.ndarray, scaler: str | tuple[np.ndarray, np.ndarray] = "cdvae"
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise generated and reference composition fingerprints the same way.

    ``"cdvae"`` (default): :func:`cdvae_comp_scale`, as the published CDVAE/DiffCSP numbers.
    ``"reference"``: per-feature mean/std of the reference set itself (std 0, or below float
    noise, -> 1), NaN -> 0 afterwards; this needs no external constants but makes the cut-off
    depend on the reference's spread (on Perov-5's narrow chemistry it is much stricter).
    ``(mean, std)``: a fixed scaler of your own, treated like ``"reference"``.
    """
    if isinstance(scaler, str):
        if scaler == "cdvae":
            return cdvae_comp_scale(gen), cdvae_comp_scale(ref)
        if scaler != "reference":
            raise ValueError(f"comp_scaler must be one of {', '.join(COMP_SCALERS)} or (mean, std), not {scaler!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            mean = np.nanmean(ref, axis=0)
            std = np.nanstd(ref, axis=0)
    else:
        mean, std = (np.asarray(x, dtype=float) for x in scaler)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    # "std 0" includes float noise: a feature constant over the reference (all of Carbon-24)
    # can come out as 1e-16, which would blow any tiny difference up to ~1e16.
    std = np.where(np.isfinite(std) & (std > 1e-8 * np.maximum(1.0, np.abs(mean))), std, 1.0)
    return (
        np.nan_to_num((gen - mean) / std, nan=0.0, posinf=0.0, neginf=0.0),
        np.nan_to_num((ref - mean) / std, nan=0.0, posinf=0.0, neginf=0.0),
    )


def coverage(
    gen_struct_fps: Sequence[Fingerprint],
    gen_comp_fps: Sequence[Fingerprint],
    ref_struct_fps: Sequence[Fingerprint],
    ref_comp_fps: Sequence[Fingerprint],
    struct_cutoff: float,
    comp_cutoff: float,
    comp_scaler: str | tuple[np.ndarray, np.ndarray] = "cdvae",
) -> tuple[float, float]:
    """(COV-R, COV-P) as CDVAE's ``compute_cov``.

    Euclidean distances between every generated and every reference crystal, separately on
    structure fingerprints and on composition fingerprints standardised by ``comp_scaler``
    (default ``"cdvae"``, CDVAE's fixed statistics; see :func:`_standardise`). COV-R: fraction of reference crystals whose nearest
    generated crystal in structure is within the structure cut-off and whose nearest generated
    crystal in composition is within the composition cut-off (``<=``; the two nearest crystals
    may differ: CDVAE takes the two minima separately). COV-P: the same per generated crystal. As in CDVAE, a generated crystal without fingerprints is dropped
    from the distance computation but still counts in COV-P's denominator (a miss). A
    reference crystal without fingerprints is left out of COV-R altogether (CDVAE would crash;
    no model could cover it). Pass only the generated crystals you want considered.
    """
    if len(gen_struct_fps) != len(gen_comp_fps) or len(ref_struct_fps) != len(ref_comp_fps):
        raise ValueError("structure and composition fingerprint lists differ in length")
    n_gen = len(gen_struct_fps)
    gen_keep = [i for i in range(n_gen) if gen_struct_fps[i] is not None and gen_comp_fps[i] is not None]
    ref_keep = [
        i for i in range(len(ref_struct_fps)) if ref_struct_fps[i] is not None and ref_comp_fps[i] is not None
    ]
    if not ref_keep:
        raise ValueError("no reference crystal has fingerprints")
    if not gen_keep:
        return 0.0, 0.0
    gs = np.stack([gen_struct_fps[i] for i in gen_keep]).astype(float)
    rs = np.stack([ref_struct_fps[i] for i in ref_keep]).astype(float)
    gc, rc = _standardise(
        np.stack([gen_comp_fps[i] for i in gen_keep]).astype(float),
        np.stack([ref_comp_fps[i] for i in ref_keep]).astype(float),
        comp_scaler,
    )
    gs, rs = np.nan_to_num(gs), np.nan_to_num(rs)
    struct_d, comp_d = cdist(gs, rs), cdist(gc, rc)  # (n_gen, n_ref)
    cov_recall = float(((struct_d.min(0) <= struct_cutoff) & (comp_d.min(0) <= comp_cutoff)).mean())
    cov_precision = float(((struct_d.min(1) <= struct_cutoff) & (comp_d.min(1) <= comp_cutoff)).sum() / n_gen)
    return cov_recall, cov_precision


def num_elements(structure: Structure) -> int:
    """Distinct elements in a cell (oxidation states ignored), the quantity of W(#elements)."""
    return len(structure.composition.element_composition.elements)


def wasserstein_density(gen: Sequence[Structure], ref: Sequence[Structure]) -> float:
    """Wasserstein-1 distance between density distributions (g/cm³, pymatgen ``density``)."""
    if not gen or not ref:
        return float("nan")
    return float(wasserstein_distance([float(s.density) for s in gen], [float(s.density) for s in ref]))


def wasserstein_num_elements(gen: Sequence[Structure], ref: Sequence[Structure]) -> float:
    """Wasserstein-1 distance between distributions of the number of distinct elements."""
    if not gen or not ref:
        return float("nan")
    return float(wasserstein_distance([num_elements(s) for s in gen], [num_elements(s) for s in ref]))


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


def _analyse_one(structure: Structure) -> tuple[bool, bool, Fingerprint, Fingerprint]:
    """Worker task: (structurally valid, compositionally valid, struct fp, comp fp)."""
    try:
        struct_ok = structural_validity(structure)
    except Exception:
        struct_ok = False
    try:
        comp_ok = smact_validity(structure.composition)
    except Exception:
        comp_ok = False
    struct_fp, comp_fp = _fingerprint_one(structure)
    return struct_ok, comp_ok, struct_fp, comp_fp


@dataclass(frozen=True, eq=False)
class GeneratedAnalysis:
    """Per-crystal validity and fingerprints of a generated set, independent of any reference.

    Computing the CrystalNN fingerprints is most of the cost of :func:`evaluate_generation`;
    keeping them lets one generated set be scored against several reference sets (held-out and
    training crystals, say) without fingerprinting it again.
    """

    struct_ok: np.ndarray
    comp_ok: np.ndarray
    struct_fps: list[Fingerprint]
    comp_fps: list[Fingerprint]

    def __len__(self) -> int:
        return len(self.struct_fps)

    @property
    def valid(self) -> np.ndarray:
        """Structurally and compositionally valid, with both fingerprints computable."""
        fp_ok = np.array([s is not None and c is not None for s, c in zip(self.struct_fps, self.comp_fps)], dtype=bool)
        return self.struct_ok & self.comp_ok & fp_ok


def analyse_generated(
    generated: Sequence[Structure], workers: int | None = None, progress: bool = True
) -> GeneratedAnalysis:
    """Validity and fingerprints of every generated crystal, in parallel (see :func:`evaluate_generation`)."""
    records = _parallel_map(_analyse_one, list(generated), workers, progress, "generated")
    return GeneratedAnalysis(
        struct_ok=np.array([r[0] for r in records], dtype=bool),
        comp_ok=np.array([r[1] for r in records], dtype=bool),
        struct_fps=[r[2] for r in records],
        comp_fps=[r[3] for r in records],
    )


def evaluate_generation(
    generated: list[Structure],
    reference: list[Structure],
    struct_cutoff: float,
    comp_cutoff: float,
    workers: int | None = None,
    cache_path: Path | str | None = None,
    progress: bool = True,
    coverage_on: str = "all",
    comp_scaler: str = "cdvae",
    analysis: GeneratedAnalysis | None = None,
) -> dict[str, Any]:
    """Ab initio generation metrics of ``generated`` against ``reference`` (the test split).

    Returns ``n``, ``struct_valid``, ``comp_valid``, ``valid`` (fractions of all generated),
    ``cov_recall``, ``cov_precision``, ``wdist_density``, ``wdist_num_elems``, and
    ``comp_scaler`` (which composition scaler the coverage used).

    Choices, following CDVAE's code (which the DiffCSP paper reuses):

    * ``valid`` = structurally and compositionally valid *and* fingerprints computable (CDVAE
      marks a crystal invalid when CrystalNN fails).
    * Coverage (``coverage_on="all"``, the default): CDVAE's ``get_coverage`` passes *all*
      generated crystals, dropping only those whose fingerprints failed, and divides COV-P by
      the number of generated crystals. ``coverage_on="valid"`` restricts coverage to the valid
      crystals instead (COV-P then divides by the number of valid crystals).
    * Composition fingerprints are standardised with CDVAE's fixed ``CompScaler`` statistics
      (``comp_scaler="cdvae"``, as the published numbers); ``"reference"`` uses the reference
      set's own mean/std instead (not comparable with the papers).
    * Wasserstein distances use the valid generated crystals against *all* reference crystals.
      CDVAE draws a random subsample of 1000 valid crystals first; we use all of them
      (deterministic, same expectation, lower variance). NaN when nothing is valid.
    * The reference fingerprints are cached in ``cache_path`` (see
      :func:`reference_fingerprints`); ``analysis`` (from :func:`analyse_generated` on the same
      ``generated`` list) skips fingerprinting the generated crystals again.
    """
    if coverage_on not in ("all", "valid"):
        raise ValueError(f"coverage_on must be 'all' or 'valid', not {coverage_on!r}")
    if comp_scaler not in COMP_SCALERS:
        raise ValueError(f"comp_scaler must be one of {', '.join(COMP_SCALERS)}, not {comp_scaler!r}")
    generated = list(generated)
    reference = list(reference)
    n = len(generated)
    if analysis is None:
        analysis = analyse_generated(generated, workers=workers, progress=progress)
    elif len(analysis) != n:
        raise ValueError(f"the analysis covers {len(analysis)} crystals, but {n} were generated")
    ref_struct_fps, ref_comp_fps = reference_fingerprints(
        reference, cache_path, workers=workers, progress=progress
    )

    struct_ok, comp_ok, valid = analysis.struct_ok, analysis.comp_ok, analysis.valid
    gen_struct_fps = list(analysis.struct_fps)
    gen_comp_fps = list(analysis.comp_fps)
    if coverage_on == "valid":
        idx = np.flatnonzero(valid)
        gen_struct_fps = [gen_struct_fps[i] for i in idx]
        gen_comp_fps = [gen_comp_fps[i] for i in idx]
    if gen_struct_fps:
        cov_r, cov_p = coverage(
            gen_struct_fps, gen_comp_fps, ref_struct_fps, ref_comp_fps, struct_cutoff, comp_cutoff,
            comp_scaler=comp_scaler,
        )
    else:  # nothing to compare: nothing covered, and COV-P is 0/0
        cov_r, cov_p = 0.0, float("nan")

    valid_structures = [s for s, v in zip(generated, valid, strict=True) if v]

    def frac(mask: np.ndarray) -> float:
        return float(mask.mean()) if n else float("nan")

    return {
        "n": n,
        "struct_valid": frac(struct_ok),
        "comp_valid": frac(comp_ok),
        "valid": frac(valid),
        "cov_recall": cov_r,
        "cov_precision": cov_p,
        "wdist_density": wasserstein_density(valid_structures, reference),
        "wdist_num_elems": wasserstein_num_elements(valid_structures, reference),
        "comp_scaler": comp_scaler,
    }
