"""Damaged, foreign and pre-hash model files: every damage is a one-line CheckpointError (and a
clean `error:` line from the CLI), never a model with garbage weights.

Damage is made the way it happens on disk: bytes overwritten in the middle of the tensor data
of a real ``.safetensors`` file (its JSON header left intact, so the file still parses), a
truncated file, a missing ``config.json``, files that are not diffcsp checkpoints at all.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import diffcsp.checkpoint as ckpt
from diffcsp.checkpoint import BUNDLED_DIR, DEFAULT_MODEL, export_model, load_model
from diffcsp.errors import CheckpointError
from diffcsp.model import DiffCSP, ModelConfig

from conftest import assert_one_error_line, cli

REPO = Path(__file__).resolve().parents[1]
BUNDLED = BUNDLED_DIR / DEFAULT_MODEL
TINY = ModelConfig(hidden=16, num_layers=1, num_freqs=4, time_dim=8)


def tiny_model(seed: int = 0) -> DiffCSP:
    torch.manual_seed(seed)
    return DiffCSP(TINY, compute_schedules=False)


def same_weights(a: DiffCSP, b: DiffCSP) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def overwrite_tensor_data(path: Path, fill: bytes, size: int = 4096) -> None:
    """Overwrite ``size`` bytes in the middle of the tensor data, leaving the header intact
    (safetensors layout: 8-byte little-endian header length, JSON header, raw tensor data)."""
    raw = bytearray(path.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    start = 8 + header + (len(raw) - 8 - header) // 2 - size // 2
    assert start > 8 + header and start + size < len(raw)
    raw[start : start + size] = fill * size
    path.write_bytes(bytes(raw))


@pytest.fixture
def bundled_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(BUNDLED, folder)
    return folder


def strip_hash(folder: Path) -> None:
    payload = json.loads((folder / "config.json").read_text())
    payload.pop("weights_sha256", None)
    (folder / "config.json").write_text(json.dumps(payload))


# -- damage ------------------------------------------------------------------------------------
def test_nan_bytes_in_tensor_data_are_refused(bundled_copy: Path, tmp_path: Path):
    """The reported defect: 0xff bytes (NaN floats) mid-data loaded silently, predict segfaulted."""
    overwrite_tensor_data(bundled_copy / "model.safetensors", b"\xff")
    with pytest.raises(CheckpointError, match="damaged weights"):
        load_model(bundled_copy)
    res = cli("predict", "SrTiO3", "-n", "1", "--steps", "2", "-c", str(bundled_copy), "--out", str(tmp_path / "out"))
    assert_one_error_line(res, "damaged weights", str(bundled_copy))
    assert not (tmp_path / "out").exists()


def test_finite_damage_is_caught_by_the_hash(bundled_copy: Path):
    # Zero bytes are valid floats: only the recorded hash can tell the weights changed.
    overwrite_tensor_data(bundled_copy / "model.safetensors", b"\x00")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        load_model(bundled_copy)
    with pytest.raises(CheckpointError, match="does not match"):  # the file given directly
        load_model(bundled_copy / "model.safetensors")


def test_non_finite_weights_are_refused_without_a_hash(bundled_copy: Path):
    strip_hash(bundled_copy)
    overwrite_tensor_data(bundled_copy / "model.safetensors", b"\xff")
    with pytest.warns(ckpt.UnverifiedWeightsWarning), pytest.raises(CheckpointError, match="non-finite"):
        load_model(bundled_copy)


def test_truncated_weights(bundled_copy: Path, tmp_path: Path):
    weights = bundled_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="damaged weights file"):
        load_model(bundled_copy)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="damaged weights file"):
        load_model(weights)


def test_missing_or_damaged_config(bundled_copy: Path):
    config = bundled_copy / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="damaged model config"):
        load_model(bundled_copy)
    config.write_text(json.dumps({**json.loads(text), "weights_sha256": "abc"}))
    with pytest.raises(CheckpointError, match="invalid weights hash"):
        load_model(bundled_copy)
    config.unlink()
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_model(bundled_copy / "model.safetensors")


def test_files_that_are_not_diffcsp_checkpoints(tmp_path: Path):
    other = tmp_path / "other.ckpt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, other)
    with pytest.raises(CheckpointError, match="not a diffcsp training checkpoint"):
        load_model(other)
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(CheckpointError, match="not a diffcsp training checkpoint"):
        load_model(tensor)
    foreign = tmp_path / "numpy.ckpt"
    torch.save({"hyper_parameters": {"model_config": {}}, "state_dict": {}, "rng": np.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="other than tensors"):
        load_model(foreign)
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a model\n")
    with pytest.raises(CheckpointError, match="damaged or unreadable"):
        load_model(text)
    res = cli("predict", "SrTiO3", "-n", "1", "-c", str(text), "--out", str(tmp_path / "out"))
    assert_one_error_line(res, "notes.ckpt")


class _Payload:
    """Unpickling this runs os.mkdir(marker): what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_checkpoint_code_is_never_run(tmp_path: Path, writer: str):
    marker = tmp_path / "code-was-run"
    evil = tmp_path / "evil.ckpt"
    payload = {"hyper_parameters": {"model_config": {}}, "state_dict": {}, "x": _Payload(marker)}
    if writer == "torch":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError):
        load_model(evil)
    assert not marker.exists()
    if writer == "torch":  # the CLI path once is enough
        res = cli("predict", "SrTiO3", "-n", "1", "-c", str(evil), "--out", str(tmp_path / "out"))
        assert_one_error_line(res, "evil.ckpt")
        assert not marker.exists() and "Warning" not in res.stderr


# -- what must load ------------------------------------------------------------------------------
def test_bundled_model_loads_and_verifies():
    """`make demo` loads the bundled model; its recorded hash must match its weights."""
    recorded = json.loads((BUNDLED / "config.json").read_text())["weights_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ckpt.UnverifiedWeightsWarning)
        model = load_model(None)
        direct = load_model(BUNDLED / "model.safetensors")
    assert ckpt.weights_sha256(model.state_dict()) == recorded
    assert same_weights(model, direct)
    # Independent of our hash function: recompute from the raw file with safetensors + hashlib.
    import hashlib

    from safetensors.numpy import load_file

    arrays = load_file(str(BUNDLED / "model.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        digest.update(f"{key}\0{a.dtype}\0{tuple(a.shape)}\0".encode())
        digest.update(a.tobytes())
    assert digest.hexdigest() == recorded


def tracked_run_models() -> list[Path]:
    """Exported models of the runs committed to the repository (not local, untracked runs)."""
    if not (REPO / ".git").exists():
        return []
    res = subprocess.run(["git", "ls-files", "runs/*/model/config.json"], cwd=REPO, capture_output=True, text=True)
    return [REPO / Path(line).parent for line in res.stdout.split()] if res.returncode == 0 else []


def test_every_shipped_model_records_a_matching_hash():
    bundled = [info["path"] for info in ckpt.bundled_models().values()]
    assert BUNDLED in bundled and len(bundled) >= 2, bundled
    for folder in [*bundled, *tracked_run_models()]:
        payload = json.loads((folder / "config.json").read_text())
        assert "weights_sha256" in payload, folder
        with warnings.catch_warnings():
            warnings.simplefilter("error", ckpt.UnverifiedWeightsWarning)
            load_model(folder)


def test_bundled_models_by_folder_or_dataset_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--model carbon_24` and `--model carbon_24_wide` name the same shipped model; a real path wins."""
    carbon = load_model("carbon_24")
    assert carbon.config.dataset == "carbon_24" and carbon.config.elements == [6]
    assert same_weights(carbon, load_model("carbon_24_wide"))
    assert load_model("perov_5").config.dataset == "perov_5"
    assert ckpt.model_meta("carbon_24")["suited_for"].startswith("pure-carbon")
    with pytest.raises(CheckpointError, match="nor a bundled csp model: carbon_24_wide"):
        load_model("mp_20")
    # a dataset name picks the bundled model of the task asked for; no task-less default crosses over
    assert load_model("perov_5").is_gen is False
    gen = load_model("perov_5", task="gen")
    assert gen.is_gen and same_weights(gen, load_model("perov_5_gen")) and same_weights(gen, load_model(task="gen"))
    carbon_gen = load_model("carbon_24", task="gen")
    assert carbon_gen.is_gen and carbon_gen.config.dataset == "carbon_24"
    assert same_weights(carbon_gen, load_model("carbon_24_gen")) and not same_weights(carbon_gen, carbon)
    with pytest.raises(CheckpointError, match="nor a bundled gen model"):
        load_model("mp_20", task="gen")
    monkeypatch.chdir(tmp_path)  # a folder called carbon_24 in the working directory is taken as a path
    (tmp_path / "carbon_24").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model("carbon_24")


def test_cli_predicts_carbon_with_the_bundled_carbon_model(tmp_path: Path):
    res = cli("predict", "C8", "--model", "carbon_24", "-n", "2", "-z", "1", "--steps", "5", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained on carbon_24" in res.stderr
    from pymatgen.core import Structure

    cells = [Structure.from_file(tmp_path / f"C8_0{i}.cif") for i in range(2)]
    assert [c.composition.formula for c in cells] == ["C8", "C8"]
    assert_one_error_line(cli("predict", "C8", "-m", "no_such_model", "--out", str(tmp_path / "x")),
                          "no_such_model", "perov_5_wide")


def test_weights_hash_is_deterministic_and_sensitive():
    a, b = tiny_model(0), tiny_model(0)
    state = a.state_dict()
    assert ckpt.weights_sha256(state) == ckpt.weights_sha256(b.state_dict())
    assert ckpt.weights_sha256(dict(reversed(list(state.items())))) == ckpt.weights_sha256(state)  # key order
    assert ckpt.weights_sha256(state) != ckpt.weights_sha256(tiny_model(1).state_dict())
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    flipped = dict(state)
    flipped[key] = state[key].clone()
    flipped[key].view(-1)[0] = torch.nextafter(flipped[key].view(-1)[0], torch.tensor(float("inf")))  # one ulp
    assert ckpt.weights_sha256(flipped) != ckpt.weights_sha256(state)
    renamed = {("x" + k if k == key else k): v for k, v in state.items()}
    assert ckpt.weights_sha256(renamed) != ckpt.weights_sha256(state)
    reshaped = dict(state)
    reshaped[key] = state[key].reshape(-1)
    assert ckpt.weights_sha256(reshaped) != ckpt.weights_sha256(state)


def test_export_without_hash_loads_with_a_note(tmp_path: Path):
    model = tiny_model()
    folder = export_model(model, tmp_path / "old")
    recorded = json.loads((folder / "config.json").read_text())["weights_sha256"]
    strip_hash(folder)
    with pytest.warns(ckpt.UnverifiedWeightsWarning, match="no weights hash"):
        loaded = load_model(folder)
    assert same_weights(loaded, model)
    # add_weights_hash blesses the current weights: the same hash export_model records.
    assert ckpt.add_weights_hash(folder) == recorded
    assert ckpt.add_weights_hash(folder) == recorded  # idempotent
    assert list(json.loads((folder / "config.json").read_text()))[:3] == ["format", "version", "weights_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ckpt.UnverifiedWeightsWarning)
        load_model(folder)
    overwrite_tensor_data(folder / "model.safetensors", b"\x00", size=64)
    with pytest.raises(CheckpointError, match="do not match"):  # never re-blesses damaged weights
        ckpt.add_weights_hash(folder)


# -- Lightning checkpoints ---------------------------------------------------------------------
def lightning_dict(model: DiffCSP, stamp: bool) -> dict:
    checkpoint = {"epoch": 1, "hyper_parameters": {"model_config": model.config.to_dict()},
                  "state_dict": {"model." + k: v.clone() for k, v in model.state_dict().items()}}
    if stamp:
        ckpt.stamp_checkpoint(checkpoint)
    return checkpoint


def test_run_directory_falls_back_to_best_ckpt(tmp_path: Path):
    model = tiny_model()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(lightning_dict(model, stamp=True), run / "checkpoints" / "best.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ckpt.UnverifiedWeightsWarning)
        loaded = load_model(run)
    assert same_weights(loaded, model)
    # The checkpoint and the model exported from it carry the same hash.
    exported = export_model(loaded, tmp_path / "exported")
    stamped = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["diffcsp_weights_sha256"]
    assert json.loads((exported / "config.json").read_text())["weights_sha256"] == stamped


def test_lightning_checkpoint_hash(tmp_path: Path):
    model = tiny_model()
    unstamped = tmp_path / "old.ckpt"
    torch.save(lightning_dict(model, stamp=False), unstamped)
    with pytest.warns(ckpt.UnverifiedWeightsWarning):
        assert same_weights(load_model(unstamped), model)

    damaged = lightning_dict(model, stamp=True)
    key = next(k for k, v in damaged["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    damaged["state_dict"][key].view(-1)[0] += 1.0  # finite damage after the hash was taken
    torch.save(damaged, tmp_path / "damaged.ckpt")
    with pytest.raises(CheckpointError, match="does not match .* recorded in the checkpoint"):
        load_model(tmp_path / "damaged.ckpt")

    nan = lightning_dict(model, stamp=False)
    nan["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(nan, tmp_path / "nan.ckpt")
    with pytest.warns(ckpt.UnverifiedWeightsWarning), pytest.raises(CheckpointError, match="non-finite"):
        load_model(tmp_path / "nan.ckpt")


# -- export writes the pair as one unit ----------------------------------------------------------
def test_export_replaces_the_pair_as_one_unit(tmp_path: Path):
    old, new = tiny_model(0), tiny_model(1)
    folder = export_model(old, tmp_path / "model", meta={"run": "old"})
    (folder / "MODEL_CARD.md").write_text("card\n")

    # A failure after the weights were written (meta that JSON cannot encode) must leave the
    # old complete pair in place and nothing else behind.
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        export_model(new, folder, meta=circular)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert same_weights(load_model(folder), old)
    assert json.loads((folder / "config.json").read_text())["meta"] == {"run": "old"}

    export_model(new, folder, meta={"run": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert (folder / "MODEL_CARD.md").read_text() == "card\n"
    assert same_weights(load_model(folder), new)


def test_export_refuses_to_replace_other_folders(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="refusing to replace"):
        export_model(tiny_model(), run)
    assert (run / "checkpoints").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        export_model(tiny_model(), tmp_path / "file")
