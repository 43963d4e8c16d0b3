"""The whole pipeline in one test: memorise a few real Perov-5 crystals, sample them back with
the real predictor–corrector sampler, and match them with StructureMatcher (the paper's settings).

Uses the library end to end — CSV parsing, batching, the DiffCSP loss, Adam with clipping by
value as in training, ``sampler.sample`` with all T = 1000 steps and the paper's Perov-5 corrector
step — only with a small network, and with every batch made of copies of the same crystals so
that a few thousand optimiser steps suffice. The crystals are the first rows of the bundled
Perov-5 fixture (real data), so the test runs on a fresh clone.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from diffcsp.batching import collate_table
from diffcsp.data import load_split
from diffcsp.metrics import is_structurally_valid, rms_distance
from diffcsp.model import DiffCSP, ModelConfig
from diffcsp.registry import get_dataset
from diffcsp.sampler import sample

NUM_CRYSTALS = 2
COPIES = 32
STEPS = 3000
SAMPLES = 4
MAX_RMSE = 0.05


def test_memorise_and_sample_back(datasets_dir):
    start = time.perf_counter()
    torch.manual_seed(0)
    table = load_split("perov_5", "val", data_dir=datasets_dir, progress=False).subset(np.arange(NUM_CRYSTALS))
    model = DiffCSP(ModelConfig(hidden=128, num_layers=4, num_freqs=32, time_dim=64, max_atoms=20,
                                lattice_bound=float(2 * np.abs(table.lattices).max())))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch = collate_table(table, np.repeat(np.arange(NUM_CRYSTALS), COPIES))
    for _ in range(STEPS):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
    train_seconds = time.perf_counter() - start

    gamma = get_dataset("perov_5").step_lr("csp", SAMPLES)
    idx = np.repeat(np.arange(NUM_CRYSTALS), SAMPLES)
    atoms = table.numbers[table.atom_index(idx)]
    result = sample(model, table.num_atoms[idx], torch.as_tensor(atoms), step_lr=gamma, seed=0, progress=False)
    truth = table.structures()
    best = {}
    for i, predicted in zip(idx, result.structures(), strict=True):
        assert predicted.composition == truth[i].composition
        rmse = rms_distance(predicted, truth[i]) if is_structurally_valid(predicted) else None
        if rmse is not None:
            best[i] = min(best.get(i, np.inf), rmse)
    print(f"train {train_seconds:.0f} s, total {time.perf_counter() - start:.0f} s, best RMSE per crystal {best}")
    assert set(best) == set(range(NUM_CRYSTALS)), f"not every crystal was recovered: {best}"
    assert max(best.values()) < MAX_RMSE, best
