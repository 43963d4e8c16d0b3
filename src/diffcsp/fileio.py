"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Every file the package writes (caches, checkpoints, downloads, predictions, reports) goes
through :func:`atomic_write`, so a killed process leaves at most a stray temporary file in the
target's directory, which is removed on the way out when Python gets the chance.

Long resumable jobs that add one result at a time use a *journal* instead
(:func:`append_journal`, :func:`read_journal`): a gzip file of one member per record. Rewriting a
whole file per record would cost O(n²); an append can be torn by a kill, so the reader keeps the
intact members and, when a writer resumes, cuts the torn tail off.
Concatenated gzip members are a valid gzip file, so ``zcat`` and :mod:`gzip` read it as it is.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; results, caches and datasets get the usual permissions.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """Current process umask (read by setting and restoring it, the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay ``fig`` out, write it as a PNG atomically and close it: a figure left open keeps its
    memory for the rest of a long benchmark, and a torn PNG would look like a finished plot."""
    import matplotlib.pyplot as plt  # only callers that plot pay for the import

    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def read_journal(path: str | Path, repair: bool = False) -> list[Any]:
    """The records of a journal (none if it does not exist).

    A member cut short (the writer was killed mid-append) or damaged ends the journal: the
    records before it are returned. With ``repair`` the file is also truncated to them, which a
    writer must do before it appends again (else the new members would follow the torn one).
    Members are decoded one at a time in 64 KiB chunks, so reading stays linear in the size.
    """
    path = Path(path)
    data = memoryview(path.read_bytes()) if path.exists() else memoryview(b"")
    records: list[Any] = []
    intact = 0  # bytes of whole, decodable members
    while intact < len(data):
        member, pos = zlib.decompressobj(wbits=31), intact  # wbits=31: one gzip member
        chunks = []
        try:
            while not member.eof and pos < len(data):
                chunk = data[pos:pos + 65536]
                chunks.append(member.decompress(chunk))
                pos += len(chunk)
            if not member.eof:  # cut short
                break
            records.extend(json.loads(line) for line in b"".join(chunks).decode().splitlines() if line)
        except (zlib.error, UnicodeDecodeError, json.JSONDecodeError):
            break
        intact = pos - len(member.unused_data)
    if repair and intact < len(data):
        os.truncate(path, intact)
    return records


def append_journal(path: str | Path, record: Any) -> None:
    """Append one record as its own gzip member, flushed and fsynced before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(gzip.compress((json.dumps(record) + "\n").encode(), mtime=0))
        handle.flush()
        os.fsync(handle.fileno())
