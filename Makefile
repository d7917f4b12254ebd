# Two entry points for a fresh machine: `make train` and `make test` (both create .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python

# `make train` installs what training needs, quietly; `make test` (and lint, bench) the dev extra as well.
# The installer is uv (itself pip-installed into the venv): it unpacks PyTorch's CUDA wheels (4 GB) several
# times faster than pip (a fresh .venv with the dev extra: about 50 s against 2 min 17 s on the 2-core CI
# machine). --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (CI), nothing else would
# write .pyc files, and every process would compile torch again (16 s instead of 6 s to import Lightning).
# uv reads PyPI (or UV_INDEX_URL, UV_FIND_LINKS), not pip's configuration; of that, the constraint files are
# passed on: PIP_CONSTRAINT where set, else the constraint that pip's configuration files name (on the CI
# machine it caps torch and torchvision at the releases on its disk). Where uv cannot be installed, pip
# installs as before; offline or behind a private index, install with pip (README, "Install").
PIP_CONSTRAINT_FILES := $(if $(PIP_CONSTRAINT),$(PIP_CONSTRAINT),$(shell python3 -m pip config list 2>/dev/null | sed -n "s/^\(global\|install\)\.constraint='\(.*\)'$$/\2/p" | head -n 1))
define install_into_venv
	python3 -m venv $(VENV)
	if $(VENV)/bin/pip install --quiet uv; then \
	  $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(foreach file,$(PIP_CONSTRAINT_FILES),--constraint '$(file)') -e '$(1)'; \
	else \
	  $(VENV)/bin/pip install --quiet --upgrade pip && $(VENV)/bin/pip install --quiet -e '$(1)'; \
	fi
endef

$(VENV)/.runtime: pyproject.toml
	$(call install_into_venv,.)
	touch $@

$(VENV)/.installed: pyproject.toml
	$(call install_into_venv,.[dev])
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
