# The README's two commands: `make up` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# the PostgreSQL that .ci/services.sh starts; the brokers the suite runs on (tansu|kafka|both)
export MOTCUA_TEST_PG_URL ?= postgresql+psycopg://postgres:motcua@127.0.0.1:5432/test
export MOTCUA_TEST_BROKER ?= both

.PHONY: up up-kafka test test-unit lint bench install services clean

up: install  ## run the whole system on this machine (embedded broker, memory storage)
	$(BIN)/motcua up

test: install lint services  ## lint, type-check, then every test on both brokers
	$(BIN)/pytest --durations=15

test-unit: install  ## the tests that need no broker and no PostgreSQL (seconds)
	$(BIN)/pytest -m "not integration"

services: install  ## install and start PostgreSQL, fetch Apache Kafka's jars (idempotent)
	bash .ci/services.sh

up-kafka: install  ## the whole system on a local 3-node Apache Kafka (needs java + mvn)
	$(BIN)/motcua kafka install
	$(BIN)/motcua up --broker kafka

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install  ## benchmarks; results go in docs/benchmarks.md by hand, with the command
	$(BIN)/python -m bench.codec
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.engine_stages
	$(BIN)/python -m bench.streams
	$(BIN)/python -m bench.streams_latency
	$(BIN)/python -m bench.sync_apply
	$(BIN)/python -m bench.sync_latency
	$(BIN)/python -m bench.brokers_compare
	$(BIN)/python -m bench.display
	$(BIN)/python -m bench.display_browser

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
