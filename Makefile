# Entry points. Every target creates or refreshes .venv first, so a fresh machine needs nothing else.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export AIRFLOW_HOME ?= $(CURDIR)/.devstack/airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: venv system-deps test test-fast lint demo up down bench clean

# Debian packages the local stack uses (bubblewrap sandboxes emulated pods). Skipped when present.
system-deps:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; \
	  else echo "note: bubblewrap missing (apt-get install bubblewrap); emulated pods run as plain processes"; fi; fi

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

venv: $(STAMP) system-deps

lint: venv
	$(BIN)/ruff check .

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Everything but the slow end-to-end cases.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/python -m devstack demo

up: venv
	$(BIN)/python -m devstack up

down:
	@test -x $(BIN)/python && $(BIN)/python -m devstack down || true

bench: venv
	$(BIN)/python -m bench.sync_bench

clean: down
	rm -rf .devstack bench/work
