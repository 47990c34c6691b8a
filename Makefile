# kafka data diode — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv lint typecheck unit test bench kafka-fetch demo clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the package with its dev extra

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check diode tests bench scripts
	$(VENV)/bin/ruff format --check diode tests bench scripts

typecheck: $(STAMP)  ## mypy --strict on the package
	$(VENV)/bin/mypy --strict diode

unit: $(STAMP)  ## the test suite without the Kafka integration tests
	$(VENV)/bin/pytest -m 'not kafka'

test: lint typecheck  ## everything CI runs: lint, types, the whole suite with real Kafka
	$(VENV)/bin/pytest

bench: $(STAMP)  ## run every benchmark (each prints one JSON object)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

kafka-fetch:  ## download the Kafka broker jars from Maven Central into ~/.cache/diode
	scripts/kafka fetch

demo: $(STAMP)  ## the whole diode on this machine (scripts/demo; DEMO_ARGS="--loss 0.02")
	scripts/demo $(DEMO_ARGS)

clean:  ## remove the venv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
