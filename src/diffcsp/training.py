"""Training with Lightning: presets, the data protocol, run directories, resume.

A run directory holds everything needed to understand and continue a run::

    RUN_DIR/config.json          full training configuration (incl. the model settings)
    RUN_DIR/protocol.json        which files/rows were trained and validated on
    RUN_DIR/checkpoints/last.ckpt, best.ckpt   (written atomically)
    RUN_DIR/metrics.csv          one row per epoch
    RUN_DIR/training_curve.png   losses and learning rate against epochs
    RUN_DIR/model/               best model exported as safetensors + config.json

Resuming reads ``config.json`` and continues from ``last.ckpt``: the epochs it records are
never repeated, an epoch cut short by a kill is redone from its start, and the shuffling order
of every epoch depends only on (seed, epoch), so a resumed run sees the same data order.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Sampler

from diffcsp.batching import TableDataset
from diffcsp.checkpoint import export_model, stamp_checkpoint
from diffcsp.data import CrystalTable, load_split
from diffcsp.errors import TrainingError
from diffcsp.fileio import atomic_write, save_png, write_json
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.registry import get_dataset, split_path

#: Paper settings (docs/method.md §Training objective): epochs and batch size per dataset.
PAPER_SCHEDULE = {"perov_5": (3000, 1024), "carbon_24": (4000, 256), "mp_20": (1000, 256),
                  "mpts_52": (1000, 64), "mp_20_mini": (1000, 256)}
#: CPU preset: a 4-layer, 128-wide CSPNet with 32 Fourier frequencies (~0.56 M parameters instead
#: of ~12 M). One Perov-5 epoch (3.4 k crystals, batch 256 → 14 optimiser steps) takes 3–5 s on
#: one core of this class of machine, so 600 epochs (~8.4 k steps) fit in about an hour (the
#: bundled Perov-5 and Carbon-24 models are this preset widened with --hidden 256 --num-layers 6
#: --num-freqs 128). Carbon-24 epochs cost ~2× (larger cells): 300 epochs.
CPU_SCHEDULE = {"perov_5": (600, 256), "carbon_24": (300, 128), "mp_20": (200, 256),
                "mpts_52": (100, 64), "mp_20_mini": (400, 128)}
#: Generation (types diffused too); its CPU budget per dataset.
CPU_SCHEDULE_GEN = {"perov_5": (300, 256), "carbon_24": (300, 128), "mp_20": (200, 256), "mpts_52": (100, 64),
                    "mp_20_mini": (400, 128)}
CPU_MODEL = {"hidden": 128, "num_layers": 4, "num_freqs": 32, "time_dim": 64}
PAPER_MODEL = {"hidden": 512, "num_layers": 6, "num_freqs": 128, "time_dim": 256}

#: Model settings that decide the network's weights or their meaning; a fine-tuning run must
#: share them with the model it starts from. (Data-derived settings — atom-count histogram,
#: elements, lattice bound — come from the new training set.)
NETWORK_SETTINGS = ("task", "hidden", "num_layers", "num_freqs", "time_dim", "timesteps", "sigma_begin", "sigma_end",
                    "variant")


@dataclass
class TrainConfig:
    """All settings of a training run; saved as RUN_DIR/config.json."""

    dataset: str
    out: str
    task: str = "csp"
    preset: str = "cpu"
    data_dir: str | None = None
    epochs: int = 0
    batch_size: int = 0
    lr: float = 1e-3
    lr_factor: float = 0.6
    lr_patience: int = 30
    min_lr: float = 1e-4
    #: "plateau" (the paper's ReduceLROnPlateau on validation loss) or "cosine" (linear warm-up
    #: over 2 % of the optimiser steps, then cosine decay to ``min_lr`` at the last epoch).
    lr_schedule: str = "plateau"
    #: "fp32", "bf16" (Lightning's bf16-mixed: the network under autocast, weights and optimiser
    #: in fp32) or "auto" (bf16 only where the hardware computes it natively)
    precision: str = "fp32"
    grad_clip: float = 0.5
    #: decay of the exponential moving average of the weights used for validation, model
    #: selection, export and sampling (0 turns it off: the paper's setting).
    ema_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    limit: int | None = None  # use only the first N training crystals (tests, smoke runs)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    #: start from these weights (a run, exported model, checkpoint or bundled model name) instead
    #: of a random initialisation; optimiser, schedule and EMA start afresh (fine-tuning)
    init_from: str | None = None

    @classmethod
    def from_preset(cls, dataset: str, out: str, preset: str = "cpu", task: str = "csp", **overrides: Any) -> TrainConfig:
        info = get_dataset(dataset)
        if preset not in ("cpu", "paper"):
            raise ValueError(f"unknown preset {preset!r}; use 'cpu' or 'paper'")
        if preset == "paper":
            epochs, batch = PAPER_SCHEDULE[dataset]
        else:
            epochs, batch = (CPU_SCHEDULE_GEN if task == "gen" else CPU_SCHEDULE)[dataset]
        model = dict(CPU_MODEL if preset == "cpu" else PAPER_MODEL, task=task, dataset=dataset, max_atoms=info.max_atoms)
        if overrides.get("init_from"):  # fine-tuning: the network of the model it starts from, unless overridden
            from diffcsp.checkpoint import load_model

            source = load_model(overrides["init_from"], task=task).config.to_dict()
            model.update({k: source[k] for k in NETWORK_SETTINGS if k != "task"})
        model.update(overrides.pop("model", {}) or {})
        cfg = cls(dataset=dataset, out=str(out), task=task, preset=preset, epochs=epochs, batch_size=batch, model=model)
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


# -- data protocol --------------------------------------------------------------------------
def resolve_protocol(cfg: TrainConfig, progress: bool = True) -> tuple[CrystalTable, CrystalTable, dict[str, Any]]:
    """Official train/val if train.csv exists, else 'val→test': train on the official val
    split minus a fixed held-out part, which is used for validation and model selection."""
    if split_path(cfg.dataset, "train", cfg.data_dir).is_file():
        train = load_split(cfg.dataset, "train", cfg.data_dir, progress=progress)
        val = load_split(cfg.dataset, "val", cfg.data_dir, progress=progress)
        protocol = {"name": "official", "train": "train.csv", "val": "val.csv"}
    else:
        full = load_split(cfg.dataset, "val", cfg.data_dir, progress=progress)
        order = np.random.default_rng(12345).permutation(len(full))  # fixed for every run
        n_val = max(1, int(round(cfg.val_fraction * len(full))))
        val, train = full.subset(np.sort(order[:n_val])), full.subset(np.sort(order[n_val:]))
        protocol = {"name": "val->test", "train": f"val.csv minus held-out {n_val} rows",
                    "val": f"val.csv held-out {n_val} rows (permutation seed 12345)",
                    "note": "official train split not available; test.csv is for reporting only",
                    "held_out_ids": val.ids}
    if cfg.limit:
        train = train.subset(np.arange(min(cfg.limit, len(train))))
        val = val.subset(np.arange(min(cfg.limit, len(val))))
    protocol.update(dataset=cfg.dataset, train_size=len(train), val_size=len(val),
                    train_source=train.source.get("path"), val_source=val.source.get("path"))
    return train, val, protocol


class EpochSeededSampler(Sampler[int]):
    """Random permutation drawn from (seed, epoch): the same order after a resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def train_loader(table: CrystalTable, batch_size: int, seed: int) -> DataLoader:
    dataset = TableDataset(table)
    # Own generator: building an epoch's iterator draws a base seed from it instead of from torch's
    # global RNG, so the training noise does not depend on when Lightning builds iterators (a
    # resumed run builds its first one before the checkpoint's RNG state is restored).
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSeededSampler(len(table), seed),
                      collate_fn=dataset.collate, generator=torch.Generator().manual_seed(seed))


#: seed of the noise every validation pass uses (the same for every epoch)
VALIDATION_SEED = 987654321


def eval_loader(table: CrystalTable, batch_size: int) -> DataLoader:
    dataset = TableDataset(table)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate,
                      generator=torch.Generator())


# -- Lightning pieces -----------------------------------------------------------------------
class DiffCSPModule(L.LightningModule):
    """Lightning wrapper: optimiser, schedule, EMA weights, divergence guard, deterministic
    validation, and the RNG state in every checkpoint (so a resumed run continues exactly)."""

    def __init__(self, model_config: dict[str, Any], lr: float = 1e-3, lr_factor: float = 0.6, lr_patience: int = 30,
                 min_lr: float = 1e-4, ema_decay: float = 0.0, lr_schedule: str = "plateau"):
        super().__init__()
        self.save_hyperparameters()
        self.model = DiffCSP(ModelConfig.from_dict(model_config))
        # The averaged copy is a submodule, so it moves with the model and is saved in the
        # checkpoint's state_dict under "ema_model."; the optimiser never sees it.
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if ema_decay > 0 else None
        self._train_sum, self._train_count = 0.0, 0

    @property
    def eval_model(self) -> DiffCSP:
        """The weights to validate, select and export: the EMA copy when there is one."""
        return self.ema_model if self.ema_model is not None else self.model

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_model is None:
            return
        # Warm-up of the decay (as in Keras/timm): early on the average forgets the random init fast.
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        ema = list(self.ema_model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in self.model.parameters()], 1 - decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stamp_checkpoint(checkpoint)
        # Plain tensors/lists only: Lightning reads checkpoints with torch.load(weights_only=True).
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                                    "python": random.getstate()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restore_rng = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # Restored here, not in on_load_checkpoint: Lightning seeds and builds loaders in between.
        states = getattr(self, "_restore_rng", None)
        if states:
            torch.set_rng_state(states["torch"])
            name, keys, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(states["python"])
            if "cuda" in states and self.device.type == "cuda":
                torch.cuda.set_rng_state(states["cuda"], self.device)
            self._restore_rng = None

    def training_step(self, batch, batch_idx):
        losses = self.model.loss(batch)
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(
                f"loss became {losses['loss'].item()} at epoch {self.current_epoch}, batch {batch_idx} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); stopping before any "
                "checkpoint is written. Lower --lr or check the data for degenerate cells."
            )
        self._train_sum += losses["loss"].item() * batch.num_graphs
        self._train_count += batch.num_graphs
        self.log("train_loss", losses["loss"], batch_size=batch.num_graphs, prog_bar=True)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        # Same noise for every validation pass, so val_loss compares epochs, not luck; fork_rng
        # restores every generator (CPU and this device's) afterwards, so training noise goes on.
        devices = [self.device] if self.device.type == "cuda" else []
        self._rng = torch.random.fork_rng(devices=devices)
        self._rng.__enter__()
        torch.manual_seed(VALIDATION_SEED)

    def validation_step(self, batch, batch_idx):
        losses = self.eval_model.loss(batch)
        for key, value in losses.items():
            self.log(f"val_{key.removeprefix('loss_')}" if key != "loss" else "val_loss", value,
                     batch_size=batch.num_graphs, on_epoch=True, prog_bar=key == "loss", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._rng.__exit__(None, None, None)

    def pop_train_loss(self) -> float:
        mean = self._train_sum / max(self._train_count, 1)
        self._train_sum, self._train_count = 0.0, 0
        return mean

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.model.parameters(), lr=hp.lr)
        if hp.get("lr_schedule", "plateau") == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = max(1, total // 50)
            floor = hp.min_lr / hp.lr

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                       "interval": "step"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=hp.lr_factor, patience=hp.lr_patience,
                                                           min_lr=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first, then are renamed: a kill never leaves a torn file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(Path(path)) as handle:
            handle.write(buffer.getvalue())


#: epoch_seconds is wall time; cpu_seconds is this process's CPU time (all threads), which stays
#: comparable between runs when the machine is shared.
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_lattice", "val_coord", "val_type", "lr", "epoch_seconds",
                  "elapsed_seconds", "cpu_seconds"]


class MetricsLog(Callback):
    """Writes RUN_DIR/metrics.csv (whole file, atomically) and the training-curve PNG."""

    def __init__(self, run_dir: Path, plot_every: int = 10):
        self.run_dir, self.plot_every = run_dir, plot_every
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_train_start(self, trainer, pl_module) -> None:
        # Runs after Lightning restored the loop state, so current_epoch is the resume point.
        path = self.run_dir / "metrics.csv"
        if path.is_file():  # resume: keep only epochs the checkpoint has completed
            with open(path) as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < trainer.current_epoch]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        # DDP: every rank trained on its own shard (equal sizes), so the epoch's loss is the mean
        # over ranks; all ranks take part in this reduction, then only rank 0 writes.
        train_loss = float(trainer.strategy.reduce(torch.tensor(pl_module.pop_train_loss(), dtype=torch.float64),
                                                   reduce_op="mean"))
        seconds = time.perf_counter() - self._epoch_start
        elapsed = (float(self.rows[-1]["elapsed_seconds"]) if self.rows else 0.0) + seconds
        row = {"epoch": trainer.current_epoch, "train_loss": train_loss,
               "val_loss": _f(m.get("val_loss")), "val_lattice": _f(m.get("val_lattice")),
               "val_coord": _f(m.get("val_coord")), "val_type": _f(m.get("val_type")),
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "epoch_seconds": round(seconds, 3),
               "elapsed_seconds": round(elapsed, 3), "cpu_seconds": round(time.process_time() - self._cpu_start, 3)}
        self.rows = [r for r in self.rows if int(r["epoch"]) != row["epoch"]] + [row]
        if not trainer.is_global_zero:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(self.run_dir / "metrics.csv", "w") as handle:
            handle.write(buffer.getvalue())
        if (row["epoch"] + 1) % self.plot_every == 0 or row["epoch"] + 1 == trainer.max_epochs:
            plot_training_curve(self.run_dir / "metrics.csv", self.run_dir / "training_curve.png")


class BatchIdLog(Callback):
    """Test hook: with ``$DIFFCSP_LOG_BATCH_IDS=DIR`` every rank appends one line per training batch,
    ``epoch<TAB>id<TAB>id...``, to ``DIR/rank<R>.txt``, so tests can check which crystals each
    process trained on (no leakage, disjoint DDP shards) and where a kill landed."""

    def __init__(self, folder: Path, ids: list[str]):
        self.folder, self.ids = folder, ids

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.txt", "a") as handle:
            handle.write("\t".join([str(trainer.current_epoch), *(self.ids[i] for i in batch.index.tolist())]) + "\n")


def is_global_zero() -> bool:
    """True in the process that owns the run directory and the messages (DDP rank 0). Before the
    Trainer exists this reads the rank from the environment Lightning's launcher sets."""
    return rank_zero_only.rank == 0


def _f(value) -> float | str:
    return float(value) if value is not None else ""


def plot_training_curve(metrics_csv: Path, out_png: Path) -> Path:
    """Losses (log scale) and learning rate against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 1])
    for key, label in [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_lattice", "val lattice"),
                       ("val_coord", "val coord"), ("val_type", "val type")]:
        values = [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]
        if not all(math.isnan(v) for v in values):
            ax.plot(epochs, values, label=label, lw=1.2 if "loss" in key else 0.8)
    ax.set_yscale("log")
    ax.set_ylabel("MSE")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(epochs, [float(r["lr"]) for r in rows], color="k")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_yscale("log")
    fig.suptitle(str(metrics_csv.parent.name))
    return save_png(fig, out_png)


# -- entry points ----------------------------------------------------------------------------
def checkpoint_callbacks(ckpt_dir: Path) -> list[ModelCheckpoint]:
    """``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (the end of every epoch).

    Two callbacks, not one with ``save_last=True``: since Lightning 2.2 that writes last.ckpt
    only when a best checkpoint is written too, so once the validation loss stops improving a
    killed run would resume from its best epoch and redo every epoch after it.
    """
    return [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                            enable_version_counter=False),
            ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                            enable_version_counter=False)]


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run; returns the run directory. Exports the best model at the end."""
    if cfg.lr_schedule not in ("plateau", "cosine"):
        raise TrainingError(f"unknown learning-rate schedule {cfg.lr_schedule!r}; use 'plateau' or 'cosine'")
    ModelConfig.from_dict(cfg.model)  # bad model settings (e.g. an unknown --variant) fail before any data is read
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise TrainingError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
    elif last.is_file():
        raise TrainingError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    # checked before anything is written; a resumed run's checkpoint already holds the fine-tuned weights
    start_weights = initial_weights(cfg) if cfg.init_from and not resume else None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_table, val_table, protocol = resolve_protocol(cfg, progress=progress)
    if not resume:
        hist = np.bincount(train_table.num_atoms, minlength=cfg.model["max_atoms"] + 1)
        cfg.model["num_atoms_hist"] = hist.tolist()
        cfg.model["elements"] = sorted({int(z) for z in train_table.numbers})
        # twice the longest lattice vector seen: generous, but stops a runaway first step
        cfg.model["lattice_bound"] = round(2 * float(np.linalg.norm(train_table.lattices, axis=-1).max()), 2)
        if is_global_zero():  # DDP re-runs this command in every process; one of them writes
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", asdict(cfg))
            write_json(run_dir / "protocol.json", protocol)
    if is_global_zero():
        print(f"data protocol: {protocol['name']} — train {protocol['train_size']} crystals ({protocol['train']}), "
              f"validation {protocol['val_size']} ({protocol['val']})")

    module = DiffCSPModule(cfg.model, lr=cfg.lr, lr_factor=cfg.lr_factor, lr_patience=cfg.lr_patience, min_lr=cfg.min_lr,
                           ema_decay=cfg.ema_decay, lr_schedule=cfg.lr_schedule)
    if start_weights is not None:
        module.model.load_state_dict(start_weights, strict=True)
        if module.ema_model is not None:
            module.ema_model.load_state_dict(start_weights, strict=True)
    callbacks = [
        MetricsLog(run_dir),
        *checkpoint_callbacks(ckpt_dir),
    ]
    if os.environ.get("DIFFCSP_LOG_BATCH_IDS"):
        callbacks.append(BatchIdLog(Path(os.environ["DIFFCSP_LOG_BATCH_IDS"]), train_table.ids))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, math.ceil(len(train_table) / cfg.batch_size) // 2)))
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=_devices(cfg.devices), num_nodes=cfg.num_nodes,
        gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm="value", callbacks=callbacks, logger=False,
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=run_dir, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], precision=_lightning_precision(cfg),
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader(train_table, cfg.batch_size, cfg.seed), eval_loader(val_table, cfg.batch_size),
                ckpt_path=str(last) if resume else None)
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:  # rank 0 exports the model and draws the curve
        return run_dir
    best = ckpt_dir / "best.ckpt"
    from diffcsp.checkpoint import load_model

    model = load_model(best if best.is_file() else last)
    rows = callbacks[0].rows
    export_model(model, run_dir / "model", meta={
        "dataset": cfg.dataset, "task": cfg.task, "preset": cfg.preset, "protocol": protocol["name"],
        "epochs": len(rows), "best_val_loss": min((float(r["val_loss"]) for r in rows), default=None),
        "train_seconds": round(sum(float(r["epoch_seconds"]) for r in rows), 1),
        "last_session_seconds": round(wall, 1),
    })
    if rows:
        plot_training_curve(run_dir / "metrics.csv", run_dir / "training_curve.png")
    return run_dir


def initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of ``cfg.init_from``, after checking that its network is the one ``cfg`` trains."""
    from diffcsp.checkpoint import load_model

    start = load_model(cfg.init_from, task=cfg.task)
    own = ModelConfig.from_dict(cfg.model).to_dict()
    theirs = start.config.to_dict()
    differ = [f"{k} {theirs[k]!r} (--init-from) vs {own[k]!r}" for k in NETWORK_SETTINGS if own[k] != theirs[k]]
    if differ:
        raise TrainingError(f"--init-from {cfg.init_from}: the model to start from has other network settings: "
                            f"{'; '.join(differ)}")
    return start.state_dict()


def _lightning_precision(cfg: TrainConfig) -> str:
    from diffcsp.precision import resolve

    device = "cuda" if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    return "bf16-mixed" if resolve(cfg.precision, device) == "bf16" else "32-true"


def _devices(value: str) -> int | str:
    return int(value) if str(value).isdigit() else value


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{run_dir}: not a run directory (no config.json)")
    import json

    return TrainConfig(**json.loads(path.read_text()))
