"""The downloader against a real HTTP server on 127.0.0.1 serving real benchmark files.

No mocks: a ThreadingHTTPServer serves a folder laid out like raw.githubusercontent.com
(``<repo>/main/data/<name>/<split>.csv``), so checksums, streaming, HTTP errors and refused
connections are all exercised for real. The mechanics are tested on the bundled fixture (real
Perov-5 rows; expected ids computed by ``git hash-object``, not by the code under test); the
registry's published ids are checked against the complete official files, which only some
machines have (``conftest.require_full_split``: skipped locally, a failure in CI).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURE_DATA, require_full_split

from diffcsp.download import (
    DEFAULT_BASE_URL,
    DownloadError,
    download_dataset,
    file_blob_id,
    git_blob_id,
)
from diffcsp.registry import DATASETS

REPO_ROOT = Path(__file__).resolve().parents[1]
PEROV = DATASETS["perov_5"]
SERVED_SPLITS = ("val", "test")  # no train.csv is served: requests for it get a real 404


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that keeps request logs out of the test output."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@dataclass
class Mirror:
    """A running local stand-in for raw.githubusercontent.com."""

    good_url: str  # serves the source files unchanged
    bad_url: str  # serves val.csv with one bit changed
    source: Path  # folder holding the served files
    ids: dict[str, str] = field(default_factory=dict)  # git blob id of each served split (git hash-object)


def _closed_port() -> int:
    """A port that was just bound and released, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden temp files included), relative, sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def git_hash_object(path: Path) -> str:
    """The reference checksum, computed by git itself."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to compute reference blob ids")
    return subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


@contextmanager
def serve(source: Path, root: Path) -> Iterator[Mirror]:
    """Serve good and corrupted copies of ``source/{val,test}.csv`` (Perov-5 layout) over real HTTP."""
    for flavour in ("good", "bad"):
        folder = root / flavour / PEROV.repo / "main" / "data" / "perov_5"  # type: ignore[operator]
        folder.mkdir(parents=True)
        for split in SERVED_SPLITS:
            (folder / f"{split}.csv").symlink_to(source / f"{split}.csv")
    bad = root / "bad" / PEROV.repo / "main" / "data" / "perov_5" / "val.csv"  # type: ignore[operator]
    data = bytearray((source / "val.csv").read_bytes())
    data[len(data) // 2] ^= 0x01  # same length, one bit off: only a checksum can notice
    bad.unlink()
    bad.write_bytes(bytes(data))

    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Mirror(good_url=f"{base}/good", bad_url=f"{base}/bad/", source=source,
                     ids={split: git_hash_object(source / f"{split}.csv") for split in SERVED_SPLITS})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The bundled fixture's Perov-5 val/test (real rows, always present), served for the module."""
    with serve(FIXTURE_DATA / "perov_5", tmp_path_factory.mktemp("mirror")) as running:
        yield running


@pytest.fixture(scope="module")
def official_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The complete official Perov-5 val/test files, served for the module."""
    source = require_full_split("perov_5", "val").parent
    require_full_split("perov_5", "test")
    with serve(source, tmp_path_factory.mktemp("official-mirror")) as running:
        yield running


def test_git_blob_id_matches_git() -> None:
    """Known `git hash-object` values, so the checksum scheme itself is pinned."""
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert DEFAULT_BASE_URL == "https://raw.githubusercontent.com"


def check_download_then_skip(mirror: Mirror, dest: Path, blob_ids: dict[str, str] | None) -> None:
    """Downloads are byte-identical and verified; a re-run never touches the network."""
    results = download_dataset("perov_5", dest=dest, base_url=mirror.good_url, splits=SERVED_SPLITS, progress=False,
                               timeout=10, blob_ids=blob_ids)
    assert [(r.split, r.status) for r in results] == [("val", "downloaded"), ("test", "downloaded")]
    for r in results:
        assert r.path == dest / "perov_5" / f"{r.split}.csv"
        assert r.path.read_bytes() == (mirror.source / f"{r.split}.csv").read_bytes()
        assert r.blob_id == mirror.ids[r.split] == file_blob_id(r.path)
    assert _files_under(dest) == ["perov_5/test.csv", "perov_5/val.csv"]

    # A refused port as base URL: any network access would raise, so "skipped" proves none happened.
    dead = f"http://127.0.0.1:{_closed_port()}"
    again = download_dataset("perov_5", dest=dest, base_url=dead, splits=SERVED_SPLITS, progress=False,
                             blob_ids=blob_ids)
    assert [(r.split, r.status) for r in again] == [("val", "skipped"), ("test", "skipped")]
    assert [r.blob_id for r in again] == [mirror.ids["val"], mirror.ids["test"]]


def test_download_then_skip_without_network(mirror: Mirror, tmp_path: Path) -> None:
    check_download_then_skip(mirror, tmp_path, blob_ids=mirror.ids)
    # the registry's ids are those of the complete files: the fixture does not pass them
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("perov_5", dest=tmp_path / "other", base_url=mirror.good_url, splits=("val",), progress=False)


def test_official_files_match_the_registry(official_mirror: Mirror, tmp_path: Path) -> None:
    """The published git blob ids (registry) are those of the complete official files."""
    assert official_mirror.ids == {split: PEROV.blob_ids[split] for split in SERVED_SPLITS}
    check_download_then_skip(official_mirror, tmp_path, blob_ids=None)


def test_corrupted_file_is_rejected_and_leaves_nothing(mirror: Mirror, tmp_path: Path) -> None:
    """A one-bit change on the server is caught and no file (or temp file) is left behind."""
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.bad_url, splits=("val",), progress=False,
                         blob_ids=mirror.ids)
    message = str(info.value)
    assert "perov_5/val.csv" in message and mirror.ids["val"] in message and "\n" not in message
    assert _files_under(tmp_path) == []


def test_bad_download_keeps_existing_file_good_one_replaces_it(mirror: Mirror, tmp_path: Path) -> None:
    """A stale local file is never destroyed by a failed download, only by a verified one."""
    target = tmp_path / "perov_5" / "val.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"my own edits\n")
    with pytest.raises(DownloadError, match="checksum"):
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.bad_url, splits=["val"], progress=False,
                         blob_ids=mirror.ids)
    assert target.read_bytes() == b"my own edits\n"
    assert _files_under(tmp_path) == ["perov_5/val.csv"]

    (result,) = download_dataset("perov_5", dest=tmp_path, base_url=mirror.good_url, splits=["val"], progress=False,
                                 blob_ids=mirror.ids)
    assert result.status == "downloaded" and file_blob_id(target) == mirror.ids["val"]
    assert _files_under(tmp_path) == ["perov_5/val.csv"]


def test_unreachable_server(tmp_path: Path) -> None:
    """A refused connection becomes a one-line DownloadError and creates nothing."""
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DownloadError, match="refused") as info:
        download_dataset("perov_5", dest=tmp_path, base_url=url, splits=("val",), progress=False, timeout=5)
    assert url in str(info.value) and "\n" not in str(info.value)
    assert _files_under(tmp_path) == []


def test_http_404(mirror: Mirror, tmp_path: Path) -> None:
    """The test server has no train.csv: the 404 is reported, not saved as data."""
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.good_url, splits=("train",), progress=False,
                         blob_ids={**mirror.ids, "train": PEROV.blob_ids["train"]})
    assert _files_under(tmp_path) == []


def test_stops_at_first_error(mirror: Mirror, tmp_path: Path) -> None:
    """Splits are processed in order; the failure stops the run (later splits not fetched)."""
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.good_url, splits=("val", "train", "test"),
                         progress=False, blob_ids={**mirror.ids, "train": PEROV.blob_ids["train"]})
    assert _files_under(tmp_path) == ["perov_5/val.csv"]


@pytest.mark.parametrize(
    ("name", "splits", "pattern"),
    [
        ("mp_20_mini", ("val",), "no public download source"),
        ("nope", ("val",), "unknown dataset"),
        ("perov_5", ("dev",), "unknown split"),
    ],
)
def test_invalid_requests(tmp_path: Path, name: str, splits: tuple[str, ...], pattern: str) -> None:
    """Requests that cannot be served fail up front with a DownloadError, before any I/O."""
    with pytest.raises(DownloadError, match=pattern):
        download_dataset(name, dest=tmp_path, base_url="http://127.0.0.1:9", splits=splits, progress=False)
    assert _files_under(tmp_path) == []


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m diffcsp`` as a user would; src/ is put on the path for uninstalled checkouts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "diffcsp", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_download(official_mirror: Mirror, tmp_path: Path) -> None:
    """The CLI downloads and verifies the official file against the registry's id."""
    ok = _run_cli("data", "download", "perov_5", "--dest", str(tmp_path), "--base-url", official_mirror.good_url,
                  "--split", "val")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert file_blob_id(tmp_path / "perov_5" / "val.csv") == PEROV.blob_ids["val"]
    assert _files_under(tmp_path) == ["perov_5/val.csv"]


def test_cli_download_errors(mirror: Mirror, tmp_path: Path) -> None:
    """A file that fails verification, or a dead server: exit 1, one ``error:`` line, no traceback, no file."""
    bad = _run_cli("data", "download", "perov_5", "--dest", str(tmp_path), "--base-url", mirror.good_url,
                   "--split", "val")  # the fixture is not the official file
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if "error" in line.lower()]  # (above it: the progress bar)
    assert len(errors) == 1 and errors[0].startswith("error:") and "checksum mismatch" in errors[0], bad.stderr
    assert _files_under(tmp_path) == []

    dest = tmp_path / "other"
    dead = f"http://127.0.0.1:{_closed_port()}"
    bad = _run_cli("data", "download", "perov_5", "--dest", str(dest), "--base-url", dead, "--split", "val")
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0, output
    assert "Traceback" not in output, output
    assert "refused" in output.lower() and "perov_5/val.csv" in output, output
    assert _files_under(dest) == []


def test_missing_official_files_skip_locally_and_fail_in_ci(tmp_path: Path, monkeypatch) -> None:
    """The rule behind ``official_mirror``: no silent skip when CI is set, and the message says how to get the data."""
    import conftest

    monkeypatch.setattr(conftest, "FULL_DATA", tmp_path)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="diffcsp data download perov_5"):
        require_full_split("perov_5", "val")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="diffcsp data download perov_5"):
        require_full_split("perov_5", "val")
    (tmp_path / "perov_5").mkdir()
    (tmp_path / "perov_5" / "val.csv").write_text("present\n")
    assert require_full_split("perov_5", "val") == tmp_path / "perov_5" / "val.csv"
