"""The journal of long resumable jobs: records survive a kill mid-append, and the file is plain gzip."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from diffcsp.fileio import append_journal, read_journal

RECORDS = [{"index": i, "name": f"crystal {i}", "energy": -8.1 - i / 7, "samples": list(range(i))} for i in range(5)]


def test_round_trip_and_plain_gzip(tmp_path: Path):
    path = tmp_path / "work.jsonl.gz"
    assert read_journal(path) == []  # no journal yet: nothing done
    for rec in RECORDS:
        append_journal(path, rec)
    assert read_journal(path) == RECORDS
    # concatenated members are one valid gzip file for the standard library (and zcat)
    with gzip.open(path, "rt") as handle:
        assert [json.loads(line) for line in handle] == RECORDS


def test_legacy_single_member_file_reads(tmp_path: Path):
    """A JSON-lines file gzipped as a whole (how older results were converted) is one member of many lines."""
    path = tmp_path / "work.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS[:3]).encode()))
    append_journal(path, RECORDS[3])
    assert read_journal(path) == RECORDS[:4]


def test_torn_tail_is_dropped_then_cut_before_appending(tmp_path: Path):
    path = tmp_path / "work.jsonl.gz"
    for rec in RECORDS[:3]:
        append_journal(path, rec)
    whole = path.stat().st_size
    append_journal(path, RECORDS[3])
    # every way a kill can cut the fourth member short: the first three records stay
    fourth = path.read_bytes()[whole:]
    for cut in (1, 10, len(fourth) // 2, len(fourth) - 1):
        path.write_bytes(path.read_bytes()[:whole] + fourth[:cut])
        assert read_journal(path) == RECORDS[:3]
        assert path.stat().st_size == whole + cut  # reading alone changes nothing
    # a resumed writer repairs first, so what it appends is read back after the intact records
    assert read_journal(path, repair=True) == RECORDS[:3]
    assert path.stat().st_size == whole
    append_journal(path, RECORDS[4])
    assert read_journal(path) == RECORDS[:3] + [RECORDS[4]]


def test_garbage_tail_is_dropped(tmp_path: Path):
    path = tmp_path / "work.jsonl.gz"
    append_journal(path, RECORDS[0])
    with path.open("ab") as handle:
        handle.write(b"not gzip at all")
    assert read_journal(path, repair=True) == RECORDS[:1]
    append_journal(path, RECORDS[1])
    assert read_journal(path) == RECORDS[:2]


def test_killed_writer_loses_only_the_record_in_flight(tmp_path: Path):
    """A real process appends records until SIGKILL; every record it finished is read back, in order."""
    path = tmp_path / "work.jsonl.gz"
    script = (
        "import sys\n"
        "from diffcsp.fileio import append_journal\n"
        "i = 0\n"
        "while True:\n"
        "    append_journal(sys.argv[1], {'index': i, 'pad': 'x' * 5000})\n"
        "    print(i, flush=True)\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = [int(proc.stdout.readline()) for _ in range(20)]
    proc.kill()
    proc.wait()
    records = read_journal(path, repair=True)
    assert [r["index"] for r in records] == list(range(len(records)))
    assert len(records) >= acknowledged[-1] + 1  # everything acknowledged before the kill is there
    append_journal(path, {"index": len(records)})
    assert [r["index"] for r in read_journal(path)] == list(range(len(records) + 1))


def test_save_png_writes_a_whole_png_or_nothing(tmp_path: Path):
    """A figure is written as a complete PNG and closed; a figure that fails to render leaves
    neither the target nor a temporary file behind (a half-written plot would look finished)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pytest

    from diffcsp.fileio import save_png

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_png(fig, tmp_path / "plots" / "line.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)
    assert matplotlib.image.imread(out).shape[:2] == (528, 704)  # 6.4 × 4.8 in at 110 dpi, tight layout keeps the size

    bad, ax = plt.subplots()

    def torn(handle, **kwargs):  # a renderer that dies after writing part of the file
        handle.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("disk full")

    bad.savefig = torn
    with pytest.raises(OSError, match="disk full"):
        save_png(bad, tmp_path / "bad.png")
    plt.close(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]  # neither bad.png nor a temporary file
