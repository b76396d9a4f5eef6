# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
# Two installs into one venv: what serving needs (`make run`), and that plus the dev tools
# (`make test`; a superset, so it also satisfies `make run`).
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP  := $(VENV)/.installed-stamp
EXAMPLES_STAMP := $(VENV)/.examples-stamp

.PHONY: run test bench lint lint-imports typecheck pytest examples screenshots clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "reelhook needs $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --editable .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install --editable '.[dev]'
	touch $@ $(RUNTIME_STAMP) $(EXAMPLES_STAMP)

$(EXAMPLES_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PIP) install --editable '.[examples]'
	touch $@

## run: set up (runtime dependencies only), then start reelhook on its embedded default
## (SQLite in ./data, simulated providers)
run: $(RUNTIME_STAMP)
	$(BIN)/reelhook serve

## examples: also install what examples/ needs (the Standard Webhooks library the receivers use)
examples: $(EXAMPLES_STAMP)

## test: set up (with the dev tools), then lint, check the layering, type-check and run the suite
test: lint lint-imports typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests examples bench
	$(BIN)/ruff format --check service tests examples bench

## lint-imports: the layering contracts in pyproject.toml ([tool.importlinter])
lint-imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## pytest: the suite on SQLite and then again on PostgreSQL (the conformance run: both must
## pass; a test that starts PostgreSQL nodes whatever the store runs in the second pass only).
## Four pytest-xdist workers on two cores: the suite waits far more than it computes (servers
## starting, simulated providers answering, retries falling due), so workers beyond the core
## count overlap those waits. Bytecode caching is switched back on (an environment with
## PYTHONDONTWRITEBYTECODE=1 would otherwise have every worker and every reelhook process the
## tests start compile, and pytest re-rewrite, every module from source).
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(PYTEST_WORKERS)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(PYTEST_WORKERS) --store postgresql

## bench: run the performance suite (loopback only), the isolation scenarios (`python -m bench
## isolation --quick` alone), the same ingest, ack latency and fan-out on SQLite | PostgreSQL x1 |
## PostgreSQL x3 (`python -m bench --stores --quick` alone), then the multi-node scenarios at
## full size (bench/results/multinode.md: each scenario's ledger); about 20 minutes in all.
## Writes bench/results/latest.md.
bench: $(STAMP)
	$(BIN)/python -m bench
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m bench.multinode

## screenshots: regenerate docs/screenshots/ (the console's main pages) in headless Chromium
screenshots: $(STAMP)
	$(BIN)/python -m tests.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
