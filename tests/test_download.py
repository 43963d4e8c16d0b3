"""The downloader against a real HTTP server on 127.0.0.1 serving the real benchmark files.

No mocks: a ThreadingHTTPServer serves a folder laid out like raw.githubusercontent.com
(``<repo>/main/data/<name>/<split>.csv``), filled with the official Perov-5 files kept on these
machines, so checksums, streaming, HTTP errors and refused connections are all exercised for real.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffcsp.download import (
    DEFAULT_BASE_URL,
    DownloadError,
    download_dataset,
    file_blob_id,
    git_blob_id,
)
from diffcsp.registry import DATASETS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFCSP_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
PEROV = DATASETS["perov_5"]
SERVED_SPLITS = ("val", "test")  # the official train split is not on these machines


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that keeps request logs out of the test output."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@dataclass
class Mirror:
    """A running local stand-in for raw.githubusercontent.com."""

    good_url: str  # serves the official files
    bad_url: str  # serves val.csv with one byte changed
    source: Path  # folder holding the official files


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


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Serve good and corrupted copies of Perov-5 val/test over real HTTP for the whole module."""
    source = SHARED / "perov_5"
    if not all((source / f"{s}.csv").is_file() for s in SERVED_SPLITS):
        pytest.skip(f"official Perov-5 val/test files not found in {source} (set DIFFCSP_DATA)")
    root = tmp_path_factory.mktemp("mirror")
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
        yield Mirror(good_url=f"{base}/good", bad_url=f"{base}/bad/", source=source)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_git_blob_id_matches_git() -> None:
    """Known `git hash-object` values, so the checksum scheme itself is pinned."""
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert DEFAULT_BASE_URL == "https://raw.githubusercontent.com"


def test_download_then_skip_without_network(mirror: Mirror, tmp_path: Path) -> None:
    """Downloads are byte-identical and verified; a re-run never touches the network."""
    results = download_dataset(
        "perov_5", dest=tmp_path, base_url=mirror.good_url, splits=SERVED_SPLITS, progress=False, timeout=10
    )
    assert [(r.split, r.status) for r in results] == [("val", "downloaded"), ("test", "downloaded")]
    for r in results:
        assert r.path == tmp_path / "perov_5" / f"{r.split}.csv"
        assert r.path.read_bytes() == (mirror.source / f"{r.split}.csv").read_bytes()
        assert r.blob_id == PEROV.blob_ids[r.split] == file_blob_id(r.path)
    assert _files_under(tmp_path) == ["perov_5/test.csv", "perov_5/val.csv"]

    # A refused port as base URL: any network access would raise, so "skipped" proves none happened.
    dead = f"http://127.0.0.1:{_closed_port()}"
    again = download_dataset("perov_5", dest=tmp_path, base_url=dead, splits=SERVED_SPLITS, progress=False)
    assert [(r.split, r.status) for r in again] == [("val", "skipped"), ("test", "skipped")]
    assert [r.blob_id for r in again] == [PEROV.blob_ids["val"], PEROV.blob_ids["test"]]


def test_corrupted_file_is_rejected_and_leaves_nothing(mirror: Mirror, tmp_path: Path) -> None:
    """A one-bit change on the server is caught and no file (or temp file) is left behind."""
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.bad_url, splits=("val",), progress=False)
    message = str(info.value)
    assert "perov_5/val.csv" in message and PEROV.blob_ids["val"] in message and "\n" not in message
    assert _files_under(tmp_path) == []


def test_bad_download_keeps_existing_file_good_one_replaces_it(mirror: Mirror, tmp_path: Path) -> None:
    """A stale local file is never destroyed by a failed download, only by a verified one."""
    target = tmp_path / "perov_5" / "val.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"my own edits\n")
    with pytest.raises(DownloadError, match="checksum"):
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.bad_url, splits=["val"], progress=False)
    assert target.read_bytes() == b"my own edits\n"
    assert _files_under(tmp_path) == ["perov_5/val.csv"]

    (result,) = download_dataset("perov_5", dest=tmp_path, base_url=mirror.good_url, splits=["val"], progress=False)
    assert result.status == "downloaded" and file_blob_id(target) == PEROV.blob_ids["val"]
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
        download_dataset("perov_5", dest=tmp_path, base_url=mirror.good_url, splits=("train",), progress=False)
    assert _files_under(tmp_path) == []


def test_stops_at_first_error(mirror: Mirror, tmp_path: Path) -> None:
    """Splits are processed in order; the failure stops the run (later splits not fetched)."""
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset(
            "perov_5", dest=tmp_path, base_url=mirror.good_url, splits=("val", "train", "test"), progress=False
        )
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


def test_cli_download(mirror: Mirror, tmp_path: Path) -> None:
    """The CLI downloads and verifies; on a dead server it exits non-zero with a message, no traceback."""
    ok = _run_cli("data", "download", "perov_5", "--dest", str(tmp_path), "--base-url", mirror.good_url, "--split", "val")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert file_blob_id(tmp_path / "perov_5" / "val.csv") == PEROV.blob_ids["val"]
    assert _files_under(tmp_path) == ["perov_5/val.csv"]

    dest = tmp_path / "other"
    dead = f"http://127.0.0.1:{_closed_port()}"
    bad = _run_cli("data", "download", "perov_5", "--dest", str(dest), "--base-url", dead, "--split", "val")
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0, output
    assert "Traceback" not in output, output
    assert "refused" in output.lower() and "perov_5/val.csv" in output, output
    assert _files_under(dest) == []
