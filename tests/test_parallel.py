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
