"""Shared fixtures: where the real benchmark CSVs are, and a private cache for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One BLAS/OpenMP thread per process: tests start CLI subprocesses and worker pools, and on a
# 2-core machine oversubscribed OpenMP threads spin-wait each other to a standstill.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _datasets_dir() -> Path:
    return Path(os.environ.get("DIFFCSP_DATA") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """Folder holding the real benchmark CSVs (``$DIFFCSP_DATA`` or ``<repo>/../shared/datasets``)."""
    path = _datasets_dir()
    if not path.is_dir():
        pytest.skip(f"benchmark CSVs not found in {path} (set DIFFCSP_DATA to a folder holding perov_5/val.csv, ...)")
    return path


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
