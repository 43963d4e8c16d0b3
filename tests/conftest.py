"""Shared fixtures: the bundled data fixture, the full benchmark files, and a private cache.

Two kinds of data:

* ``datasets_dir`` — ``tests/fixtures/datasets``: the first few dozen real rows of each benchmark
  split, shipped with the repository, so a fresh clone tests the whole pipeline. Most tests use it.
* ``full_datasets_dir`` — the whole official files (``$DIFFCSP_DATA``, ``../shared/datasets`` next
  to the checkout, or where ``diffcsp data download`` puts them). Only tests that truly need a
  complete file use it. Missing files skip such a test on a developer machine but *fail* it when
  ``CI`` is set, so a CI run can never pass without running them.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffcsp.registry import default_data_dir

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "fixtures" / "datasets"
OPEN_LOG_TOOL = REPO / "tests" / "fixtures" / "open_log.py"
#: A hang guard for CLI subprocesses (a stuck run must not hang the suite); no test asserts on speed.
HANG_GUARD_SECONDS = 1200

# One BLAS/OpenMP thread per process: tests start CLI subprocesses and worker pools, and on a
# 2-core machine oversubscribed OpenMP threads spin-wait each other to a standstill.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Resolved once at import, before the autouse fixture below points $DIFFCSP_CACHE (which the
# last fallback of default_data_dir() depends on) at a temporary folder.
FULL_DATA = default_data_dir()


def diffcsp_command() -> list[str]:
    """The installed `diffcsp` command (the console script next to this interpreter)."""
    exe = Path(sys.executable).with_name("diffcsp")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "diffcsp"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `diffcsp ARGS` to the end and capture its output (``env``: the whole environment)."""
    return subprocess.run([*diffcsp_command(), *args], capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
                          env=os.environ.copy() if env is None else env)


def assert_one_error_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    """The CLI failed the way a user error should: status 1, one ``error:`` line naming the needles."""
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def load_bench_script(name: str):
    """Import ``bench/NAME.py`` as a module (the scripts are not a package; they import their
    sibling ``csp_benchmark``), registered under NAME so dataclasses can find their module."""
    import importlib.util

    bench = REPO / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def in_ci() -> bool:
    """True on CI services (GitHub Actions, GitLab, ... all set ``CI``), where skipping hides gaps."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_full_split(name: str, split: str) -> Path:
    """Path of the complete official ``<name>/<split>.csv``; skip (locally) or fail (CI) without it."""
    path = FULL_DATA / name / f"{split}.csv"
    if not path.is_file():
        how = (f"`diffcsp data download {name}`" if name != "mp_20_mini"
               else "a copy of the project's mp_20_mini folder (it has no public download)")
        message = (f"this test needs the full {name}/{split}.csv, not found in {FULL_DATA}; get it with {how} "
                   "and/or set DIFFCSP_DATA to the folder holding it")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The bundled fixture: the first 40 rows of each real split (80 of mp_20_mini train)."""
    assert (FIXTURE_DATA / "perov_5" / "val.csv").is_file(), f"test fixture missing: {FIXTURE_DATA}"
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def full_datasets_dir() -> Path:
    """Folder with the complete official Perov-5 val/test files (skip locally / fail in CI without)."""
    for split in ("val", "test"):
        require_full_split("perov_5", split)
    return FULL_DATA


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("diffcsp-cache")


@pytest.fixture(autouse=True)
def _private_cache(session_cache_dir, monkeypatch) -> Path:
    """Point $DIFFCSP_CACHE at a temporary folder so no test reads or writes the user's cache."""
    monkeypatch.setenv("DIFFCSP_CACHE", str(session_cache_dir))
    return session_cache_dir


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Tiny tensors: one torch thread is fastest, and avoids OpenMP stalls on a busy machine
    (measured: a 5-step sample took ~5 s with 2 threads next to two trainings, 25 ms with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers for training runs through the CLI (imported by test_training and test_ddp) --------
def logged_cli(open_log: Path, batch_log: Path, *args: str) -> subprocess.CompletedProcess:
    """``diffcsp ARGS`` with every file it opens logged (tests/fixtures/open_log.py) and the crystal
    ids of every training batch logged per rank ($DIFFCSP_LOG_BATCH_IDS, read by ``trained_ids``)."""
    env = dict(os.environ, DIFFCSP_TEST_OPEN_LOG=str(open_log), DIFFCSP_LOG_BATCH_IDS=str(batch_log))
    return subprocess.run([sys.executable, str(OPEN_LOG_TOOL), *args], capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS, env=env)


def file_log(open_log: Path) -> list[tuple[int, str, str]]:
    """(rank, 'r' or 'w', path) for every file a ``logged_cli`` run opened or renamed into place."""
    entries = []
    for line in open_log.read_text().splitlines():
        rank, kind, path = line.split(" ", 2)
        entries.append((int(rank), kind, path))
    return entries


def trained_ids(batch_log: Path, rank: int = 0) -> dict[int, list[str]]:
    """Crystal ids of the training batches one rank saw, per epoch, in order."""
    per_epoch: dict[int, list[str]] = {}
    for line in (batch_log / f"rank{rank}.txt").read_text().splitlines():
        epoch, *ids = line.split("\t")
        per_epoch.setdefault(int(epoch), []).extend(ids)
    return per_epoch


def metrics_rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def epochs_logged(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in metrics_rows(run)]


def csv_ids(path: Path) -> list[str]:
    """The material_id column of a benchmark CSV, read with pandas (independently of diffcsp's parser)."""
    import pandas as pd

    return [str(x) for x in pd.read_csv(path, index_col=0)["material_id"]]
