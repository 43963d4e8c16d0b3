"""Worker pools start with forkserver/spawn, never fork (the parent runs torch's threads)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pandas as pd
import pytest

from diffcsp import data as data_mod
from diffcsp.parallel import mp_context, usable_cpus, worker_count
from diffcsp.registry import get_dataset


def test_mp_context_is_never_fork():
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert mp_context().get_start_method() == expected
    assert mp_context(["diffcsp.data"]).get_start_method() == expected


def test_parse_csv_workers_are_not_forked(datasets_dir: Path, tmp_path: Path, monkeypatch):
    """A forked worker inherits the parent's memory, a forkserver/spawn worker imports the module
    afresh. So change a module constant in the parent only: forked workers would see it (every
    multi-atom row would be skipped as overlapping atoms), fresh workers do not."""
    frame = pd.read_csv(datasets_dir / "perov_5" / "val.csv", index_col=0).iloc[:24]
    path = tmp_path / "val.csv"
    frame.to_csv(path)
    monkeypatch.setattr(data_mod, "MIN_DISTANCE", 1e9)  # parent-only change
    table = data_mod.parse_csv(path, get_dataset("perov_5"), workers=2, progress=False)
    assert len(table) == 24 and not table.skipped
    # the same change in-process does skip every row: the probe can fail
    with pytest.raises(data_mod.DataError, match="overlapping_atoms"):
        data_mod.parse_csv(path, get_dataset("perov_5"), workers=1, progress=False)


def test_worker_count_caps_by_tasks_and_request():
    assert worker_count(5, 2) == 2  # never more workers than tasks
    assert worker_count(3, 100) == 3
    assert worker_count(4, 0) == 1  # at least one, even with nothing to do
    assert worker_count(None, 10_000) == usable_cpus()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_default_workers_follow_the_affinity_mask():
    """A batch scheduler (or taskset) that grants one core must get one worker, however many
    cores the machine has: os.cpu_count() alone would oversubscribe."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cpus() == 1
        assert worker_count(None, 100) == 1
    finally:
        os.sched_setaffinity(0, before)


def _blas_pools(info: list[dict]) -> list[dict]:
    pools = [p for p in info if p["user_api"] == "blas"]
    # numpy's and scipy's OpenBLAS builds: without them the checks below would prove nothing
    assert any("scipy" in p["filepath"] for p in pools), info
    return pools


def test_limit_blas_threads_caps_then_restores():
    """OpenBLAS's idle threads busy-wait between calls; the relax and match loops make thousands
    of tiny calls, so an unlimited pool keeps a second core busy (measured: ~60 % of one)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from diffcsp.parallel import limit_blas_threads

    with threadpool_limits(limits=2, user_api="blas"):
        outer = {p["filepath"]: p["num_threads"] for p in _blas_pools(threadpool_info())}
        with limit_blas_threads():
            assert all(p["num_threads"] == 1 for p in _blas_pools(threadpool_info()))
        assert {p["filepath"]: p["num_threads"] for p in _blas_pools(threadpool_info())} == outer


def test_every_pool_worker_runs_one_blas_thread():
    """Both ways this package starts workers (run_in_pool and the CSV parser's Pool) limit BLAS,
    including scipy's, which the worker's own initializer or task would load after the limit."""
    from threadpoolctl import threadpool_info
    from tqdm import tqdm

    from diffcsp.parallel import run_in_pool, worker_initializer

    with tqdm(total=1, disable=True) as bar:
        (info,) = run_in_pool(threadpool_info, [()], 1, bar)
    assert all(p["num_threads"] == 1 for p in _blas_pools(info))
    with mp_context().Pool(1, initializer=worker_initializer()) as pool:
        info = pool.apply(threadpool_info)
    assert all(p["num_threads"] == 1 for p in _blas_pools(info))


def test_inline_matching_runs_one_blas_thread(monkeypatch):
    """With one worker the matcher runs in the caller's process: inside the limit, and the
    caller's own limits come back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from diffcsp import metrics

    seen: list[list[dict]] = []
    monkeypatch.setattr(metrics, "_evaluate_crystal", lambda *a: seen.append(threadpool_info()))
    with threadpool_limits(limits=2, user_api="blas"):
        before = [p["num_threads"] for p in _blas_pools(threadpool_info())]
        metrics.evaluate_csp([("a", "X", {}, [])], workers=1, progress=False)
        assert [p["num_threads"] for p in _blas_pools(threadpool_info())] == before
    assert len(seen) == 1 and all(p["num_threads"] == 1 for p in _blas_pools(seen[0]))
