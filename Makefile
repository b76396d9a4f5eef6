# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench lint typecheck pytest screenshots clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "reelhook needs $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

## run: set up, then start reelhook on its embedded default (SQLite in ./data, simulated providers)
run: $(STAMP)
	$(BIN)/reelhook serve

## test: set up, then lint, type-check and run the whole test suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests examples bench
	$(BIN)/ruff format --check service tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

## pytest: the suite on SQLite, then again on PostgreSQL (the conformance run: both must pass)
pytest: $(STAMP)
	$(BIN)/pytest
	$(BIN)/pytest --store postgresql

## bench: run the performance suite (about 5 minutes; loopback only) and write bench/results/latest.md
bench: $(STAMP)
	$(BIN)/python -m bench

## screenshots: regenerate docs/screenshots/ (the console's main pages) in headless Chromium
screenshots: $(STAMP)
	$(BIN)/python -m tests.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
