"""Saving and loading models, with clear errors for damaged or mismatched files.

Two forms are understood:

* an exported model: a folder with ``config.json`` (the :class:`ModelConfig` plus metadata)
  and ``model.safetensors`` (weights and schedule buffers). Small, safe to load, and what the
  package ships as its bundled model;
* a Lightning training checkpoint (``*.ckpt``), as written into a run directory.

Integrity. A file can be damaged without becoming unreadable: bytes overwritten inside the
tensor data of a ``.safetensors`` file leave its header intact, so it parses, and the model
then computes with garbage (NaN weights once crashed the structure analysis of ``predict``).
Every exported model therefore records ``weights_sha256`` in its ``config.json``, and a
training checkpoint records ``diffcsp_weights_sha256``; both are checked on every load, and
non-finite weights are refused whatever the hash says. Models written before the hash existed
still load, with an :class:`UnverifiedWeightsWarning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffcsp.errors import CheckpointError
from diffcsp.fileio import _umask, atomic_write, write_json
from diffcsp.model import DiffCSP, ModelConfig

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "perov_5_wide"
#: The bundled generation model that `diffcsp generate` uses when no model is named.
DEFAULT_GEN_MODEL = "perov_5_gen"
#: key of the weights hash in an exported model's config.json
HASH_KEY = "weights_sha256"
#: key of the weights hash in a Lightning checkpoint dict (written by the training module)
CKPT_HASH_KEY = "diffcsp_weights_sha256"
#: the Lightning module holds the DiffCSP model as ``self.model`` (and its EMA as ``self.ema_model``)
LIGHTNING_PREFIX = "model."
LIGHTNING_EMA_PREFIX = "ema_model."


class UnverifiedWeightsWarning(UserWarning):
    """A model without a recorded weights hash was loaded: damage to it cannot be detected."""


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a :class:`DiffCSP` state dict: for every tensor in sorted key order, its
    name, dtype, shape and raw bytes.

    Why over tensors and not over the file's bytes: one definition serves both forms — a
    Lightning checkpoint cannot contain a hash of its own bytes, and its pickle bytes are not
    canonical anyway — and it checks exactly what is loaded into the model. A training
    checkpoint and the model exported from it therefore carry the same hash. Keys are those of
    ``DiffCSP.state_dict()`` (no Lightning ``model.`` prefix; see :func:`stamp_checkpoint`).
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lightning_model_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DiffCSP weights inside a Lightning state dict: the EMA copy when the run kept one
    (those are the weights that were validated and selected), else the trained weights."""
    prefix = LIGHTNING_EMA_PREFIX if any(k.startswith(LIGHTNING_EMA_PREFIX) for k in state_dict) else LIGHTNING_PREFIX
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def stamp_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Record the weights hash in a Lightning checkpoint dict (call from ``on_save_checkpoint``)."""
    checkpoint[CKPT_HASH_KEY] = weights_sha256(lightning_model_state(checkpoint["state_dict"]))


def export_model(model: DiffCSP, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``out_dir`` as one unit.

    Both files are written into a temporary sibling folder which then replaces ``out_dir``, so
    a reader sees the old pair or the new pair, never one file of each (a model whose recorded
    hash does not match its weights would be refused as damaged). Other files in an existing
    ``out_dir`` (e.g. a model card) are carried over; a folder holding subfolders is not an
    exported model and is refused rather than replaced. A process killed between the two
    renames of the swap leaves ``out_dir`` missing and the old pair in ``.NAME.*.old``.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir():
        nested = [p.name for p in out_dir.iterdir() if p.is_dir()]
        if nested:
            raise CheckpointError(f"refusing to replace {out_dir}: it holds more than an exported model (folder {nested[0]!r})")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": "diffcsp-model", "version": 1, HASH_KEY: weights_sha256(tensors),
               "config": model.config.to_dict(), "meta": meta or {}}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        with atomic_write(tmp / "model.safetensors") as handle:
            handle.write(save(tensors))
        write_json(tmp / "config.json", payload)
        if out_dir.is_dir():
            for extra in out_dir.iterdir():
                if extra.name not in ("model.safetensors", "config.json") and not extra.name.startswith("."):
                    shutil.copy2(extra, tmp / extra.name)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move folder ``new`` to ``target``, replacing an existing ``target`` folder.

    POSIX cannot rename a folder over a non-empty one, so the old folder is first renamed
    aside, then removed; if the second rename fails the old folder is put back.
    """
    if not target.exists():
        os.rename(new, target)
        return
    old = new.with_name(new.name.removesuffix(".tmp") + ".old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def add_weights_hash(model_dir: str | Path) -> str:
    """Record ``weights_sha256`` in the ``config.json`` of a model exported before the hash
    existed (computed from its current weights, which are checked for non-finite values).

    Only for models you trust as they are: the hash certifies the weights present now. A
    folder that already records a different hash is refused as damaged. Returns the hash.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    payload = _read_config(config_path, weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: damaged weights file ({exc})") from None
    _check_finite(state, weights)
    digest = weights_sha256(state)
    recorded = payload.get(HASH_KEY)
    if recorded == digest:
        return digest
    if recorded is not None:
        raise CheckpointError(f"{weights}: weights do not match the {HASH_KEY} recorded in {config_path.name}; not overwriting it")
    head = {k: payload[k] for k in ("format", "version") if k in payload}
    write_json(config_path, {**head, HASH_KEY: digest, **{k: v for k, v in payload.items() if k not in head}})
    return digest


def _check_finite(state: Mapping[str, torch.Tensor], source: Path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: damaged weights (non-finite values in {len(bad)} tensors, e.g. {bad[0]})")


def _verify_hash(state: Mapping[str, torch.Tensor], recorded: Any, source: Path, where: str) -> None:
    """Compare the weights with their recorded hash; no hash → a warning, not an error."""
    if recorded is None:
        warnings.warn(f"{source}: no weights hash recorded (written by an older diffcsp); damage to the weights "
                      "cannot be detected", UnverifiedWeightsWarning, stacklevel=4)
        return
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise CheckpointError(f"{source}: damaged {where} (invalid weights hash {recorded!r})")
    actual = weights_sha256(state)
    if actual != recorded:
        raise CheckpointError(f"{source}: damaged weights (sha256 {actual[:12]}… does not match "
                              f"{recorded[:12]}… recorded in {where})")


def _build(config: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> DiffCSP:
    try:
        cfg = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid model settings ({exc})") from None
    model = DiffCSP(cfg, compute_schedules=False)
    missing, unexpected, mismatched = [], [], []
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            missing.append(key)
        elif state[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}")
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            part for part in (
                f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})" if unexpected else "",
                f"shape mismatch: {mismatched[0]}" if mismatched else "",
            ) if part
        )
        raise CheckpointError(f"{source}: weights do not match the model settings ({detail})")
    _check_finite(state, source)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def bundled_models() -> dict[str, dict[str, Any]]:
    """The models shipped inside the package, by folder name, with their dataset and task.

    Read from each folder's config.json, so a model added to ``models/`` is found without a
    code change.
    """
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(BUNDLED_DIR.iterdir()) if BUNDLED_DIR.is_dir() else []:
        if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            model = config.get("config", {})
            found[folder.name] = {"path": folder, "dataset": model.get("dataset"), "task": model.get("task", "csp"),
                                  "suited_for": config.get("meta", {}).get("suited_for", "")}
    return found


def resolve_model_path(path: str | Path | None, task: str = "csp") -> Path:
    """Turn what a user typed after ``--model`` into a path: an existing file or folder as is,
    else a bundled model's folder name (``perov_5_wide``), else a dataset name (``carbon_24``)
    that names the one bundled model of that ``task`` ("csp" or "gen") trained on it. ``None``
    is the default bundled model of the task."""
    if path is None:
        return BUNDLED_DIR / (DEFAULT_GEN_MODEL if task == "gen" else DEFAULT_MODEL)
    path = Path(path)
    if path.exists():
        return path
    bundled = bundled_models()
    name = str(path)
    if name in bundled:
        return bundled[name]["path"]
    by_dataset = [info["path"] for info in bundled.values() if info["dataset"] == name and info["task"] == task]
    if len(by_dataset) == 1:
        return by_dataset[0]
    names = ", ".join(f"{n} ({info['dataset']})" for n, info in bundled.items() if info["task"] == task)
    raise CheckpointError(f"checkpoint not found: {path} (not a file or folder, nor a bundled {task} model: {names})")


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu", task: str = "csp") -> DiffCSP:
    """Load an exported model folder, a ``model.safetensors`` file, a Lightning ``.ckpt``, a
    run directory (its best checkpoint), or — with no path — the bundled default model of
    ``task`` (a dataset name picks that dataset's bundled model of ``task``).

    Weights are checked against their recorded SHA-256 and for non-finite values; any damage
    raises :class:`CheckpointError`.
    """
    path = resolve_model_path(path, task)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return _load_exported(path / "model.safetensors", path / "config.json").to(device)
        if (path / "model" / "model.safetensors").is_file():  # a run directory's exported best model
            return _load_exported(path / "model" / "model.safetensors", path / "model" / "config.json").to(device)
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            if (path / candidate).is_file():
                return _load_lightning(path / candidate).to(device)
        raise CheckpointError(f"{path}: no model.safetensors or checkpoints/best.ckpt inside")
    if path.suffix == ".safetensors":
        return _load_exported(path, path.with_name("config.json")).to(device)
    return _load_lightning(path).to(device)


def _read_config(config_path: Path, weights: Path) -> dict[str, Any]:
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} missing next to {weights.name}")
    try:
        payload = json.loads(config_path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload["config"], dict):
            raise TypeError("not a diffcsp model config")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: damaged model config ({exc})") from None
    return payload


def _load_exported(weights: Path, config_path: Path) -> DiffCSP:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    payload = _read_config(config_path, weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: damaged weights file ({exc})") from None
    _verify_hash(state, payload.get(HASH_KEY), weights, config_path.name)
    return _build(payload["config"], state, weights)


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint, turning every failure into a CheckpointError.

    ``weights_only=True``: a checkpoint is a pickle, and unpickling arbitrary objects runs
    whatever code the file names, so only tensors and plain data are accepted. diffcsp's
    training stores nothing else (its RNG states are tensors); a file holding other objects is
    refused rather than trusted.
    """
    try:
        with warnings.catch_warnings():  # torch notes unusual pickle protocols of foreign files
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("Weights only load failed"):
            raise CheckpointError(f"{path}: not a diffcsp checkpoint (it holds Python objects other than tensors and "
                                  "plain data, which are not unpickled for safety)") from None
        raise CheckpointError(f"{path}: damaged or unreadable checkpoint (UnpicklingError: {_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 — garbage makes the unpickler fail in many ways (IndexError, EOFError, …)
        raise CheckpointError(f"{path}: damaged or unreadable checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _load_lightning(path: Path) -> DiffCSP:
    ckpt = read_lightning_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a diffcsp training checkpoint (holds a {type(ckpt).__name__})")
    try:
        config = ckpt["hyper_parameters"]["model_config"]
        state = lightning_model_state(ckpt["state_dict"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a diffcsp training checkpoint (missing {exc})") from None
    if not isinstance(config, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a diffcsp training checkpoint (unexpected model_config or state_dict)")
    _verify_hash(state, ckpt.get(CKPT_HASH_KEY), path, "the checkpoint")
    return _build(config, state, path)


def model_meta(path: str | Path | None = None) -> dict[str, Any]:
    """The ``meta`` block of an exported model (empty for training checkpoints)."""
    try:
        path = resolve_model_path(path)
    except CheckpointError:
        return {}
    config = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("meta", {})
        except json.JSONDecodeError:
            return {}
    return {}
