"""Training through the real CLI on the bundled fixture (real Perov-5 / MP-20 rows).

Covers the run directory, resume equivalence (a run killed with SIGKILL mid-epoch and resumed, or
a finished run lengthened with ``--resume --epochs``, ends with the same weights and metrics as
the same run uninterrupted), options a resume would ignore, data leakage (training rows vs
held-out validation rows; test.csv never opened; the official-train.csv branch), the divergence
guard, clear errors for damaged or mismatched checkpoints, and the published presets and
per-dataset settings, pinned to the paper's numbers written out literally here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_SECONDS, cli, csv_ids, epochs_logged, file_log, logged_cli, metrics_rows, trained_ids
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffcsp.checkpoint import export_model, load_model
from diffcsp.cli import app
from diffcsp.errors import CheckpointError
from diffcsp.model import ModelConfig
from diffcsp.registry import get_dataset
from diffcsp.training import TrainConfig, checkpoint_callbacks

#: Network of the checkpoint tests: small, but not degenerate.
TINY = ["--hidden", "32", "--num-layers", "2", "--num-freqs", "8", "--quiet", "--threads", "1"]
#: The run every resume variant must reproduce: 16 training crystals in batches of 1 (16 optimiser
#: steps per epoch, so a kill lands inside an epoch), a one-layer network, 4 epochs.
EPOCHS = 4
RESUME_RUN = ["--dataset", "perov_5", "--batch-size", "1", "--limit", "16", "--hidden", "16", "--num-layers", "1",
              "--num-freqs", "4", "--quiet", "--threads", "1"]
#: metrics.csv columns that measure time, not training; every other column must match exactly.
TIMING_COLUMNS = {"epoch_seconds", "elapsed_seconds", "cpu_seconds"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, datasets_dir) -> tuple[Path, Path, Path]:
    """A finished 4-epoch run on 16 Perov-5 crystals (val→test protocol), with its file-open and
    batch logs: shared by the checkpoint tests and the reference of the resume tests."""
    root = tmp_path_factory.mktemp("runs")
    run, open_log, batch_log = root / "tiny", root / "opened.txt", root / "batches"
    res = logged_cli(open_log, batch_log, "train", "--data-dir", str(datasets_dir), "--out", str(run),
                     "--epochs", str(EPOCHS), *RESUME_RUN)
    assert res.returncode == 0, res.stderr[-2000:]
    return run, open_log, batch_log


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run[0]


def test_run_directory_contents(run_dir: Path):
    for name in ["config.json", "protocol.json", "metrics.csv", "training_curve.png", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt", "model/config.json", "model/model.safetensors"]:
        assert (run_dir / name).is_file(), name
    assert epochs_logged(run_dir) == list(range(EPOCHS))
    protocol = (run_dir / "protocol.json").read_text()
    assert "val->test" in protocol and "held_out_ids" in protocol
    model = load_model(run_dir)
    assert model.config.hidden == 16 and model.config.dataset == "perov_5"
    assert sum(model.config.num_atoms_hist) == 16


def test_refuses_to_overwrite_a_run(run_dir: Path, datasets_dir):
    res = CliRunner().invoke(app, ["train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out",
                                   str(run_dir), *TINY])
    assert res.exit_code == 1 and "--resume" in res.output and "Traceback" not in res.output


# -- resume ----------------------------------------------------------------------------------
def state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def assert_same_metrics(run: Path, reference: Path, epochs: int) -> None:
    rows, ref = metrics_rows(run), metrics_rows(reference)[:epochs]
    assert [r["epoch"] for r in rows] == [str(e) for e in range(epochs)]
    for row, ref_row in zip(rows, ref, strict=True):
        for column in set(ref_row) - TIMING_COLUMNS:
            if ref_row[column] == "":
                assert row[column] == "", (row["epoch"], column)
            else:
                assert float(row[column]) == pytest.approx(float(ref_row[column]), rel=1e-5, abs=1e-7), \
                    (row["epoch"], column)


def test_killed_resumed_and_extended_run_equals_uninterrupted_run(run_dir: Path, tmp_path: Path, datasets_dir):
    """SIGKILL inside an epoch, resume to 3 epochs (a finished run), then ``--resume --epochs 4``:
    the weights, exported model and metrics equal those of the uninterrupted 4-epoch run."""
    run, batch_log = tmp_path / "killed", tmp_path / "batches"
    proc = subprocess.Popen([sys.executable, "-m", "diffcsp", "train", "--data-dir", str(datasets_dir), "--out",
                             str(run), "--epochs", str(EPOCHS), *RESUME_RUN], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, DIFFCSP_LOG_BATCH_IDS=str(batch_log)))

    def inside_epoch_1() -> bool:  # epoch 0 checkpointed and 4 of epoch 1's 16 batches started
        log = batch_log / "rank0.txt"
        return (run / "checkpoints" / "last.ckpt").is_file() and log.is_file() and \
            sum(line.startswith("1\t") for line in log.read_text().splitlines()) >= 4

    start = time.monotonic()
    while not inside_epoch_1() and proc.poll() is None and time.monotonic() - start < HANG_GUARD_SECONDS:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed: {stderr.decode()[-1000:]}"
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert epochs_logged(run) == [0], "the kill did not land inside epoch 1"

    res = cli("train", "--resume", str(run), "--epochs", "3", "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_metrics(run, run_dir, epochs=3)  # every epoch exactly once, same numbers
    assert json.loads((run / "config.json").read_text())["epochs"] == 3

    res = cli("train", "--resume", str(run), "--epochs", str(EPOCHS), "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_metrics(run, run_dir, epochs=EPOCHS)
    assert json.loads((run / "config.json").read_text())["epochs"] == EPOCHS
    assert_same_weights(state_dict(run / "checkpoints" / "last.ckpt"), state_dict(run_dir / "checkpoints" / "last.ckpt"))
    assert_same_weights(load_file(run / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors"))
    assert not list(run.rglob("*.tmp")), "temporary files left behind"


def test_last_checkpoint_is_written_every_epoch_even_when_validation_gets_worse(tmp_path: Path):
    """A killed run resumes from last.ckpt, so it must hold the latest epoch, not the best one.
    Here the validation loss rises every epoch: best.ckpt stays at epoch 0, last.ckpt follows."""
    import lightning as L

    class Rising(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    ckpt_dir = tmp_path / "checkpoints"
    trainer = L.Trainer(max_epochs=3, callbacks=checkpoint_callbacks(ckpt_dir), logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Rising(), loader, loader)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(ckpt_dir / "best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("extra", [["--hidden", "64"], ["--lr", "0.01"], ["--limit", "8"], ["--seed", "1"],
                                   ["--dataset", "carbon_24"], ["--preset", "paper"], ["--task", "gen"],
                                   ["--data-dir", "elsewhere"], ["--batch-size", "2", "--num-layers", "3"],
                                   ["--init-from", "carbon_24"]])
def test_resume_refuses_options_it_would_ignore(run_dir: Path, extra: list[str]):
    before = (run_dir / "config.json").read_text()
    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir), *extra])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output, res.output
    for option in extra[::2]:
        assert option in lines[0]
    assert (run_dir / "config.json").read_text() == before


def test_init_from_starts_from_the_given_weights(run_dir: Path, tmp_path: Path, datasets_dir):
    """Fine-tuning with a learning rate too small to move anything ends with the source's weights
    (a random initialisation would be far from them), on the source's network settings."""
    run = tmp_path / "ft"
    res = cli("train", "--data-dir", str(datasets_dir), "--dataset", "perov_5", "--limit", "8", "--batch-size", "4",
              "--epochs", "1", "--lr", "1e-12", "--ema-decay", "0", "--init-from", str(run_dir), "--out", str(run),
              "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    source = load_model(run_dir)
    tuned = {k.removeprefix("model."): v for k, v in state_dict(run / "checkpoints" / "last.ckpt").items()}
    assert_same_weights(tuned, source.state_dict())
    saved = json.loads((run / "config.json").read_text())
    assert saved["init_from"] == str(run_dir)
    assert {k: saved["model"][k] for k in ("hidden", "num_layers", "num_freqs")} == \
        {k: getattr(source.config, k) for k in ("hidden", "num_layers", "num_freqs")}


def test_init_from_another_network_is_a_clear_error(run_dir: Path, tmp_path: Path, datasets_dir):
    res = CliRunner().invoke(app, ["train", "--data-dir", str(datasets_dir), "--dataset", "perov_5", "--limit", "8",
                                   "--init-from", str(run_dir), "--hidden", "64", "--out", str(tmp_path / "ft")])
    assert res.exit_code == 1 and res.output.startswith("error:") and "Traceback" not in res.output, res.output
    assert "hidden 16 (--init-from) vs 64" in res.output
    assert not (tmp_path / "ft").exists(), "nothing may be written before the check"


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith("error:") and "Traceback" not in res.output


def test_unknown_preset_is_a_clear_error(tmp_path: Path, datasets_dir):
    res = CliRunner().invoke(app, ["train", "--dataset", "perov_5", "--data-dir", str(datasets_dir),
                                   "--out", str(tmp_path / "run"), "--preset", "huge"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip()] and res.output.startswith("error:")
    assert "huge" in res.output and "cpu" in res.output and "paper" in res.output
    assert not (tmp_path / "run").exists()


# -- leakage ---------------------------------------------------------------------------------
def test_val_test_protocol_trains_only_on_val_rows_outside_the_held_out_part(tiny_run, datasets_dir):
    run, open_log, batch_log = tiny_run
    val_ids = csv_ids(datasets_dir / "perov_5" / "val.csv")
    held_out = json.loads((run / "protocol.json").read_text())["held_out_ids"]
    assert len(held_out) == round(0.1 * len(val_ids)) and set(held_out) <= set(val_ids)
    # --limit 16: the first 16 val.csv rows (file order) that are not held out, every epoch
    expected = [i for i in val_ids if i not in set(held_out)][:16]
    per_epoch = trained_ids(batch_log)
    assert sorted(per_epoch) == list(range(EPOCHS))
    for epoch, ids in per_epoch.items():
        assert sorted(ids) == sorted(expected), epoch
        assert not set(ids) & set(held_out)
    assert per_epoch[0] != per_epoch[1], "the data order should change between epochs"

    opened = [path for _, _, path in file_log(open_log) if path.endswith(".csv")]
    assert any(p.endswith("perov_5/val.csv") for p in opened), opened  # the log works
    assert (datasets_dir / "perov_5" / "test.csv").is_file()  # present, so not opening it means something
    assert not [p for p in opened if p.endswith("test.csv")], opened


def test_official_train_split_is_used_when_present(tmp_path: Path, datasets_dir):
    """mp_20_mini has its own train.csv: train on it, validate on val.csv, never open test.csv."""
    run, open_log, batch_log = tmp_path / "run", tmp_path / "opened.txt", tmp_path / "batches"
    res = logged_cli(open_log, batch_log, "train", "--dataset", "mp_20_mini", "--data-dir", str(datasets_dir),
                     "--out", str(run), "--epochs", "1", "--batch-size", "8", "--limit", "24",
                     "--hidden", "16", "--num-layers", "1", "--num-freqs", "4", "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    protocol = json.loads((run / "protocol.json").read_text())
    assert protocol["name"] == "official" and "held_out_ids" not in protocol
    assert protocol["train_source"].endswith("mp_20_mini/train.csv")
    assert protocol["val_source"].endswith("mp_20_mini/val.csv")
    assert protocol["train_size"] == 24 and protocol["val_size"] == 24

    train_ids = csv_ids(datasets_dir / "mp_20_mini" / "train.csv")
    val_ids = csv_ids(datasets_dir / "mp_20_mini" / "val.csv")
    assert not set(train_ids) & set(val_ids)  # the official splits are disjoint
    (ids,) = trained_ids(batch_log).values()
    assert sorted(ids) == sorted(train_ids[:24])

    opened = [path for _, _, path in file_log(open_log) if path.endswith(".csv")]
    assert any(p.endswith("mp_20_mini/train.csv") for p in opened), opened
    assert any(p.endswith("mp_20_mini/val.csv") for p in opened), opened
    assert not [p for p in opened if p.endswith("test.csv")], opened


# -- failures and checkpoints ----------------------------------------------------------------
def test_divergence_stops_before_checkpointing(tmp_path: Path, datasets_dir):
    run = tmp_path / "nan"
    res = cli("train", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run), "--epochs", "3",
              "--batch-size", "8", "--limit", "32", "--lr", "1e30", *TINY)
    assert res.returncode == 1
    assert "loss became" in res.stderr and "Traceback" not in res.stderr
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_damaged_checkpoint(run_dir: Path, tmp_path: Path):
    data = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(broken)
    res = cli("predict", "SrTiO3", "-n", "1", "--checkpoint", str(broken), "--out", str(tmp_path / "p"))
    assert res.returncode == 1 and "damaged" in res.stderr and "Traceback" not in res.stderr

    folder = tmp_path / "exported"
    export_model(load_model(run_dir), folder)
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:100] + b"\x00" * 50 + raw[150:])
    with pytest.raises(CheckpointError):
        load_model(folder)


def test_checkpoint_with_other_settings(run_dir: Path, tmp_path: Path):
    folder = tmp_path / "mismatch"
    export_model(load_model(run_dir), folder)
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


def test_sample_and_evaluate_cli(run_dir: Path, tmp_path: Path, datasets_dir):
    """`diffcsp sample` → predictions file → `diffcsp evaluate` with JSON, CSV and plot."""
    preds = tmp_path / "preds.json.gz"
    res = cli("sample", "--checkpoint", str(run_dir), "--dataset", "perov_5", "--data-dir", str(datasets_dir),
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


def test_predict_cli_writes_cifs(run_dir: Path, tmp_path: Path):
    from pymatgen.core import Structure

    out = tmp_path / "pred"
    res = cli("predict", "CaTiO3", "-n", "2", "--checkpoint", str(run_dir), "--steps", "10", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    cifs = sorted(p for p in out.glob("*.cif") if not p.stem.endswith("_sym"))  # *_sym.cif: symmetrised copies
    assert len(cifs) == 2
    s = Structure.from_file(cifs[0])
    assert s.composition.reduced_formula == "CaTiO3" and len(s) == 5
    assert "spacegroup" in (out / "summary.csv").read_text()


@pytest.mark.parametrize("formula,message", [("XxO3", "unknown element"), ("Sr(TiO3", "cannot read formula"),
                                             ("Sr0.5TiO3", "whole numbers"), ("Sr5Ti5O15", "at most 20")])
def test_predict_cli_bad_input(run_dir: Path, tmp_path: Path, formula: str, message: str):
    res = cli("predict", formula, "--checkpoint", str(run_dir), "--out", str(tmp_path / "p"))
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "p").exists()


# -- presets and per-dataset settings: the published values, written out ----------------------
#: DiffCSP (Jiao et al. 2023), appendix: epochs and batch size per dataset.
PAPER_EPOCHS_BATCH = {"perov_5": (3000, 1024), "carbon_24": (4000, 256), "mp_20": (1000, 256), "mpts_52": (1000, 64)}
#: Corrector step size γ: CSP with one sample, CSP with 20 samples, ab initio generation.
PAPER_STEP_LR = {"perov_5": (5e-7, 5e-7, 1e-6), "carbon_24": (5e-6, 5e-7, 1e-5), "mp_20": (1e-5, 1e-5, 5e-6),
                 "mpts_52": (1e-5, 1e-5, None)}
#: CDVAE's coverage cut-offs (structure, composition) used for generation.
PAPER_COVERAGE = {"mp_20": (0.4, 10.0), "carbon_24": (0.2, 4.0), "perov_5": (0.2, 4.0)}


@pytest.mark.parametrize("dataset", sorted(PAPER_EPOCHS_BATCH))
def test_paper_preset(dataset: str):
    cfg = TrainConfig.from_preset(dataset, "run", preset="paper")
    assert (cfg.epochs, cfg.batch_size) == PAPER_EPOCHS_BATCH[dataset]
    # Adam 1e-3, ReduceLROnPlateau(factor 0.6, patience 30, min 1e-4), gradients clipped at 0.5 by value
    assert (cfg.lr, cfg.lr_schedule, cfg.lr_factor, cfg.lr_patience, cfg.min_lr) == (1e-3, "plateau", 0.6, 30, 1e-4)
    assert cfg.grad_clip == 0.5
    assert cfg.ema_decay == 0.0  # the paper trains without a weight average
    model = ModelConfig.from_dict(cfg.model)
    assert (model.hidden, model.num_layers, model.num_freqs, model.time_dim) == (512, 6, 128, 256)
    assert (model.timesteps, model.sigma_begin, model.sigma_end) == (1000, 0.005, 0.5)
    assert (model.cost_lattice, model.cost_coord, model.cost_type) == (1.0, 1.0, 20.0)
    assert model.max_atoms == {"perov_5": 20, "carbon_24": 24, "mp_20": 20, "mpts_52": 52}[dataset]


def test_cpu_preset_as_committed():
    """The budgets the bundled and benchmark models were trained with (see the model card)."""
    csp = {"perov_5": (600, 256), "carbon_24": (300, 128), "mp_20": (200, 256), "mpts_52": (100, 64),
           "mp_20_mini": (400, 128)}
    gen = {"perov_5": (300, 256), "carbon_24": (300, 128), "mp_20": (200, 256), "mpts_52": (100, 64),
           "mp_20_mini": (400, 128)}
    for task, schedule in (("csp", csp), ("gen", gen)):
        for dataset, epochs_batch in schedule.items():
            cfg = TrainConfig.from_preset(dataset, "run", preset="cpu", task=task)
            assert (cfg.epochs, cfg.batch_size) == epochs_batch, (task, dataset)
            model = ModelConfig.from_dict(cfg.model)
            assert (model.hidden, model.num_layers, model.num_freqs, model.time_dim) == (128, 4, 32, 64)
            assert (model.timesteps, model.sigma_begin, model.sigma_end, model.cost_type) == (1000, 0.005, 0.5, 20.0)
            assert model.task == task and cfg.grad_clip == 0.5 and cfg.lr == 1e-3


def test_overrides_and_unknown_preset():
    cfg = TrainConfig.from_preset("perov_5", "run", preset="cpu", epochs=7, batch_size=3, model={"hidden": 16})
    assert (cfg.epochs, cfg.batch_size, cfg.model["hidden"], cfg.model["num_layers"]) == (7, 3, 16, 4)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        TrainConfig.from_preset("perov_5", "run", preset="huge")
    with pytest.raises(ValueError, match="unknown dataset 'perov_6'"):
        TrainConfig.from_preset("perov_6", "run")


@pytest.mark.parametrize("dataset", sorted(PAPER_STEP_LR))
def test_corrector_step_sizes(dataset: str):
    one, twenty, gen = PAPER_STEP_LR[dataset]
    info = get_dataset(dataset)
    assert info.step_lr("csp", 1) == one
    assert info.step_lr("csp", 20) == twenty
    if gen is None:
        with pytest.raises(ValueError, match="no ab initio step size"):
            info.step_lr("gen")
    else:
        assert info.step_lr("gen") == gen


@pytest.mark.parametrize("dataset", sorted(PAPER_COVERAGE))
def test_coverage_cutoffs(dataset: str):
    assert get_dataset(dataset).coverage_cutoffs == PAPER_COVERAGE[dataset]
