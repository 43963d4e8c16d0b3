"""Saving and loading models, with clear errors for damaged or mismatched files.

Two forms are understood:

* an exported model: a folder with ``config.json`` (the :class:`ModelConfig` plus metadata)
  and ``model.safetensors`` (weights and schedule buffers). Small, safe to load, and what the
  package ships as its bundled model;
* a Lightning training checkpoint (``*.ckpt``), as written into a run directory.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from diffcsp.errors import CheckpointError
from diffcsp.fileio import atomic_write, write_json
from diffcsp.model import DiffCSP, ModelConfig

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "perov_5_cpu"


def export_model(model: DiffCSP, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (both atomically) into ``out_dir``."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(out_dir / "model.safetensors") as handle:
        handle.write(save(tensors))
    write_json(out_dir / "config.json", {"format": "diffcsp-model", "version": 1, "config": model.config.to_dict(), "meta": meta or {}})
    return out_dir


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
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> DiffCSP:
    """Load an exported model folder, a ``model.safetensors`` file, a Lightning ``.ckpt``, a
    run directory (its best checkpoint), or — with no path — the bundled default model."""
    path = Path(path) if path is not None else BUNDLED_DIR / DEFAULT_MODEL
    if not path.exists() and (BUNDLED_DIR / str(path)).is_dir():
        path = BUNDLED_DIR / str(path)  # a bundled model by name
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
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


def _load_exported(weights: Path, config_path: Path) -> DiffCSP:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not config_path.is_file():
        raise CheckpointError(f"{config_path} missing next to {weights.name}")
    try:
        payload = json.loads(config_path.read_text())
        config = payload["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: damaged model config ({exc})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: damaged weights file ({exc})") from None
    return _build(config, state, weights)


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load a Lightning checkpoint, turning every failure into a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged or unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def _load_lightning(path: Path) -> DiffCSP:
    ckpt = read_lightning_checkpoint(path)
    try:
        config = ckpt["hyper_parameters"]["model_config"]
        raw = ckpt["state_dict"]
        # A run trained with an EMA of the weights keeps both copies; the average is the model.
        prefix = "ema_model." if any(k.startswith("ema_model.") for k in raw) else "model."
        state = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a diffcsp training checkpoint (missing {exc})") from None
    return _build(config, state, path)


def model_meta(path: str | Path | None = None) -> dict[str, Any]:
    """The ``meta`` block of an exported model (empty for training checkpoints)."""
    path = Path(path) if path is not None else BUNDLED_DIR / DEFAULT_MODEL
    config = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("meta", {})
        except json.JSONDecodeError:
            return {}
    return {}
