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

# Optional: headless Chromium for tests/test_report.py's browser test (skipped without it).
# Not a prerequisite of `test`: it downloads ~100 MB and needs root and apt. Best effort: the
# leading '-' and the fallback echo mean a machine without apt, root or network still builds.
browser:
	-@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && apt-get install -y -q chromium) || echo "chromium not installed: the browser test will be skipped"

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
