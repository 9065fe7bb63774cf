# The README's two commands: `make up` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench install clean

up: install  ## run the whole system on this machine (embedded broker, memory storage)
	$(BIN)/motcua up

test: install lint  ## lint, type-check, then every test (unit + integration)
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install  ## benchmarks; results go in docs/benchmarks.md by hand, with the command
	$(BIN)/python -m bench.codec
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.streams_latency
	$(BIN)/python -m bench.sync_apply
	$(BIN)/python -m bench.sync_latency

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
