"""Worker pools start with forkserver/spawn, never fork (the parent runs torch's threads)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from diffcsp import data as data_mod
from diffcsp.parallel import mp_context
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
