# Two entry points for a fresh machine: `make train` and `make test` (both create .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python

# `make train` installs what training needs, quietly; `make test` (and lint, bench) the dev extra as well.
$(VENV)/.runtime: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.runtime

.PHONY: install train test test-extras lint bench gpu-check
install: $(VENV)/.installed

train: $(VENV)/.runtime  ## train the default experiment on the embedded dataset (ARGS=... adds Hydra overrides)
	$(PY) -m maskdet.train $(ARGS)

test: $(VENV)/.installed  ## run the test suite (PYTEST_ARGS=... adds pytest options)
	$(PY) -m pytest $(PYTEST_ARGS)

test-extras: $(VENV)/.installed  ## the built wheel in fresh venvs, with no extra and with each extra alone (a few minutes)
	$(PY) -m pytest -m extras tests/test_extras.py --dist load $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check maskdet tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check: $(VENV)/.installed  ## GPU path checked and the COMP6721 study's protocol timed on a CUDA machine (< 8 min); ARGS=--cpu-rehearsal rehearses on the CPU
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(ARGS)
