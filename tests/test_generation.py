"""Ab initio generation end to end through the CLI: train --task gen → generate → evaluate.

Runs on the bundled fixture (real Perov-5 rows), so it needs no downloaded data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from pymatgen.core import Structure

from diffcsp.checkpoint import load_model
from diffcsp.predict import sample_num_atoms
from diffcsp.metrics import is_structurally_valid
from diffcsp.predictions import Predictions, dict_to_structure


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, datasets_dir) -> Path:
    run = tmp_path_factory.mktemp("gen") / "run"
    res = cli("train", "--task", "gen", "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--out", str(run),
              "--epochs", "2", "--batch-size", "16", "--limit", "32", "--hidden", "32", "--num-layers", "2",
              "--num-freqs", "8", "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_gen_model_records_atom_count_distribution(gen_run: Path):
    model = load_model(gen_run)
    assert model.is_gen and model.net.type_out is not None
    hist = model.config.num_atoms_hist
    assert sum(hist) == 32 and hist[5] == 32  # Perov-5: five atoms per cell
    counts = sample_num_atoms([0, 1, 0, 3], 4000, seed=1)
    assert set(counts) == {1, 3} and abs((counts == 3).mean() - 0.75) < 0.03


def test_generate_and_evaluate(gen_run: Path, tmp_path: Path, datasets_dir):
    out = tmp_path / "gen"
    res = cli("generate", "--checkpoint", str(gen_run), "-n", "6", "--steps", "20", "--out", str(out), "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    preds = Predictions.load(out / "generated.json.gz")
    assert preds.task == "gen" and len(preds.generated) == 6
    cifs = sorted((out / "cif").glob("*.cif"))
    assert len(cifs) == 6
    for cif, crystal in zip(cifs, preds.generated, strict=True):
        assert len(crystal["numbers"]) == 5 and all(1 <= z <= 100 for z in crystal["numbers"])
        # an untrained model may put atoms on top of each other, which a CIF reader merges;
        # valid structures must read back with the same composition
        if is_structurally_valid(dict_to_structure(crystal)):
            assert Structure.from_file(cif).composition == dict_to_structure(crystal).composition

    metrics = tmp_path / "m.json"
    res = cli("evaluate", str(out / "generated.json.gz"), "--reference-limit", "12", "--workers", "1",
              "--data-dir", str(datasets_dir), "--json", str(metrics))
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(metrics.read_text())
    for key in ["struct_valid", "comp_valid", "valid", "cov_recall", "cov_precision", "wdist_density", "wdist_num_elems"]:
        assert key in summary
    assert summary["n"] == 6 and 0 <= summary["valid"] <= min(summary["struct_valid"], summary["comp_valid"]) <= 1
    assert np.isfinite(summary["wdist_density"]) or summary["valid"] == 0


def test_generate_passes_sampler_options(gen_run: Path):
    """``generate(..., corrector_temperature=κ)`` reaches the sampler: κ scales only the
    corrector's noise, so without a corrector (step_lr = 0) κ cannot change the crystals, and
    with one it must."""
    from diffcsp.predict import generate

    model = load_model(gen_run)

    def lattices(**kw):
        preds, _ = generate(model, 4, steps=10, seed=3, progress=False, **kw)
        return preds, np.array([g["lattice"] for g in preds.generated])

    cool, a = lattices(step_lr=0.0, corrector_temperature=0.5)
    _, b = lattices(step_lr=0.0)
    assert np.array_equal(a, b) and cool.meta["corrector_temperature"] == 0.5
    _, c = lattices(corrector_temperature=0.5)
    _, d = lattices()
    assert not np.allclose(c, d)


def test_generate_cli_corrector_temperature(gen_run: Path, tmp_path: Path):
    """The CLI's κ reaches the library call (same crystals as ``generate(..., corrector_temperature=κ)``
    and recorded in the file); an out-of-range κ is a one-line error that writes nothing."""
    from diffcsp.predict import generate

    out = tmp_path / "cool"
    res = cli("generate", "-c", str(gen_run), "-n", "3", "--steps", "10", "--seed", "5", "--corrector-temperature", "0.6",
              "--out", str(out), "--no-cif", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    preds = Predictions.load(out / "generated.json.gz")
    assert preds.meta["corrector_temperature"] == 0.6
    same, _ = generate(load_model(gen_run), 3, steps=10, seed=5, progress=False, corrector_temperature=0.6)
    for a, b in zip(same.generated, preds.generated, strict=True):
        assert np.allclose(a["lattice"], b["lattice"], atol=1e-4)
    bad = tmp_path / "bad"
    res = cli("generate", "-c", str(gen_run), "-n", "2", "--steps", "5", "--corrector-temperature", "1.5",
              "--out", str(bad), "--threads", "1")
    assert res.returncode != 0 and "corrector_temperature" in res.stderr and "Traceback" not in res.stderr
    assert not bad.exists()


def test_generate_cli_continues_an_interrupted_run(gen_run: Path, tmp_path: Path, monkeypatch):
    """A generation run stopped after its first batch (the journal it leaves is the library's),
    then `diffcsp generate` with the same arguments: it continues and writes the crystals of an
    uninterrupted `diffcsp generate`, and removes the journal."""
    from diffcsp import sampler as sampler_mod
    from diffcsp.predict import generate

    args = ["generate", "-c", str(gen_run), "-n", "3", "--steps", "8", "--seed", "2", "--batch-size", "1", "--no-cif",
            "--threads", "1"]
    res = cli(*args, "--out", str(tmp_path / "whole"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "whole" / "generated.json.gz.partial.pt").exists()

    out = tmp_path / "resumed"
    journal = out / "generated.json.gz.partial.pt"
    real, calls = sampler_mod._sample_chunk, []

    def stop_at_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sampler_mod, "_sample_chunk", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        generate(load_model(gen_run), 3, steps=8, seed=2, batch_size=1, progress=False, journal=journal)
    monkeypatch.undo()
    assert journal.exists()
    res = cli(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "continuing the sampling run" in res.stderr and not journal.exists()
    resumed, whole = Predictions.load(out / "generated.json.gz"), Predictions.load(tmp_path / "whole" / "generated.json.gz")
    assert resumed.generated == whole.generated and resumed.meta["resumed_chunks"] == 1


def test_generation_model_does_csp_of_a_split(gen_run: Path, tmp_path: Path, datasets_dir):
    """`diffcsp sample` with a generation model: each sample has its ground truth's atoms
    (the type channel is held at them, not sampled), and `diffcsp evaluate` scores the file."""
    out = tmp_path / "csp_by_gen.json.gz"
    res = cli("sample", "-c", str(gen_run), "--dataset", "perov_5", "--data-dir", str(datasets_dir), "--limit", "4",
              "-k", "2", "--steps", "5", "--corrector-temperature", "0.5", "--out", str(out), "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    preds = Predictions.load(out)
    assert preds.task == "csp" and preds.meta["model"]["task"] == "gen" and len(preds.crystals) == 4
    assert preds.meta["corrector_temperature"] == 0.5 and preds.meta["sampler"] == "custom"
    for crystal in preds.crystals:
        for s in crystal["samples"]:
            assert s["numbers"] == crystal["ground_truth"]["numbers"]
    res = cli("evaluate", str(out), "--data-dir", str(datasets_dir), "--workers", "1", "--json", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 4


def test_wrong_model_kind_is_a_clear_error(tmp_path: Path):
    """A CSP model cannot generate (it has no type channel); the reverse works (see above)."""
    res = cli("generate", "-c", "perov_5_wide", "-n", "1", "--steps", "2", "--out", str(tmp_path / "g"))
    assert res.returncode == 1 and "CSP model" in res.stderr and "Traceback" not in res.stderr


def test_bundled_generation_model_makes_valid_perovskites(tmp_path: Path):
    """`diffcsp generate` with no model uses the bundled Perov-5 generation model and the paper's
    1000 steps. Measured on 10,000 of its crystals: 100 % structurally and 98.4 % compositionally
    valid (BENCHMARKS.md), so 16 crystals all structurally valid and at most 3 failing SMACT
    would fail by chance with probability < 1e-3."""
    from diffcsp.gen_metrics import smact_validity

    out = tmp_path / "gen"
    res = cli("generate", "-n", "16", "--out", str(out), "--no-cif", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    preds = Predictions.load(out / "generated.json.gz")
    assert preds.meta["checkpoint"] == "bundled:perov_5_gen" and preds.dataset == "perov_5"
    structures = [dict_to_structure(g) for g in preds.generated]
    assert len(structures) == 16 and all(len(s) == 5 for s in structures)
    assert all(is_structurally_valid(s) for s in structures)
    assert sum(smact_validity(s.composition) for s in structures) >= 13
    # the library call gives the same crystals for the same seed (the CLI is a thin layer over it)
    from diffcsp.predict import generate

    same, _ = generate(None, 16, seed=0, progress=False)
    for a, b in zip(same.generated, preds.generated):
        assert a["numbers"] == b["numbers"]
        assert np.allclose(a["lattice"], b["lattice"], atol=1e-4)


def test_bundled_carbon_generation_model_makes_carbon_with_carbon_bonds(tmp_path: Path):
    """`diffcsp generate -m carbon_24` uses the bundled Carbon-24 generation model with its default
    sampler (the paper's 1000 steps, corrector at κ = 0.3). Measured on 1,000 of its crystals: all
    structurally valid, and 84 % of the nearest-neighbour C–C distances within 1.38–1.58 Å,
    Carbon-24's sp²/sp³ bond lengths (71 % with the paper's κ = 1; BENCHMARKS.md). A wrong or
    untrained network puts atoms anywhere, so the median nearest-neighbour
    distance of eight crystals landing in that window is a real check of the shipped weights."""
    out = tmp_path / "gen"
    res = cli("generate", "-m", "carbon_24", "-n", "8", "--out", str(out), "--no-cif", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    preds = Predictions.load(out / "generated.json.gz")
    assert preds.dataset == "carbon_24"
    structures = [dict_to_structure(g) for g in preds.generated]
    assert len(structures) == 8 and all(is_structurally_valid(s) for s in structures)
    assert preds.meta["sampler"] == "auto" and preds.meta["corrector_temperature"] == 0.3  # Carbon-24's default
    # atom counts come from the training cells: 6 to 24 carbon atoms, always even in Carbon-24
    assert all(set(s.atomic_numbers) == {6} and len(s) in range(6, 25, 2) for s in structures)
    nearest = [min(n.nn_distance for n in site_neighbours) for s in structures for site_neighbours in s.get_all_neighbors(3.0)]
    assert 1.38 <= float(np.median(nearest)) <= 1.58, np.median(nearest)


def test_generate_auto_sampler_is_the_paper_sampler_with_the_tuned_temperature():
    """For the bundled Carbon-24 model ``sampler="auto"`` (the default) equals the paper's sampler
    with κ = 0.3 given by hand, and differs from the paper's sampler; an explicit κ overrides it."""
    from diffcsp.predict import generate

    model = load_model("carbon_24", task="gen")

    def lattices(**kw):
        preds, _ = generate(model, 2, steps=4, seed=1, progress=False, **kw)
        return preds.meta, np.array([g["lattice"] for g in preds.generated])

    meta, auto = lattices()
    _, by_hand = lattices(sampler="paper", corrector_temperature=0.3)
    paper_meta, paper = lattices(sampler="paper")
    assert meta["corrector_temperature"] == 0.3 and paper_meta["corrector_temperature"] == 1.0
    assert np.array_equal(auto, by_hand) and not np.allclose(auto, paper)
    _, overridden = lattices(corrector_temperature=1.0)
    assert np.array_equal(overridden, paper)


def test_generate_cli_sampler_choice(tmp_path: Path):
    """`--sampler paper` gives the bundled Carbon-24 model the paper's κ = 1 (recorded in the file);
    a preset never measured for generation is a one-line error that writes nothing."""
    out = tmp_path / "paper"
    res = cli("generate", "-m", "carbon_24", "-n", "1", "--steps", "3", "--sampler", "paper", "--out", str(out),
              "--no-cif", "--threads", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    meta = Predictions.load(out / "generated.json.gz").meta
    assert meta["corrector_temperature"] == 1.0 and meta["sampler"] == "custom"  # --steps overrides the preset
    assert meta["command"].startswith("diffcsp generate -m carbon_24 -n 1 --steps 3 --sampler paper")
    bad = tmp_path / "fast"
    res = cli("generate", "-m", "carbon_24", "-n", "1", "--sampler", "fast", "--out", str(bad))
    assert res.returncode != 0 and "auto or paper" in res.stderr and "Traceback" not in res.stderr
    assert not bad.exists()
