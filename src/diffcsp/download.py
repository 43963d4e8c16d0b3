"""Fetch the official benchmark CSVs and verify them by git blob id.

The raw files are served by GitHub (``<base_url>/<repo>/main/data/<name>/<split>.csv``). A file is
only ever moved into place after its git blob id (what ``git hash-object`` prints) matches the one
recorded in :mod:`diffcsp.registry`, so a truncated transfer, a proxy error page or an upstream
change can never be mistaken for benchmark data. Files already present with the right id are
skipped without touching the network, which makes the command safe to re-run.

Only the standard library is used for HTTP (``urllib``), so downloading needs no extra
dependency; tqdm (already required) draws the progress bar.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from tqdm import tqdm

from .errors import DownloadError
from .fileio import atomic_write
from .registry import SPLITS, DatasetInfo, default_data_dir, get_dataset

__all__ = [
    "DEFAULT_BASE_URL",
    "DownloadError",
    "DownloadResult",
    "dataset_url",
    "download_dataset",
    "file_blob_id",
    "git_blob_id",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"

#: Read/hash block size: large enough to be fast, small enough to keep memory flat for big files.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadResult:
    """Outcome for one split: where the verified file is and whether it was fetched now."""

    split: str
    path: Path
    status: Literal["downloaded", "skipped"]
    blob_id: str


def git_blob_id(data: bytes) -> str:
    """Git blob id of ``data`` (``git hash-object``), the checksum the registry records."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _blob_id_of_handle(handle: IO[bytes], size: int) -> str:
    """Blob id of ``size`` bytes read from ``handle`` in chunks (the header needs the size first)."""
    digest = hashlib.sha1(b"blob %d\0" % size)
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_blob_id(path: str | Path) -> str:
    """Git blob id of a file, streamed so tens of MB never sit in memory at once."""
    path = Path(path)
    with path.open("rb") as handle:
        return _blob_id_of_handle(handle, os.fstat(handle.fileno()).st_size)


def dataset_url(info: DatasetInfo, split: str, base_url: str | None = None) -> str:
    """URL of one raw split file, mirroring the GitHub layout so a local mirror can stand in."""
    if info.repo is None:
        raise DownloadError(f"dataset {info.name!r} has no public download source (local-only data)")
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    return f"{base}/{info.repo}/main/data/{info.name}/{split}.csv"


def _describe(exc: BaseException) -> str:
    """One-line reason for a network failure (urllib nests the useful part in ``reason``)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, BaseException):
            return _describe(exc.reason)
        return f"cannot reach server ({exc.reason})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (server not running or wrong address)"
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias since Python 3.10
        return "timed out waiting for the server"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed early after {len(exc.partial)} bytes"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}".replace("\n", " ")


def _fetch_verified(
    url: str, target: Path, expected: str, *, label: str, progress: bool, timeout: float
) -> str:
    """Stream ``url`` into a temp file next to ``target`` and rename it there only if it verifies.

    atomic_write removes the temp file on any exception (network error, mismatch, Ctrl-C), so a
    failed attempt leaves ``target`` exactly as it was before.
    """
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "diffcsp-downloader"})
        with (
            urllib.request.urlopen(request, timeout=timeout) as response,
            atomic_write(target, "w+b") as handle,
        ):
            length_header = response.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            size = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise DownloadError(
                    f"incomplete download of {label} from {url}: got {size} of {total} bytes"
                )
            handle.flush()
            handle.seek(0)
            actual = _blob_id_of_handle(handle, size)
            if actual != expected:
                raise DownloadError(
                    f"checksum mismatch for {label} from {url}: expected git blob id "
                    f"{expected}, got {actual}; file discarded"
                )
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError are OSErrors; ValueError covers a malformed URL or header.
        raise DownloadError(f"failed to download {label} from {url}: {_describe(exc)}") from exc
    return actual


def download_dataset(
    name: str,
    dest: Path | str | None = None,
    base_url: str | None = None,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
    timeout: float = 30,
    blob_ids: Mapping[str, str] | None = None,
) -> list[DownloadResult]:
    """Fetch and verify ``<dest>/<name>/<split>.csv`` for each split; stop at the first failure.

    A file already present with the registry's blob id is skipped without any network access.
    A present file with a different id is replaced only by a download that verifies; if the
    download fails, the old file is left untouched (it may be the user's own data).
    Raises DownloadError, with a one-line message, for every failure.

    ``blob_ids`` (split → id) replaces the registry's ids, for a mirror serving other files whose
    ids the caller has checked itself (a newer upstream release, the test suite's small fixture).
    """
    try:
        info = get_dataset(name)
    except ValueError as exc:
        raise DownloadError(str(exc)) from None
    if info.repo is None:
        raise DownloadError(
            f"dataset {name!r} has no public download source (it exists only on the project's machines)"
        )
    expected_ids = dict(info.blob_ids if blob_ids is None else blob_ids)
    if isinstance(splits, str):  # a lone "val" would otherwise iterate as "v", "a", "l"
        splits = (splits,)
    for split in splits:
        if split not in SPLITS:
            raise DownloadError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in expected_ids:
            raise DownloadError(f"no expected blob id for {name}/{split}.csv")

    root = Path(dest) if dest is not None else default_data_dir()
    results: list[DownloadResult] = []
    for split in splits:
        expected = expected_ids[split]
        target = root / name / f"{split}.csv"
        label = f"{name}/{split}.csv"
        if target.is_file():
            try:
                present = file_blob_id(target)
            except OSError as exc:
                raise DownloadError(f"cannot read existing {target}: {_describe(exc)}") from exc
            if present == expected:
                results.append(DownloadResult(split, target, "skipped", expected))
                continue
            log.warning("%s exists but its blob id %s is not %s; re-downloading", target, present, expected)
        url = dataset_url(info, split, base_url)
        actual = _fetch_verified(
            url, target, expected, label=label, progress=progress, timeout=timeout
        )
        results.append(DownloadResult(split, target, "downloaded", actual))
    return results
