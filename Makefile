# fedsynth: two commands on a fresh machine.
#   make demo   create .venv if needed, install, run the main job on built-in phantom data
#   make test   create .venv if needed, install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is pinned here, not in pyproject: on this machine pip takes a local CPU wheel,
# elsewhere PyPI's Linux wheel (with CUDA). Set TORCH_SPEC to choose another build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: demo test test-slow bench lint format clean install browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedsynth demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/pytest -q

# Headless Chromium for tests/test_report.py's browser tests (Debian package `chromium`).
# Not a prerequisite of `test`: it downloads ~100 MB and needs root (or password-less sudo).
# Without root it only says so and the browser tests skip; as root (CI) a failed install fails.
CHROMIUM ?= /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Retries=3
browser:
	@if test -x $(CHROMIUM); then echo "chromium: $$($(CHROMIUM) --version 2>/dev/null)"; \
	elif test "$$(id -u)" = 0; then $(APT) update && $(APT) install -y --no-install-recommends chromium; \
	elif sudo -n true 2>/dev/null; then sudo -n $(APT) update && sudo -n $(APT) install -y --no-install-recommends chromium; \
	else echo "chromium not installed (needs root): the browser tests will be skipped"; fi

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check fedsynth tests benchmarks simulations
	$(VENV)/bin/ruff format --check fedsynth tests benchmarks simulations

format: $(STAMP)
	$(VENV)/bin/ruff format fedsynth tests benchmarks simulations
	$(VENV)/bin/ruff check --fix fedsynth tests benchmarks simulations

clean:
	rm -rf $(VENV) runs .pytest_cache
