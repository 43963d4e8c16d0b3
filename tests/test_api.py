"""The documented package API (README): ``diffcsp.predict`` and ``diffcsp.load_model`` are the
functions on every call, whatever was imported before. Each case runs in a fresh interpreter so
the import order is real (pytest has long since imported every submodule in this process)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CALL_TWICE = """
    import diffcsp
    from pymatgen.core import Structure
    for _ in range(2):
        out = diffcsp.predict("SrTiO3", n=1, steps=5)
        assert len(out) == 1 and isinstance(out[0], Structure), out
        assert out[0].composition.reduced_formula == "SrTiO3", out[0].composition
    for _ in range(2):
        model = diffcsp.load_model()
    assert len(diffcsp.predict(["Ba", "Ti", "O", "O", "O"], n=2, model=model, steps=5)) == 2
    print("ok")
"""

BEFORE = {
    # the README's order: nothing imported before; `import diffcsp` alone must stay cheap
    "fresh": """
        import sys
        import diffcsp
        assert "torch" not in sys.modules and "pymatgen.core" not in sys.modules, "import diffcsp loaded heavy modules"
        assert sorted(diffcsp.__all__) == ["__version__", "load_model", "predict"]
        try:
            diffcsp.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("no AttributeError")
    """,
    # what the CLI and scripts do: the submodule is imported by name first
    "submodule_first": "import diffcsp.predict\nimport diffcsp.checkpoint\n",
    # names imported from the submodule, then the API names under aliases
    "from_submodule_and_aliases": """
        from diffcsp.predict import composition_to_numbers, predict_split
        from diffcsp.checkpoint import export_model
        assert composition_to_numbers("SrTiO3") == [8, 8, 8, 22, 38]
        from diffcsp import predict as p1, load_model as l1
        import diffcsp.predict as p2
        assert callable(p1) and p1 is p2 and p1.__name__ == "predict", (p1, p2)
        assert l1.__name__ == "load_model"
    """,
}


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("before", list(BEFORE))
def test_api_functions_survive_repeated_calls_and_imports(before: str):
    code = textwrap.dedent(BEFORE[before]) + textwrap.dedent(CALL_TWICE) + textwrap.dedent("""
        import sys
        import diffcsp.predict
        assert diffcsp.predict is sys.modules["diffcsp.predict"].predict
        assert diffcsp.load_model is sys.modules["diffcsp.checkpoint"].load_model
    """)
    res = run_python(code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok")


def test_version_option():
    exe = Path(sys.executable).with_name("diffcsp")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "diffcsp"]
    res = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import diffcsp

    # The installed distribution's metadata (pyproject.toml) is the independent reference.
    assert res.stdout.strip() == f"diffcsp {importlib.metadata.version('diffcsp')}" == f"diffcsp {diffcsp.__version__}"
