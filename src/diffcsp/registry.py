"""Facts about the four DiffCSP benchmarks (and the local MP-20 sample), in one place.

Everything a dataset-specific code path needs (atom limit, property column, corrector step
sizes from the paper, where the raw files live and their git blob ids) is looked up here, so no
other module hard-codes a dataset name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one benchmark dataset."""

    name: str
    max_atoms: int
    property_column: str | None
    #: The paper's corrector step size γ for CSP with one sample, CSP with many, and ab initio.
    step_lr_csp: float
    step_lr_csp_multi: float
    step_lr_gen: float | None
    #: GitHub repository serving ``data/<name>/<split>.csv``; None for local-only datasets.
    repo: str | None
    #: git blob ids (``git hash-object``) of the official files, per split.
    blob_ids: dict[str, str] = field(default_factory=dict)
    #: The paper's coverage cut-offs (structure, composition) for ab initio generation.
    coverage_cutoffs: tuple[float, float] | None = None
    #: column holding the formula, if the CSV has one (otherwise derived from the CIF).
    formula_column: str | None = None

    def step_lr(self, task: str = "csp", num_samples: int = 1) -> float:
        """Corrector step size γ recommended by the paper for this dataset and use."""
        if task == "gen":
            if self.step_lr_gen is None:
                raise ValueError(f"the paper gives no ab initio step size for {self.name}")
            return self.step_lr_gen
        return self.step_lr_csp_multi if num_samples > 1 else self.step_lr_csp


DATASETS: dict[str, DatasetInfo] = {
    "perov_5": DatasetInfo(
        name="perov_5",
        max_atoms=20,
        property_column="heat_ref",
        step_lr_csp=5e-7,
        step_lr_csp_multi=5e-7,
        step_lr_gen=1e-6,
        repo="txie-93/cdvae",
        blob_ids={
            "train": "0769074b5d51d293b765c4371b8f55c468c9c9f2",
            "val": "4a2c8dde98347dd0e01fa83dcf3982c2abe98f9f",
            "test": "d3c5d5af4b27a2a139149f2bb73c8a3dba9d8ac1",
        },
        coverage_cutoffs=(0.2, 4.0),
        formula_column="formula",
    ),
    "carbon_24": DatasetInfo(
        name="carbon_24",
        max_atoms=24,
        property_column="energy_per_atom",
        step_lr_csp=5e-6,
        step_lr_csp_multi=5e-7,
        step_lr_gen=1e-5,
        repo="txie-93/cdvae",
        blob_ids={
            "train": "5e7ae970fbad8ddc46b6963e8cd6e425f11783a6",
            "val": "b3e29b927883642426ca1d9632d00359b412742b",
            "test": "9beca843fde489de1fe288b32f9e3ff710d42803",
        },
        coverage_cutoffs=(0.2, 4.0),
    ),
    "mp_20": DatasetInfo(
        name="mp_20",
        max_atoms=20,
        property_column="formation_energy_per_atom",
        step_lr_csp=1e-5,
        step_lr_csp_multi=1e-5,
        step_lr_gen=5e-6,
        repo="txie-93/cdvae",
        blob_ids={
            "train": "b1c9d498565ac2fd8d075a51ff2ef5e51ba6c21f",
            "val": "7efe4d7ebeb4f460ceaad35e5326c42111d9c9a1",
            "test": "5dc643041df53f5ce4970a79930ad262b4f07acd",
        },
        coverage_cutoffs=(0.4, 10.0),
        formula_column="pretty_formula",
    ),
    "mpts_52": DatasetInfo(
        name="mpts_52",
        max_atoms=52,
        property_column="formation_energy_per_atom",
        step_lr_csp=1e-5,
        step_lr_csp_multi=1e-5,
        step_lr_gen=None,
        repo="jiaor17/DiffCSP",
        blob_ids={
            "train": "28c53b0a0fd3f32fb8078aca8e5b484e372790c6",
            "val": "a377ba0ca7bee37ee69d9f50f8362eaa35d9f690",
            "test": "2e8af159618f63be346b6527f155514323964423",
        },
        formula_column="pretty_formula",
    ),
    # A real sample of MP-20 rows that lives only on the project's machines; same rules as MP-20.
    "mp_20_mini": DatasetInfo(
        name="mp_20_mini",
        max_atoms=20,
        property_column="formation_energy_per_atom",
        step_lr_csp=1e-5,
        step_lr_csp_multi=1e-5,
        step_lr_gen=5e-6,
        repo=None,
        coverage_cutoffs=(0.4, 10.0),
        formula_column="pretty_formula",
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    """Look a dataset up by name, with an error that lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def project_root() -> Path:
    """The source checkout this package runs from (src/diffcsp/ → two levels up)."""
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """Where datasets are read from: $DIFFCSP_DATA, else ../shared/datasets, else a user cache."""
    env = os.environ.get("DIFFCSP_DATA")
    if env:
        return Path(env).expanduser()
    shared = project_root().parent / "shared" / "datasets"
    if shared.is_dir():
        return shared
    return default_cache_dir() / "datasets"


def default_cache_dir() -> Path:
    """Per-user cache directory ($DIFFCSP_CACHE or ~/.cache/diffcsp) for processed splits."""
    env = os.environ.get("DIFFCSP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffcsp"


def split_path(name: str, split: str, data_dir: Path | str | None = None) -> Path:
    """Path of ``<data_dir>/<name>/<split>.csv`` (not checked for existence)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    get_dataset(name)
    return Path(data_dir or default_data_dir()) / name / f"{split}.csv"
