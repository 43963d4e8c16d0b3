# Two commands for a new user: `make demo` and `make test`. Both create .venv if missing.
# torch is pinned to the CPU wheel (2.13.0) before the package is installed, so pip never
# pulls a multi-GB CUDA build; GPU users install their own torch and then `pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: demo test install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test,relax]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/diffcsp predict SrTiO3 -n 5 --out demo_output
	@echo "CIF files (as sampled and symmetrised), PNG pictures and summary.csv are in demo_output/"

# -rs lists every skipped test with its reason (e.g. how to get the complete official data files).
test: install-test
	$(PY) -m pytest -q -rs

bench: install-test
	$(PY) bench/cspnet_speed.py

clean:
	rm -rf demo_output .pytest_cache
