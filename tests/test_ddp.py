"""Distributed data parallel training on CPU: two processes (gloo) through the real CLI.

``diffcsp train --accelerator cpu --devices 2`` is the same code path as ``--accelerator gpu
--devices 4 --num-nodes 2`` on a cluster, minus the hardware. Checked here, on real MP-20 rows of
the bundled fixture (the official-train.csv branch):

* each rank trains on a disjoint half of the training rows in every epoch, together all of them,
  and the halves are reshuffled between epochs (our per-epoch seeded sampler keeps working inside
  Lightning's distributed wrapper);
* only rank 0 writes the run directory (checkpoints, metrics, export) and prints messages;
* ``--resume`` of such a run continues it, again in two processes;
* no process opens test.csv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist
from conftest import csv_ids, epochs_logged, file_log, logged_cli, trained_ids

from diffcsp.checkpoint import load_model

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend for CPU DDP")

N_TRAIN = 16  # 2 ranks × 2 batches of 4
TINY = ["--hidden", "16", "--num-layers", "1", "--num-freqs", "4", "--quiet", "--threads", "1"]


def assert_sharded(batch_log: Path, epoch: int, expected: set[str]) -> tuple[list[str], list[str]]:
    """Rank 0 and rank 1 saw disjoint halves of ``expected`` in ``epoch``; returns both shards."""
    shard0, shard1 = trained_ids(batch_log, 0)[epoch], trained_ids(batch_log, 1)[epoch]
    assert len(shard0) == len(shard1) == len(expected) // 2, (epoch, shard0, shard1)
    assert len(set(shard0)) == len(shard0) and len(set(shard1)) == len(shard1)
    assert not set(shard0) & set(shard1), (epoch, shard0, shard1)
    assert set(shard0) | set(shard1) == expected
    return shard0, shard1


def assert_only_rank0_wrote(open_log: Path, run: Path) -> None:
    writes = [(rank, path) for rank, kind, path in file_log(open_log) if kind == "w" and Path(path).is_relative_to(run)]
    assert writes and {rank for rank, _ in writes} == {0}, [w for w in writes if w[0] != 0]
    written = {Path(path).name for _, path in writes}
    assert {"last.ckpt", "metrics.csv", "model.safetensors"} <= written, written


def test_two_process_ddp_run_and_resume(tmp_path: Path, datasets_dir: Path):
    run, batch_log = tmp_path / "run", tmp_path / "batches"
    train_ids = set(csv_ids(datasets_dir / "mp_20_mini" / "train.csv")[:N_TRAIN])

    first_log = tmp_path / "opened-1.txt"
    res = logged_cli(first_log, batch_log, "train", "--dataset", "mp_20_mini", "--data-dir", str(datasets_dir),
                     "--out", str(run), "--epochs", "1", "--batch-size", "4", "--limit", str(N_TRAIN),
                     "--accelerator", "cpu", "--devices", "2", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {rank for rank, _, _ in file_log(first_log)} == {0, 1}, "the second process did not run"
    assert res.stdout.count("run finished") == 1, res.stdout
    assert res.stdout.count("data protocol") == 1, res.stdout
    epoch0 = assert_sharded(batch_log, 0, train_ids)
    assert_only_rank0_wrote(first_log, run)
    assert epochs_logged(run) == [0]

    second_log = tmp_path / "opened-2.txt"
    res = logged_cli(second_log, batch_log, "train", "--resume", str(run), "--epochs", "2", "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {rank for rank, _, _ in file_log(second_log)} == {0, 1}, "the resumed run was not distributed"
    assert res.stdout.count("run finished") == 1, res.stdout
    assert sorted(trained_ids(batch_log, 0)) == sorted(trained_ids(batch_log, 1)) == [0, 1]  # epoch 0 not redone
    epoch1 = assert_sharded(batch_log, 1, train_ids)
    assert set(epoch1[0]) != set(epoch0[0]), "the shards were not reshuffled between epochs"
    assert_only_rank0_wrote(second_log, run)
    assert epochs_logged(run) == [0, 1]
    assert load_model(run).config.dataset == "mp_20_mini"

    for log in (first_log, second_log):
        assert not [path for _, _, path in file_log(log) if path.endswith("test.csv")]
