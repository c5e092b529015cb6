# Every target installs what it needs on first use: `make test` works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test lint run bench deploy clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(INSTALLED) ## run the whole suite (lint, types, tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

run: $(INSTALLED) ## serve the functions on 127.0.0.1
	$(PY) -m shared.serve notifications

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
