"""CSP metrics (docs/method.md, "Evaluation"): validity, StructureMatcher match rate and RMSE, over k samples.

The protocol follows the DiffCSP authors' evaluation script (``scripts/compute_metrics.py`` of
jiaor17/DiffCSP, built on CDVAE's), with a choice of *validity rule* (:data:`RULES`):

* ``"official"`` (the default; the rule behind the published numbers): a crystal is *valid*
  when it is structurally valid (every periodic interatomic distance exceeds 0.5 Å and the cell
  volume exceeds 0.1 Å³, CDVAE's ``structure_validity``), its composition passes SMACT's
  charge-neutrality and Pauling electronegativity test (CDVAE's ``smact_validity``) and its
  CrystalNN fingerprint can be computed. With one sample (their ``RecEval``) a pair counts only
  when prediction *and* ground truth are valid; with k > 1 samples (their ``RecEvalBatch``) a
  sample can match only if it is valid -- the ground truth is not checked there. In CSP the
  samples have the ground truth's composition, so a composition failing SMACT (Perov-5's test
  split has 53, e.g. CsKO3) is never matched either way.
* ``"structure"``: structural validity of the sample only; the ground truth is never checked.

Then, under either rule:

* a valid sample *matches* its ground truth when
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(sample, gt)`` is not None; its
  RMSE is the first returned value (RMS displacement normalised by ``(V/N)^(1/3)``);
* with k samples a crystal is matched when any sample matches, and its RMSE is the smallest among
  the matching samples.

The SMACT test and the fingerprint are :func:`diffcsp.gen_metrics.smact_validity` and
:func:`diffcsp.gen_metrics.structure_fingerprint` (one definition for CSP and generation).
Fingerprinting is the expensive part of the official rule (~0.2 s for a 5-atom Perov-5 cell,
~0.5 s for Carbon-24), so it runs in the same worker processes as the matching and only for
crystals that passed the cheap checks.

StructureMatcher can run for minutes on pathological pairs (huge numbers of candidate lattices),
so every match is bounded by a wall-clock limit implemented with ``SIGALRM``: the crystals are
spread over worker processes, each match runs in the worker's main thread, where a Python-level
signal handler can interrupt it. A timed-out pair counts as unmatched and is tallied separately so
the report shows how often it happened.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from diffcsp.errors import DependencyError
from diffcsp.fileio import atomic_write
from diffcsp.parallel import run_in_pool, run_inline, worker_count
from diffcsp.predictions import Predictions, dict_to_structure, structure_to_dict

#: A structure as the evaluator accepts it: a pymatgen Structure or a predictions-file dict.
StructureLike = Union[Structure, dict[str, Any]]
#: One test crystal: (id, formula, ground truth, samples).
CrystalInput = tuple[str, str, StructureLike, Sequence[StructureLike]]

MATCHER_KWARGS: dict[str, float] = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}

#: Validity rules; the first is the default. See the module docstring.
RULES = ("official", "structure")

#: One-paragraph description of each rule, for reports and ``diffcsp evaluate --help``.
RULE_DESCRIPTIONS: dict[str, str] = {
    "official": (
        "the DiffCSP authors' rule (their scripts/compute_metrics.py): a crystal is valid when all "
        "interatomic distances exceed 0.5 Å and its volume 0.1 Å³, its composition passes SMACT's "
        "charge-neutrality and Pauling electronegativity test, and its CrystalNN fingerprint can be "
        "computed; with k = 1 a pair counts only if prediction and ground truth are both valid, with "
        "k > 1 only valid samples can match"
    ),
    "structure": (
        "structural validity only (all interatomic distances > 0.5 Å, volume > 0.1 Å³) of the "
        "prediction; the ground truth is not checked"
    ),
}


def check_rule(rule: str) -> None:
    """Raise a one-line error for an unknown rule, or when the official rule's libraries are missing."""
    if rule not in RULES:
        raise ValueError(f"unknown validity rule {rule!r}; choose one of: {', '.join(RULES)}")
    if rule == "official":
        import importlib.util

        missing = [name for name in ("smact", "matminer") if importlib.util.find_spec(name) is None]
        if missing:
            raise DependencyError(
                f"the official metric rule needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                "(or evaluate with --rule structure)"
            )


# --------------------------------------------------------------------------------------------
# Single-structure / single-pair checks
# --------------------------------------------------------------------------------------------


def is_structurally_valid(structure: Structure, cutoff: float = 0.5, min_volume: float = 0.1) -> bool:
    """CDVAE's structural validity: smallest periodic distance > ``cutoff`` and volume > ``min_volume``.

    The diagonal of the distance matrix (an atom to itself) is ignored, exactly as CDVAE does by
    padding it with a large number, so an atom is not compared with its own periodic images.
    Non-finite lattices or coordinates (a diverged sampler) and structures pymatgen cannot even
    measure are invalid rather than errors, because a single bad sample must not abort an
    evaluation of thousands.
    """
    try:
        if len(structure) == 0:
            return False
        if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
            return False
        volume = float(structure.volume)
        if not math.isfinite(volume) or volume <= min_volume:
            return False
        dist = np.array(structure.distance_matrix, dtype=float)
        np.fill_diagonal(dist, np.inf)
        if not np.isfinite(dist[~np.eye(len(dist), dtype=bool)]).all():
            return False
        return bool(dist.min() > cutoff)
    except Exception:
        return False


def is_valid(structure: Structure, rule: str = "official") -> bool:
    """Validity of one crystal under ``rule`` (see :data:`RULES`), cheapest check first.

    The official rule's three conditions are checked in order of cost (structure, SMACT,
    fingerprint); the answer is the same as checking all three, as the authors' code does.
    """
    if not is_structurally_valid(structure):
        return False
    if rule == "structure":
        return True
    # Imported here: gen_metrics imports this module (is_structurally_valid).
    from diffcsp.gen_metrics import smact_validity, structure_fingerprint

    try:
        if not smact_validity(structure.composition):
            return False
    except Exception:
        return False
    return structure_fingerprint(structure) is not None


def make_matcher() -> StructureMatcher:
    """The matcher of the benchmark protocol (CDVAE/DiffCSP tolerances, all other defaults).

    Defaults matter: ``primitive_cell=True`` reduces both structures to primitive cells first, so a
    supercell of the ground truth still matches; ``scale=True`` rescales both to a common volume,
    so the RMSE measures shape, not density.
    """
    return StructureMatcher(**MATCHER_KWARGS)


_MATCHER: StructureMatcher | None = None


def _default_matcher() -> StructureMatcher:
    global _MATCHER
    if _MATCHER is None:
        _MATCHER = make_matcher()
    return _MATCHER


def rms_distance(pred: Structure, gt: Structure, matcher: StructureMatcher | None = None) -> float | None:
    """Normalised RMS displacement of ``pred`` onto ``gt``; None when they do not match.

    Exceptions inside pymatgen (degenerate lattices, etc.) count as "no match", as in DiffCSP's
    ``compute_metrics.py``.
    """
    matcher = matcher or _default_matcher()
    try:
        result = matcher.get_rms_dist(pred, gt)
    except Exception:
        return None
    return None if result is None else float(result[0])


class _MatchTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException so pymatgen's ``except Exception`` can't eat it."""


_alarm_armed = False
_alarm_fired = False


def _on_alarm(signum: int, frame: Any) -> None:
    global _alarm_fired
    # A signal that arrives just after the timer was cancelled must not escape into unrelated code.
    if _alarm_armed:
        _alarm_fired = True
        raise _MatchTimeout()


def _can_use_alarm() -> bool:
    """SIGALRM handlers can only be installed from the main thread, and only on POSIX."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


_warmed_up = False


def _warm_up() -> None:
    """Run one small match unbounded, once per process.

    pymatgen imports some extension modules lazily on first use (e.g. ``pymatgen.optimization.
    neighbors`` inside ``Lattice.get_points_in_sphere``, behind ``except ImportError``). An alarm
    landing inside that import is turned into an ImportError and silently swallowed, so the first
    match of a fresh process could not be interrupted reliably. Importing up front avoids it.
    """
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    with contextlib.suppress(Exception):
        s = Structure(np.eye(3) * 4.0, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        _default_matcher().get_rms_dist(s, s.copy())


def rms_distance_limited(
    pred: Structure, gt: Structure, timeout: float | None, matcher: StructureMatcher | None = None
) -> tuple[float | None, bool]:
    """:func:`rms_distance` bounded by ``timeout`` seconds of wall time; returns ``(rmse, timed_out)``.

    Uses ``signal.setitimer``; the previous SIGALRM handler is restored afterwards. The timer
    repeats (every ``timeout/10``, at least 10 ms) until cancelled, so an interruption swallowed by
    library code is re-raised shortly after, and a pair during which the alarm fired counts as
    timed out even if the match then finished: the limit was exceeded either way, and the outcome
    does not depend on where the signal landed. Without a usable alarm (non-main thread,
    non-POSIX) or with ``timeout`` None/<= 0 the match runs unbounded.
    """
    global _alarm_armed, _alarm_fired
    matcher = matcher or _default_matcher()
    if timeout is None or timeout <= 0 or not _can_use_alarm():
        return rms_distance(pred, gt, matcher), False
    _warm_up()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    result = None
    try:
        try:
            _alarm_fired = False
            _alarm_armed = True
            signal.setitimer(signal.ITIMER_REAL, timeout, max(timeout / 10, 0.01))
            try:
                result = matcher.get_rms_dist(pred, gt)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _alarm_armed = False
        except _MatchTimeout:
            return None, True
        except Exception:
            return None, _alarm_fired
    finally:
        _alarm_armed = False
        signal.signal(signal.SIGALRM, previous)
    if _alarm_fired:
        return None, True
    return (None if result is None else float(result[0])), False


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class CrystalResult:
    """Per-crystal outcome under ``rule``.

    ``sample_valid[i]`` is sample i's validity under the rule; ``sample_rmse[i]`` is None when
    sample i is invalid or unmatched (the ground truth's validity is *not* folded in: the
    official rule requires it for k = 1 only, see :attr:`matched_k1`). ``gt_valid`` is the
    ground truth's validity under the rule; ``comp_valid`` the SMACT result of its composition
    (None when the rule does not look at it).
    """

    id: str
    formula: str
    n_samples: int
    sample_valid: list[bool]
    sample_rmse: list[float | None]
    timeouts: int = 0
    gt_valid: bool = True
    rule: str = "official"
    comp_valid: bool | None = None

    @property
    def matched_k1(self) -> bool:
        """First sample matched; under the official rule the ground truth must be valid too."""
        if not self.sample_rmse or self.sample_rmse[0] is None:
            return False
        return self.gt_valid or self.rule != "official"

    @property
    def rmse_k1(self) -> float | None:
        return self.sample_rmse[0] if self.matched_k1 else None

    @property
    def valid_k1(self) -> bool:
        return bool(self.sample_valid) and self.sample_valid[0]

    def matched_first(self, k: int) -> bool:
        """Whether any of the first ``k`` samples matches (k = 1: :attr:`matched_k1`'s pair rule)."""
        if k == 1:
            return self.matched_k1
        return any(r is not None for r in self.sample_rmse[:k])

    @property
    def matched_k(self) -> bool:
        return self.matched_first(self.n_samples)

    @property
    def rmse_k(self) -> float | None:
        if self.n_samples == 1:
            return self.rmse_k1
        values = [r for r in self.sample_rmse if r is not None]
        return min(values) if values else None

    @property
    def valid_rate(self) -> float:
        return sum(self.sample_valid) / len(self.sample_valid) if self.sample_valid else 0.0

    def as_row(self) -> dict[str, Any]:
        """CSV row: ``matched``/``rmse``/``valid`` are the k-sample results (k = 1 when one sample)."""
        return {
            "id": self.id,
            "formula": self.formula,
            "n_samples": self.n_samples,
            "matched": self.matched_k,
            "rmse": self.rmse_k,
            "valid": self.valid_rate,
            "matched_k1": self.matched_k1,
            "rmse_k1": self.rmse_k1,
            "valid_k1": self.valid_k1,
            "gt_valid": self.gt_valid,
            "comp_valid": self.comp_valid,
            "timeouts": self.timeouts,
            "rule": self.rule,
        }


CSV_COLUMNS = [
    "id", "formula", "n_samples", "matched", "rmse", "valid",
    "matched_k1", "rmse_k1", "valid_k1", "gt_valid", "comp_valid", "timeouts", "rule",
]  # fmt: skip


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


@dataclass
class CSPReport:
    """Results of :func:`evaluate_csp`: one :class:`CrystalResult` per test crystal, in input order."""

    rows: list[CrystalResult] = field(default_factory=list)
    rule: str = "official"

    @property
    def timeouts(self) -> int:
        return sum(r.timeouts for r in self.rows)

    def summary(self) -> dict[str, Any]:
        """Headline metrics under ``rule``. Rates are over all crystals; RMSEs over matched crystals only.

        ``match_rate``/``rmse``/``valid_rate`` use the first sample (k = 1 pair rule);
        ``*_k`` use all samples (the k-sample rule; equal to the k = 1 values for one sample).
        ``gt_valid_rate``: ground truths valid under the rule.
        """
        n = len(self.rows)
        k = max((r.n_samples for r in self.rows), default=0)
        all_valid = [v for r in self.rows for v in r.sample_valid]
        return {
            "n": n,
            "k": k,
            "match_rate": (sum(r.matched_k1 for r in self.rows) / n) if n else 0.0,
            "rmse": _mean(r.rmse_k1 for r in self.rows if r.rmse_k1 is not None),
            "valid_rate": (sum(r.valid_k1 for r in self.rows) / n) if n else 0.0,
            "match_rate_k": (sum(r.matched_k for r in self.rows) / n) if n else 0.0,
            "rmse_k": _mean(r.rmse_k for r in self.rows if r.rmse_k is not None),
            "valid_rate_k": (sum(all_valid) / len(all_valid)) if all_valid else 0.0,
            "gt_valid_rate": (sum(r.gt_valid for r in self.rows) / n) if n else 0.0,
            "timeouts": self.timeouts,
            "rule": self.rule,
        }

    def match_rate_curve(self, ks: Iterable[int]) -> list[tuple[int, float]]:
        """Any-of-first-k match rate for each k (crystals with fewer samples use all they have).

        k = 1 follows the one-sample rule (:attr:`CrystalResult.matched_k1`), so the curve starts
        at ``match_rate``.
        """
        n = len(self.rows)
        return [(int(k), (sum(r.matched_first(int(k)) for r in self.rows) / n) if n else 0.0) for k in ks]

    def to_csv(self, path: str | Path) -> Path:
        """Write the per-crystal rows (see :data:`CSV_COLUMNS`) atomically; empty cell = no RMSE."""
        path = Path(path)
        with atomic_write(path, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: ("" if value is None else value) for key, value in row.as_row().items()})
        return path


# --------------------------------------------------------------------------------------------
# Evaluation (parallel)
# --------------------------------------------------------------------------------------------


def _to_dict(s: StructureLike) -> dict[str, Any]:
    return s if isinstance(s, dict) else structure_to_dict(s)


def _to_structure(s: StructureLike) -> Structure | None:
    """Decode a sample; a sample pymatgen cannot build (e.g. singular lattice) is returned as None."""
    if isinstance(s, Structure):
        return s
    try:
        return dict_to_structure(s)
    except Exception:
        return None


def _comp_valid(structure: Structure | None) -> bool | None:
    """SMACT validity of a structure's composition (None without a structure)."""
    from diffcsp.gen_metrics import smact_validity

    if structure is None:
        return None
    try:
        return smact_validity(structure.composition)
    except Exception:
        return False


def _evaluate_crystal(
    cid: str,
    formula: str,
    gt: StructureLike,
    samples: Sequence[StructureLike],
    timeout: float | None,
    rule: str = "official",
) -> CrystalResult:
    """All samples of one crystal; runs in a worker process (or inline when workers == 1).

    Valid samples are matched even when the ground truth is invalid: the official rule ignores
    the ground truth's validity for k > 1, and :class:`CrystalResult` applies it for k = 1.
    """
    gt_structure = _to_structure(gt)
    gt_valid = gt_structure is not None and is_valid(gt_structure, rule)
    valid: list[bool] = []
    rmses: list[float | None] = []
    timeouts = 0
    for sample in samples:
        structure = _to_structure(sample)
        ok = structure is not None and is_valid(structure, rule)
        rmse: float | None = None
        if ok and gt_structure is not None:
            rmse, timed_out = rms_distance_limited(structure, gt_structure, timeout)
            timeouts += int(timed_out)
        valid.append(ok)
        rmses.append(rmse)
    return CrystalResult(
        id=str(cid),
        formula=str(formula),
        n_samples=len(samples),
        sample_valid=valid,
        sample_rmse=rmses,
        timeouts=timeouts,
        gt_valid=gt_valid,
        rule=rule,
        comp_valid=_comp_valid(gt_structure) if rule == "official" else None,
    )


def _worker_init() -> None:
    # Workers must not inherit a SIGINT handler that fights the parent's KeyboardInterrupt handling
    # (one BLAS thread each is run_in_pool's job).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _preload(rule: str) -> list[str]:
    """Modules for the fork server to import once: matminer's takes seconds, per worker otherwise."""
    modules = ["diffcsp.metrics", "diffcsp.gen_metrics"]
    return modules + (["matminer.featurizers.site.fingerprint"] if rule == "official" else [])


def evaluate_csp(
    pairs: Sequence[CrystalInput],
    workers: int | None = None,
    timeout: float | None = 60.0,
    progress: bool = True,
    rule: str = "official",
) -> CSPReport:
    """Validity, match and RMSE of every sample of every crystal; rows come back in input order.

    ``pairs``: one ``(id, formula, ground_truth, samples)`` with structures as pymatgen Structures
    or predictions-file dicts. ``workers`` defaults to the usable CPUs; with one worker the
    work runs inline (SIGALRM works in the main thread). ``timeout`` bounds each single match.
    ``rule``: validity rule, ``"official"`` (default) or ``"structure"`` (see :data:`RULES`).
    """
    check_rule(rule)
    n = len(pairs)
    workers = worker_count(workers, n)
    # One dict encoding for both paths, so results do not depend on the worker count.
    tasks = [(cid, formula, _to_dict(gt), [_to_dict(s) for s in samples], timeout, rule) for cid, formula, gt, samples in pairs]
    results: list[CrystalResult | None]
    bar = tqdm(total=n, desc="matching", unit="crystal", disable=not progress)
    try:
        if workers == 1 and _can_use_alarm():
            results = run_inline(_evaluate_crystal, tasks, bar)
        else:
            # (workers == 1 lands here off the main thread: a thread cannot install SIGALRM
            # handlers, a worker process's main thread can.)
            results = run_in_pool(_evaluate_crystal, tasks, workers, bar, initializer=_worker_init, preload=_preload(rule))
    finally:
        bar.close()
    return CSPReport(rows=[r for r in results if r is not None], rule=rule)


def predictions_to_crystals(preds: Predictions) -> list[CrystalInput]:
    """The evaluator's input from a loaded CSP predictions file (structures stay as dicts)."""
    if preds.task != "csp":
        raise ValueError(f"CSP metrics need a 'csp' predictions file, got task {preds.task!r}")
    return [(str(c["id"]), str(c.get("formula", "")), c["ground_truth"], list(c["samples"])) for c in preds.crystals]


def evaluate_predictions(preds: Predictions, **kw: Any) -> CSPReport:
    """:func:`evaluate_csp` on a loaded predictions file; keyword arguments are passed through."""
    return evaluate_csp(predictions_to_crystals(preds), **kw)
