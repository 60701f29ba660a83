# Two commands on a fresh machine (Python 3.11, pip, git): `make run`, then `make test`.
VENV   ?= .venv
PYTHON ?= python3.11
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export GX_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
# DVC ignores DO_NOT_TRACK: without this each `dvc` command starts a daemon that phones home
export DVC_NO_ANALYTICS ?= 1

.PHONY: help install run smoke test test-fast lint clean serve ui server bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -m pip check
	touch $@

install: $(STAMP) ## create .venv and install the pinned dependencies

run: $(STAMP) ## run the default pipeline on built-in data, then print where to look
	$(BIN)/tlp run --profile default

smoke: $(STAMP) ## the whole pipeline in about a minute (tiny settings)
	$(BIN)/tlp run --profile smoke

serve: $(STAMP) ## run the pipeline on the cron schedule in params.yaml (section schedule)
	$(BIN)/tlp serve

ui: $(STAMP) ## MLflow UI for this project's store on http://127.0.0.1:5000
	$(BIN)/tlp ui

server: $(STAMP) ## Prefect server + MLflow server on 127.0.0.1 for a small team on one box
	$(BIN)/tlp server

test: $(STAMP) ## run the whole test suite
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the quick tests only (no end-to-end)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP) ## benchmarks -> benchmarks/results/REPORT.md + JSON + PNG, logged to MLflow (FULL=1: full grid)
	$(BIN)/python benchmarks/run_all.py $(if $(FULL),--full,)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean: ## remove generated state (keeps .venv)
	rm -rf data models reports mlflow.db mlartifacts params.resolved.yaml .dvc/cache .dvc/tmp
