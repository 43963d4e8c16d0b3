"""A killed sampling run loses nothing: run again, it continues from its journal and returns
exactly the crystals of the run that was never interrupted.

The reference is always a second, uninterrupted run of the same sampler, never the journal
code itself; the interrupted run is either stopped deterministically inside the library (a
``KeyboardInterrupt`` at the third chunk) or killed with SIGKILL from outside, as a user's
``kill -9`` or a cluster's time limit would.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcsp import sampler as sampler_mod
from diffcsp.errors import CheckpointError
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.sampler import sample

from conftest import assert_one_error_line, cli, diffcsp_command

NUM_ATOMS = [5, 3, 4, 6, 2, 5, 4]  # four chunks of two (the last of one)
KW = dict(steps=6, seed=3, batch_size=2, progress=False)


def tiny_model(task: str = "csp", like: DiffCSP | None = None) -> DiffCSP:
    """A small untrained model; ``like`` lends its noise schedules (their estimate takes seconds)."""
    torch.manual_seed(0)
    model = DiffCSP(ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8, task=task),
                    compute_schedules=like is None)
    if like is not None:
        model.coord_process.load_state_dict(like.coord_process.state_dict())
    return model


@pytest.fixture(scope="module")
def model() -> DiffCSP:
    return tiny_model()


@pytest.fixture(scope="module")
def types() -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(1).integers(1, 90, size=sum(NUM_ATOMS)))


def assert_same(a, b) -> None:
    for name in ("numbers", "frac_coords", "lattices", "num_atoms", "finite"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def interrupted_run(model, types, journal: Path, monkeypatch, at_chunk: int = 3) -> None:
    """Sample with a journal and stop at the start of chunk ``at_chunk`` (1-based), as Ctrl-C would."""
    real, calls = sampler_mod._sample_chunk, []

    def stop_at(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_chunk:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(sampler_mod, "_sample_chunk", stop_at)
        with pytest.raises(KeyboardInterrupt):
            sample(model, NUM_ATOMS, types, journal=journal, **KW)


def test_interrupted_run_resumes_to_the_uninterrupted_result(model, types, tmp_path, monkeypatch):
    whole = sample(model, NUM_ATOMS, types, **KW)
    journal = tmp_path / "run.partial.pt"
    interrupted_run(model, types, journal, monkeypatch)
    assert len(torch.load(journal, weights_only=True)["lattices"]) == 2  # two chunks were kept
    resumed = sample(model, NUM_ATOMS, types, journal=journal, **KW)
    assert resumed.resumed_chunks == 2 and resumed.earlier_seconds > 0
    assert_same(resumed, whole)  # fails if the random stream were not restored where it stopped
    assert journal.exists()  # the caller deletes it once the result is stored
    assert_same(sample(model, NUM_ATOMS, types, journal=journal, **KW), whole)  # a finished journal: nothing to redo


def test_generation_resumes_too(model, tmp_path, monkeypatch):
    gen = tiny_model("gen", like=model)
    whole = sample(gen, NUM_ATOMS, None, **KW)
    journal = tmp_path / "gen.partial.pt"
    interrupted_run(gen, None, journal, monkeypatch, at_chunk=2)
    resumed = sample(gen, NUM_ATOMS, None, journal=journal, **KW)
    assert resumed.resumed_chunks == 1
    assert_same(resumed, whole)


@pytest.mark.parametrize("change, named", [
    (dict(seed=4), "seed"),
    (dict(steps=5), "times"),
    (dict(batch_size=3), "batch_size"),
    (dict(corrector_temperature=0.5), "corrector_temperature"),
    (dict(predictor_temperature=0.5), "predictor_temperature"),
    (dict(model_seed=1), "model"),
    (dict(num_atoms=[5, 3, 4, 6, 2, 5, 3]), "num_atoms"),
    (dict(types_shift=1), "atom_types"),
])
def test_a_journal_of_another_run_is_an_error(model, types, tmp_path, monkeypatch, change, named):
    journal = tmp_path / "run.partial.pt"
    interrupted_run(model, types, journal, monkeypatch)
    before = journal.read_bytes()
    kw = {**KW, **{k: v for k, v in change.items() if k in KW or k.endswith("_temperature")}}
    other = model
    if "model_seed" in change:  # the same network with one weight changed
        other = tiny_model(like=model)
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            next(other.net.parameters()).view(-1)[0] += 1e-6
    num_atoms = change.get("num_atoms", NUM_ATOMS)
    other_types = types[: sum(num_atoms)] + change.get("types_shift", 0)
    with pytest.raises(CheckpointError, match=rf"belongs to another run \(different [^)]*\b{named}\b"):
        sample(other, num_atoms, other_types, journal=journal, **kw)
    assert journal.read_bytes() == before  # left for the run it belongs to


def test_a_damaged_journal_is_an_error(model, types, tmp_path, monkeypatch):
    journal = tmp_path / "run.partial.pt"
    interrupted_run(model, types, journal, monkeypatch)
    journal.write_bytes(journal.read_bytes()[: journal.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged.*delete it to start over"):
        sample(model, NUM_ATOMS, types, journal=journal, **KW)


def crystals(path: Path) -> list:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)["crystals"]


def test_cli_sample_killed_and_rerun_gives_the_uninterrupted_file(tmp_path, datasets_dir):
    """`diffcsp sample` killed with SIGKILL mid-run, then run again with the same arguments."""
    args = ["sample", "-c", "perov_5_wide", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--limit", "8",
            "--batch-size", "2", "--steps", "100", "--threads", "1"]
    whole = tmp_path / "whole.json.gz"
    res = cli(*args, "--out", str(whole))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "whole.json.gz.partial.pt").exists()

    out = tmp_path / "killed.json.gz"
    journal = tmp_path / "killed.json.gz.partial.pt"
    proc = subprocess.Popen([*diffcsp_command(), *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed (chunks too fast?)"
    done = len(torch.load(journal, weights_only=True)["lattices"])
    assert 1 <= done < 4

    mismatch = cli(*[a if a != "100" else "99" for a in args], "--out", str(out))
    assert_one_error_line(mismatch, "belongs to another run", "times")

    res = cli(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "continuing the sampling run" in res.stderr
    assert not journal.exists()
    assert crystals(out) == crystals(whole)
    with gzip.open(out, "rt") as handle:
        assert json.load(handle)["meta"]["resumed_chunks"] == done
