# Two entry points for a fresh machine: `make train` and `make test` (both create .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

.PHONY: install train test lint bench gpu-check
install: $(VENV)/.installed

train: $(VENV)/.installed  ## train the default experiment on the embedded dataset (ARGS=... adds Hydra overrides)
	$(PY) -m maskdet.train $(ARGS)

test: $(VENV)/.installed  ## run the test suite (PYTEST_ARGS=... adds pytest options)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check maskdet tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check: $(VENV)/.installed  ## GPU path checked and the COMP6721 study's protocol timed on a CUDA machine (< 8 min); ARGS=--cpu-rehearsal rehearses on the CPU
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(ARGS)
