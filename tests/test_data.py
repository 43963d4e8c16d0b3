"""Data pipeline against real benchmark files and real pymatgen (no mocks).

Covers: CSV → record fidelity (Niggli reduction, wrapped fractional coordinates, the CDVAE
lattice convention), the processed-split cache (hits, invalidation, damaged files), skipped rows
and fatal files, batching / sampling order, and the ``diffcsp data stats`` command.

Rows come from the bundled fixture (``tests/fixtures/datasets``: real rows of each benchmark,
copied verbatim), so none of these tests depends on the full files being present.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffcsp import data as data_mod
from diffcsp.batching import collate_table, make_loader
from diffcsp.data import DataError, load_split
from diffcsp.lattice import lattice_from_params, lattice_volume, params_from_lattice
from diffcsp.training import EpochSeededSampler

REPO = Path(__file__).resolve().parents[1]

#: Fixed sample of rows (positions in the fixture CSV) checked against an independent pymatgen parse.
FIDELITY_ROWS = {
    "perov_5": [0, 11, 23, 31, 39],
    "carbon_24": [0, 7, 19, 28, 39],
    "mp_20_mini": [0, 5, 17, 26, 39],
}


# -- helpers ---------------------------------------------------------------------------------
def read_rows(datasets_dir: Path, name: str, split: str = "val") -> pd.DataFrame:
    path = datasets_dir / name / f"{split}.csv"
    # index_col=0 keeps the unnamed integer index, so to_csv() reproduces the real layout
    return pd.read_csv(path, index_col=0)


def write_split(root: Path, name: str, frame: pd.DataFrame, split: str = "val") -> Path:
    """Write ``frame`` as ``<root>/<name>/<split>.csv`` in the benchmark's layout."""
    path = root / name / f"{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path)
    return path


def pymatgen_niggli(cif: str):
    """Independent reference: the preprocessing of docs/method.md §Representation done directly with pymatgen."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = CifParser(io.StringIO(cif)).parse_structures(primitive=False)[0]
    return structure.get_reduced_structure("niggli")


def periodic_close(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    diff = np.asarray(a) - np.asarray(b)
    diff -= np.round(diff)
    return bool(np.abs(diff).max() <= atol)


def cell_volume(lengths, angles_deg) -> np.ndarray:
    a, b, c = np.moveaxis(np.asarray(lengths, float), -1, 0)
    ca, cb, cg = np.moveaxis(np.cos(np.radians(np.asarray(angles_deg, float))), -1, 0)
    return a * b * c * np.sqrt(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg)


# -- 1. CSV → record fidelity ----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FIDELITY_ROWS))
def test_records_match_independent_pymatgen_parse(name, datasets_dir, tmp_path):
    frame = read_rows(datasets_dir, name).iloc[FIDELITY_ROWS[name]]
    write_split(tmp_path / "data", name, frame)
    table = load_split(name, "val", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert len(table) == len(frame) and not table.skipped
    id_col = "material_id"
    assert table.ids == [str(x) for x in frame[id_col]]

    for i, (_, row) in enumerate(frame.iterrows()):
        record = table.record(i)
        ref = pymatgen_niggli(row["cif"])
        # species, in order
        assert record.numbers.tolist() == [site.specie.Z for site in ref], record.id
        # fractional coordinates: wrapped into [0, 1) and equal to pymatgen's modulo lattice translations
        assert record.frac_coords.min() >= 0.0 and record.frac_coords.max() < 1.0
        assert periodic_close(record.frac_coords, ref.frac_coords, 1e-6), record.id
        # lengths and angles of the Niggli cell
        np.testing.assert_allclose(record.lengths, ref.lattice.abc, atol=1e-6, rtol=0)
        np.testing.assert_allclose(record.angles, ref.lattice.angles, atol=1e-6, rtol=0)
        assert record.formula == ref.composition.reduced_formula

        # the rebuilt structure (CDVAE frame) is the same crystal, only rotated
        rebuilt = record.to_structure()
        np.testing.assert_allclose(rebuilt.lattice.abc, ref.lattice.abc, atol=1e-4, rtol=0)
        np.testing.assert_allclose(rebuilt.lattice.angles, ref.lattice.angles, atol=1e-4, rtol=0)
        assert rebuilt.volume == pytest.approx(ref.volume, abs=1e-4)
        # L_rebuilt = L_ref · Qᵀ with Q a proper rotation
        q_t = np.linalg.solve(ref.lattice.matrix, rebuilt.lattice.matrix)
        np.testing.assert_allclose(q_t.T @ q_t, np.eye(3), atol=1e-6)
        assert np.linalg.det(q_t) == pytest.approx(1.0, abs=1e-6)
        # Cartesian geometry up to rotation: periodic distance matrices agree (same atom order)
        np.testing.assert_allclose(np.sort(rebuilt.distance_matrix, axis=None), np.sort(ref.distance_matrix, axis=None), atol=1e-4)
        np.testing.assert_allclose(rebuilt.distance_matrix, ref.distance_matrix, atol=1e-4)

    # the property column of the dataset is carried along
    prop_col = data_mod.get_dataset(name).property_column
    np.testing.assert_allclose(table.props, frame[prop_col].to_numpy(float))


# -- 2. lattice convention -------------------------------------------------------------------
def random_cells(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random valid cells (positive volume with margin)."""
    lengths, angles = [], []
    while len(lengths) < n:
        ang = rng.uniform(40.0, 140.0, 3)
        ca, cb, cg = np.cos(np.radians(ang))
        if 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg < 0.05:
            continue
        lengths.append(rng.uniform(2.0, 20.0, 3))
        angles.append(ang)
    return np.array(lengths), np.array(angles)


def test_lattice_from_params_cdvae_convention():
    lengths, angles = np.array([3.0, 4.0, 5.0]), np.array([80.0, 95.0, 110.0])
    mat = lattice_from_params(lengths, angles)
    assert mat.shape == (3, 3)
    al, be, ga = np.radians(angles)
    g_star = np.arccos(np.clip((np.cos(al) * np.cos(be) - np.cos(ga)) / (np.sin(al) * np.sin(be)), -1, 1))
    expected = np.array([
        [3.0 * np.sin(be), 0.0, 3.0 * np.cos(be)],
        [-4.0 * np.sin(al) * np.cos(g_star), 4.0 * np.sin(al) * np.sin(g_star), 4.0 * np.cos(al)],
        [0.0, 0.0, 5.0],
    ])
    np.testing.assert_allclose(mat, expected, atol=1e-12)
    # c along z, a in the xz-plane, right-handed
    np.testing.assert_allclose(mat[2, :2], 0.0, atol=1e-12)
    assert mat[0, 1] == 0.0 and mat[0, 0] > 0
    assert np.linalg.det(mat) > 0
    # cubic cell is diagonal
    np.testing.assert_allclose(lattice_from_params([4.0, 4.0, 4.0], [90.0, 90.0, 90.0]), 4.0 * np.eye(3), atol=1e-12)


def test_lattice_round_trip_and_volume():
    lengths, angles = random_cells(np.random.default_rng(0), 200)
    mats = lattice_from_params(lengths, angles)
    assert mats.shape == (200, 3, 3)
    back_l, back_a = params_from_lattice(mats)
    np.testing.assert_allclose(back_l, lengths, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back_a, angles, rtol=0, atol=1e-7)
    vol = cell_volume(lengths, angles)
    np.testing.assert_allclose(np.linalg.det(mats), vol, rtol=1e-10)  # det > 0: right-handed
    np.testing.assert_allclose(lattice_volume(torch.as_tensor(mats)).numpy(), vol, rtol=1e-10)
    # each matrix reproduces its own parameters
    for i in range(0, 200, 37):
        np.testing.assert_allclose(lattice_from_params(lengths[i], angles[i]), mats[i], atol=1e-12)


def test_lattice_batched_shapes():
    lengths, angles = random_cells(np.random.default_rng(1), 24)
    mats = lattice_from_params(lengths.reshape(2, 3, 4, 3), angles.reshape(2, 3, 4, 3))
    assert mats.shape == (2, 3, 4, 3, 3)
    np.testing.assert_allclose(mats.reshape(24, 3, 3), lattice_from_params(lengths, angles))
    back_l, back_a = params_from_lattice(mats)
    assert back_l.shape == back_a.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(back_a.reshape(24, 3), angles, atol=1e-7)


# -- 3. cache ---------------------------------------------------------------------------------
def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npz"))


def assert_same_table(a, b) -> None:
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.num_atoms, b.num_atoms)
    np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.angles, b.angles)
    np.testing.assert_array_equal(a.props, b.props)


def test_cache_hit_does_not_parse(datasets_dir, tmp_path, monkeypatch):
    """The second load reads the cache file: no CIF is parsed (the parser's calls are counted)."""
    calls: list[str] = []
    real_parse_cif = data_mod.parse_cif

    def counting_parse_cif(cif: str):
        calls.append(cif)
        return real_parse_cif(cif)

    monkeypatch.setattr(data_mod, "parse_cif", counting_parse_cif)
    frame = read_rows(datasets_dir, "perov_5")
    write_split(tmp_path / "data", "perov_5", frame)
    kw = dict(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)
    first = load_split("perov_5", "val", **kw)
    assert first.source["cache_hit"] is False and len(first) == len(frame) == 40
    assert len(calls) == len(frame)  # the miss parsed every row once
    assert Path(first.source["cache"]).is_file()
    assert [p.name for p in cache_files(tmp_path / "cache")] == [Path(first.source["cache"]).name]

    second = load_split("perov_5", "val", **kw)
    assert second.source["cache_hit"] is True
    assert len(calls) == len(frame), "a cache hit parsed CIFs again"
    assert_same_table(first, second)
    np.testing.assert_allclose(second.lattices, first.lattices)


def test_cache_invalidation(datasets_dir, tmp_path, monkeypatch):
    frame = read_rows(datasets_dir, "perov_5").iloc[:20].copy()
    path = write_split(tmp_path / "data", "perov_5", frame)
    cache = tmp_path / "cache"
    kw = dict(data_dir=tmp_path / "data", cache_dir=cache, workers=1, progress=False)
    base = load_split("perov_5", "val", **kw)
    assert base.source["cache_hit"] is False
    assert load_split("perov_5", "val", **kw).source["cache_hit"] is True

    # modify one byte of a valid value (a property digit): new content → miss, new cache file
    text = path.read_text()
    old = str(float(frame["heat_ref"].iloc[3]))
    assert text.count(old) == 1, old
    new_value = old[:-1] + ("1" if old[-1] != "1" else "2")
    path.write_text(text.replace(old, new_value))
    changed = load_split("perov_5", "val", **kw)
    assert changed.source["cache_hit"] is False
    assert changed.source["cache"] != base.source["cache"]
    assert changed.props[3] == pytest.approx(float(new_value)) and changed.props[3] != base.props[3]
    assert len(cache_files(cache)) == 2

    # append a row: miss, one more crystal
    extra = read_rows(datasets_dir, "perov_5").iloc[[20]]
    with open(path, "a") as handle:
        extra.to_csv(handle, header=False)
    appended = load_split("perov_5", "val", **kw)
    assert appended.source["cache_hit"] is False and len(appended) == 21
    assert appended.ids[-1] == str(extra["material_id"].iloc[0])
    assert len(cache_files(cache)) == 3
    assert load_split("perov_5", "val", **kw).source["cache_hit"] is True

    # a new preprocessing version invalidates every cache
    monkeypatch.setattr(data_mod, "PREPROCESS_VERSION", data_mod.PREPROCESS_VERSION + 1)
    bumped = load_split("perov_5", "val", **kw)
    assert bumped.source["cache_hit"] is False
    assert f"-v{data_mod.PREPROCESS_VERSION}-" in Path(bumped.source["cache"]).name
    assert len(cache_files(cache)) == 4
    assert load_split("perov_5", "val", **kw).source["cache_hit"] is True

    # use_cache=False always parses and writes nothing
    fresh = load_split("perov_5", "val", use_cache=False, **kw)
    assert fresh.source["cache_hit"] is False and len(cache_files(cache)) == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_cache_is_rebuilt(datasets_dir, tmp_path, damage):
    frame = read_rows(datasets_dir, "perov_5").iloc[:15]
    write_split(tmp_path / "data", "perov_5", frame)
    kw = dict(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)
    good = load_split("perov_5", "val", **kw)
    cache_path = Path(good.source["cache"])
    blob = cache_path.read_bytes()
    if damage == "garbage":
        cache_path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        cache_path.write_bytes(blob[: len(blob) // 2])
    else:
        cache_path.write_bytes(b"")

    rebuilt = load_split("perov_5", "val", **kw)
    assert rebuilt.source["cache_hit"] is False
    assert_same_table(good, rebuilt)
    again = load_split("perov_5", "val", **kw)  # the rebuilt file is a valid cache
    assert again.source["cache_hit"] is True
    assert_same_table(good, again)


def test_default_cache_location_follows_env(datasets_dir, tmp_path, monkeypatch):
    frame = read_rows(datasets_dir, "perov_5").iloc[:5]
    write_split(tmp_path / "data", "perov_5", frame)
    monkeypatch.setenv("DIFFCSP_CACHE", str(tmp_path / "envcache"))
    table = load_split("perov_5", "val", data_dir=tmp_path / "data", workers=1, progress=False)
    assert Path(table.source["cache"]).is_relative_to(tmp_path / "envcache")
    assert Path(table.source["cache"]).is_file()


# -- 4. bad rows and unusable files ------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_rows_frame(datasets_dir) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """Valid Perov-5 rows mixed with one bad row per failure mode, as (frame, id→reason, valid ids)."""
    from pymatgen.io.cif import CifWriter

    frame = read_rows(datasets_dir, "perov_5")
    valid = frame.iloc[[0, 1, 2, 3]].copy()
    sr_row = frame[frame["cif"].str.contains("\n  Sr  ")].iloc[0]
    template = frame.iloc[0]

    def bad(material_id: str, cif) -> pd.Series:
        row = template.copy()
        row["material_id"], row["cif"] = material_id, cif
        return row

    unknown = sr_row["cif"].replace("Sr", "Xx")
    big_structure = pymatgen_niggli(template["cif"]).copy()
    big_structure.make_supercell([3, 3, 3])
    too_big = str(CifWriter(big_structure))
    # a second N site 0.02 (fractional) ≈ 0.09 Å from an existing one
    site_line = next(line for line in template["cif"].splitlines() if line.strip().startswith("N  N4"))
    parts = site_line.split()
    twin = f"  N  N9  1  {parts[3]}  {float(parts[4]) + 0.02:.8f}  {parts[5]}  1"
    overlap = template["cif"].replace(site_line, site_line + "\n" + twin)

    bad_rows = {
        "bad-unparsable": ("garbage that is not a CIF\n_cell_length_a oops\n", "unparsable_cif"),
        "bad-unknown-element": (unknown, "unknown_element"),
        "bad-too-many-atoms": (too_big, "too_many_atoms"),
        "bad-overlap": (overlap, "overlapping_atoms"),
        "bad-empty": ("", "unparsable_cif"),
    }
    rows = [valid.iloc[0], bad("bad-unparsable", bad_rows["bad-unparsable"][0]), valid.iloc[1],
            bad("bad-unknown-element", unknown), bad("bad-too-many-atoms", too_big), valid.iloc[2],
            bad("bad-overlap", overlap), bad("bad-empty", ""), valid.iloc[3]]
    mixed = pd.DataFrame(rows)
    mixed.index = range(len(mixed))
    expected = {k: reason for k, (_, reason) in bad_rows.items()}
    return mixed, expected, [str(x) for x in valid["material_id"]]


def test_bad_rows_are_skipped_and_reported(bad_rows_frame, tmp_path):
    frame, expected, valid_ids = bad_rows_frame
    path = write_split(tmp_path / "data", "perov_5", frame)
    # the empty cif really is an empty field in the file
    assert pd.isna(pd.read_csv(path, index_col=0).set_index("material_id").loc["bad-empty", "cif"])
    kw = dict(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)
    table = load_split("perov_5", "val", **kw)

    assert table.ids == valid_ids
    assert table.source["rows"] == len(frame)
    got = {row["id"]: reason for reason, rows in table.skipped.items() for row in rows}
    assert got == expected
    assert set(table.skipped) <= set(data_mod.SKIP_REASONS)
    messages = {row["id"]: row["message"] for rows in table.skipped.values() for row in rows}
    assert "Xx" in messages["bad-unknown-element"]
    assert "135 atoms" in messages["bad-too-many-atoms"] and "20" in messages["bad-too-many-atoms"]
    assert "empty" in messages["bad-empty"].lower()
    assert data_mod.skip_summary(table) == {"unparsable_cif": 2, "unknown_element": 1, "too_many_atoms": 1, "overlapping_atoms": 1}

    # the skip report sits next to the cache file
    report_path = Path(table.source["cache"]).with_suffix(".skipped.json")
    assert report_path.parent == Path(table.source["cache"]).parent and report_path.is_file()
    report = json.loads(report_path.read_text())
    assert {row["id"]: reason for reason, rows in report.items() for row in rows} == expected

    # a cache hit keeps the skip information
    hit = load_split("perov_5", "val", **kw)
    assert hit.source["cache_hit"] is True and hit.skipped == table.skipped


def test_only_bad_rows_is_an_error(bad_rows_frame, tmp_path):
    frame, expected, _ = bad_rows_frame
    write_split(tmp_path / "data", "perov_5", frame[frame["material_id"].isin(list(expected))])
    with pytest.raises(DataError, match=r"no valid crystal in 5 rows") as info:
        load_split("perov_5", "val", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)
    for reason in set(expected.values()):
        assert reason in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing cached for an unusable file


def test_csv_without_cif_column_is_an_error(datasets_dir, tmp_path):
    frame = read_rows(datasets_dir, "perov_5").iloc[:3].rename(columns={"cif": "structure"})
    write_split(tmp_path / "data", "perov_5", frame)
    with pytest.raises(DataError, match=r"no 'cif' column"):
        load_split("perov_5", "val", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", workers=1, progress=False)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"diffcsp data download perov_5") as info:
        load_split("perov_5", "test", data_dir=tmp_path / "nowhere", cache_dir=tmp_path / "cache", progress=False)
    assert "perov_5/test.csv" in str(info.value)


# -- 5. batching ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mp_table(datasets_dir, tmp_path_factory):
    """Real mp_20_mini val rows (varied atom counts), parsed once per module."""
    return load_split("mp_20_mini", "val", data_dir=datasets_dir, cache_dir=tmp_path_factory.mktemp("mp-cache"),
                      workers=1, progress=False)


def test_collate_table(mp_table):
    assert len(set(mp_table.num_atoms.tolist())) > 3
    indices = [5, 0, 17, 3, 38]
    batch = collate_table(mp_table, indices)
    counts = mp_table.num_atoms[indices]
    n = int(counts.sum())
    assert batch.num_graphs == 5
    assert batch.atom_types.shape == (n,) and batch.atom_types.dtype == torch.long
    assert batch.frac_coords.shape == (n, 3) and batch.frac_coords.dtype == torch.float32
    assert batch.lattice.shape == (5, 3, 3) and batch.lattice.dtype == torch.float32
    assert batch.num_atoms.tolist() == counts.tolist()
    assert batch.index.tolist() == indices
    assert batch.batch.tolist() == [k for k, c in enumerate(counts) for _ in range(c)]
    for k, i in enumerate(indices):
        record = mp_table.record(i)
        mask = batch.batch == k
        assert batch.atom_types[mask].tolist() == record.numbers.tolist()
        np.testing.assert_allclose(batch.frac_coords[mask].numpy(), record.frac_coords, atol=1e-6)
        np.testing.assert_allclose(batch.lattice[k].numpy(), record.lattice, atol=1e-4)


def loader_epoch(loader) -> list[int]:
    return [i for batch in loader for i in batch.index.tolist()]


def test_make_loader_order(mp_table):
    n = len(mp_table)
    first = loader_epoch(make_loader(mp_table, batch_size=16, shuffle=True, seed=7))
    again = loader_epoch(make_loader(mp_table, batch_size=16, shuffle=True, seed=7))
    other = loader_epoch(make_loader(mp_table, batch_size=16, shuffle=True, seed=8))
    assert first == again
    assert other != first
    # the second epoch of a loader is reproducible too (the generator carries the epoch)
    loader_a = make_loader(mp_table, batch_size=16, shuffle=True, seed=7)
    loader_b = make_loader(mp_table, batch_size=16, shuffle=True, seed=7)
    epochs_a = [loader_epoch(loader_a) for _ in range(2)]
    epochs_b = [loader_epoch(loader_b) for _ in range(2)]
    assert epochs_a == epochs_b and epochs_a[0] == first and epochs_a[1] != first
    for order in (first, again, other):
        assert sorted(order) == list(range(n))  # every crystal exactly once per epoch
    assert first != list(range(n))
    # without shuffling: table order, last batch kept
    loader = make_loader(mp_table, batch_size=16, shuffle=False)
    assert loader_epoch(loader) == list(range(n))
    assert len(loader) == -(-n // 16)
    # batch sizes add up and each batch is internally consistent
    for batch in make_loader(mp_table, batch_size=16, shuffle=True, seed=7):
        assert int(batch.num_atoms.sum()) == batch.atom_types.shape[0] == batch.batch.shape[0]


def test_epoch_seeded_sampler():
    sampler = EpochSeededSampler(100, seed=3)
    sampler.set_epoch(0)
    e0 = list(sampler)
    assert sorted(e0) == list(range(100)) and len(sampler) == 100
    assert list(sampler) == e0  # same (seed, epoch) → same order, every time
    other = EpochSeededSampler(100, seed=3)
    other.set_epoch(0)
    assert list(other) == e0  # e.g. after a resume
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert sorted(e1) == list(range(100)) and e1 != e0
    other.set_epoch(1)
    assert list(other) == e1
    different_seed = EpochSeededSampler(100, seed=4)
    assert list(different_seed) != e0


# -- 6. CLI ---------------------------------------------------------------------------------------
def run_cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIFFCSP_CACHE=str(cache), COLUMNS="200", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "diffcsp", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_cli_data_stats(bad_rows_frame, tmp_path):
    frame, expected, valid_ids = bad_rows_frame
    write_split(tmp_path / "data", "perov_5", frame)
    proc = run_cli(["data", "stats", "perov_5", "--data-dir", str(tmp_path / "data"), "--split", "val"], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(rf"crystals loaded\s*│\s*{len(valid_ids)}\s", out), out
    assert re.search(rf"rows in file\s*│\s*{len(frame)}\s", out), out
    assert "too_many_atoms: 1" in out and "bad-overlap" in out
    assert "Traceback" not in proc.stderr
    # the cache went to $DIFFCSP_CACHE, not the user's cache
    assert list((tmp_path / "cache").rglob("*.npz"))


def test_cli_missing_dataset_dir(tmp_path):
    missing = tmp_path / "no-such-dir"
    for extra in (["--split", "val"], []):
        proc = run_cli(["data", "stats", "perov_5", "--data-dir", str(missing), *extra], tmp_path / "cache")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "error:" in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert str(missing) in proc.stderr.replace("\n", "")
