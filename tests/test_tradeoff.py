"""bench/tradeoff.py: the match-rate/RMSE plot of several evaluations of one crystal set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, assert_one_error_line


def write_metrics(path: Path, match_rate: float, rmse: float | None, n: int = 100, **extra) -> str:
    """A JSON shaped as `diffcsp evaluate --json` writes one for k = 1."""
    metrics = {"n": n, "k": 1, "match_rate": match_rate, "rmse": rmse, "rule": "official", "task": "csp",
               "dataset": "carbon_24", "split": "test", **extra}
    path.write_text(json.dumps(metrics))
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "tradeoff.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_plots_each_setting_with_its_standard_error(tmp_path: Path):
    fast = write_metrics(tmp_path / "fast.metrics.json", 0.20, 0.37)
    cool = write_metrics(tmp_path / "cool.metrics.json", 0.10, 0.28)
    out = tmp_path / "tradeoff.png"
    res = run(f"{fast}=fast", cool, "--reference", "paper, κ = 1=17.54,0.2759", "--goal", "20,0.30", "--out", str(out))
    assert res.returncode == 0, res.stderr
    # √(p(1−p)/n) by hand: p = 0.2, n = 100 → 4.00 points; p = 0.1 → 3.00 points
    assert "| fast | 20.00 % | 4.00 | 0.3700 |" in res.stdout
    assert "| cool | 10.00 % | 3.00 | 0.2800 |" in res.stdout  # unlabelled: named after its file
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_mixed_crystal_sets_or_rules_and_files_without_a_point(tmp_path: Path):
    a = write_metrics(tmp_path / "a.json", 0.2, 0.3)
    for name, extra in {"n": {"n": 200}, "rule": {"rule": "structure"}, "split": {"split": "val"}}.items():
        b = write_metrics(tmp_path / f"b_{name}.json", 0.2, 0.3, **extra)
        res = run(a, b, "--out", str(tmp_path / "x.png"))
        assert_one_error_line(res, "different crystal sets")
        assert not (tmp_path / "x.png").exists()
    gen = write_metrics(tmp_path / "gen.json", 0.2, 0.3, task="gen")
    assert_one_error_line(run(gen, "--out", str(tmp_path / "x.png")), "not a CSP evaluation")
    none_matched = write_metrics(tmp_path / "none.json", 0.0, None)
    assert_one_error_line(run(none_matched, "--out", str(tmp_path / "x.png")), "no RMSE")
