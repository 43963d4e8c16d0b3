"""Training runs through the real CLI: run directory contents, resume after kill -9,
divergence guard, and clear errors for damaged or mismatched checkpoints."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffcsp.checkpoint import export_model, load_model
from diffcsp.errors import CheckpointError

TINY = ["--hidden", "32", "--num-layers", "2", "--num-freqs", "8", "--quiet", "--threads", "1"]


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffcsp", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy())


def epochs_logged(run: Path) -> list[int]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, datasets_dir) -> Path:
    """A finished 3-epoch run on 48 Perov-5 crystals (shared by the checkpoint tests)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    res = cli("train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run), "--epochs", "3",
              "--batch-size", "16", "--limit", "48", *TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_run_directory_contents(tiny_run: Path):
    for name in ["config.json", "protocol.json", "metrics.csv", "training_curve.png", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt", "model/config.json", "model/model.safetensors"]:
        assert (tiny_run / name).is_file(), name
    assert epochs_logged(tiny_run) == [0, 1, 2]
    protocol = (tiny_run / "protocol.json").read_text()
    assert "val->test" in protocol and "held_out_ids" in protocol
    model = load_model(tiny_run)
    assert model.config.hidden == 32 and model.config.dataset == "perov_5"
    assert sum(model.config.num_atoms_hist) == 48


def test_refuses_to_overwrite_a_run(tiny_run: Path, datasets_dir):
    res = cli("train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(tiny_run), *TINY)
    assert res.returncode == 1 and "--resume" in res.stderr and "Traceback" not in res.stderr


def test_resume_after_kill_9(tmp_path: Path, datasets_dir):
    """kill -9 at an arbitrary moment, resume: every epoch appears exactly once."""
    run = tmp_path / "killed"
    args = ["train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run), "--epochs", "8",
            "--batch-size", "4", "--limit", "160", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "diffcsp", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(epochs_logged(run)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    done_before = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"]
    assert done_before < 7

    res = cli("train", "--resume", str(run), "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert epochs_logged(run) == list(range(8))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 7
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    res = cli("train", "--resume", str(tmp_path))
    assert res.returncode == 1 and "error:" in res.stderr and "Traceback" not in res.stderr


def test_divergence_stops_before_checkpointing(tmp_path: Path, datasets_dir):
    run = tmp_path / "nan"
    res = cli("train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run), "--epochs", "3",
              "--batch-size", "8", "--limit", "32", "--lr", "1e30", *TINY)
    assert res.returncode == 1
    assert "loss became" in res.stderr and "Traceback" not in res.stderr
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_damaged_checkpoint(tiny_run: Path, tmp_path: Path):
    data = (tiny_run / "checkpoints" / "best.ckpt").read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(broken)
    res = cli("predict", "SrTiO3", "-n", "1", "--checkpoint", str(broken), "--out", str(tmp_path / "p"))
    assert res.returncode == 1 and "damaged" in res.stderr and "Traceback" not in res.stderr

    folder = tmp_path / "exported"
    export_model(load_model(tiny_run), folder)
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:100] + b"\x00" * 50 + raw[150:])
    with pytest.raises(CheckpointError):
        load_model(folder)


def test_checkpoint_with_other_settings(tiny_run: Path, tmp_path: Path):
    import json

    folder = tmp_path / "mismatch"
    export_model(load_model(tiny_run), folder)
    payload = json.loads((folder / "config.json").read_text())
    payload["config"]["hidden"] = 64
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(folder)
    payload["config"]["bogus_setting"] = 1
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="bogus_setting"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere.ckpt")


def test_sample_and_evaluate_cli(tiny_run: Path, tmp_path: Path, datasets_dir):
    """`diffcsp sample` → predictions file → `diffcsp evaluate` with JSON, CSV and plot."""
    import json

    preds = tmp_path / "preds.json.gz"
    res = cli("sample", "--checkpoint", str(tiny_run), "--dataset", "perov_5", "--data-dir", str(datasets_dir),
              "--split", "test", "--limit", "3", "--num-samples", "2", "--steps", "10", "--out", str(preds))
    assert res.returncode == 0, res.stderr[-2000:]
    out_json, out_csv, out_png = tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "k.png"
    res = cli("evaluate", str(preds), "--json", str(out_json), "--csv", str(out_csv), "--plot", str(out_png), "--workers", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(out_json.read_text())
    assert summary["n"] == 3 and summary["k"] == 2
    assert 0.0 <= summary["match_rate"] <= summary["match_rate_k"] <= 1.0
    assert {"match_rate", "rmse", "valid_rate", "k", "n"} <= set(summary)
    assert len(out_csv.read_text().strip().splitlines()) == 4
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_predict_cli_writes_cifs(tiny_run: Path, tmp_path: Path):
    from pymatgen.core import Structure

    out = tmp_path / "pred"
    res = cli("predict", "CaTiO3", "-n", "2", "--checkpoint", str(tiny_run), "--steps", "10", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    cifs = sorted(p for p in out.glob("*.cif") if not p.stem.endswith("_sym"))  # *_sym.cif: symmetrised copies
    assert len(cifs) == 2
    s = Structure.from_file(cifs[0])
    assert s.composition.reduced_formula == "CaTiO3" and len(s) == 5
    assert "spacegroup" in (out / "summary.csv").read_text()


@pytest.mark.parametrize("formula,message", [("XxO3", "unknown element"), ("Sr(TiO3", "cannot read formula"),
                                             ("Sr0.5TiO3", "whole numbers"), ("Sr5Ti5O15", "at most 20")])
def test_predict_cli_bad_input(tiny_run: Path, tmp_path: Path, formula: str, message: str):
    res = cli("predict", formula, "--checkpoint", str(tiny_run), "--out", str(tmp_path / "p"))
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "p").exists()
