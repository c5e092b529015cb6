# Every target installs what it needs on first use: `make test` works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# SAM CLI pins versions that conflict with the project's dependencies: it gets its own venv.
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_INSTALLED := $(SAM_VENV)/.installed
# Wheels for Lambda's CPython 3.12 and a stand-in of its runtime (infra/sam_build.py).
LAMBDA_READY := .venv-lambda/.installed
export SAM_CLI_TELEMETRY ?= 0

.PHONY: test lint run bench deploy clean sam-build sam-build-ready lock

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(INSTALLED) $(SAM_INSTALLED) $(LAMBDA_READY) ## run the whole suite (lint, types, tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

run: $(INSTALLED) ## the local stack: moto as local AWS, every function on one port, the durable worker
	$(PY) -m infra.local_stack

$(SAM_INSTALLED): requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.txt
	touch $@

$(LAMBDA_READY): requirements.txt | $(INSTALLED)
	$(PY) -m infra.sam_build prepare
	touch $@

lock: $(INSTALLED) ## pin the runtime dependencies into requirements.txt after editing pyproject.toml
	$(PY) -m infra.lock

sam-build: $(INSTALLED) $(SAM_INSTALLED) $(LAMBDA_READY) ## build every function as AWS gets it, into .aws-sam/build
	$(SAM) build

# `sam build` runs `make build-<LogicalId>` per function and layer (BuildMethod: makefile).
build-%Function: sam-build-ready
	$(PY) -m infra.sam_build function $* "$(ARTIFACTS_DIR)"

build-%Layer: sam-build-ready
	$(PY) -m infra.sam_build layer $* "$(ARTIFACTS_DIR)"

sam-build-ready:
	@test -x $(PY) || $(MAKE) $(INSTALLED)
	@test -f $(LAMBDA_READY) || $(MAKE) $(LAMBDA_READY)

bench: $(INSTALLED) $(SAM_INSTALLED) $(LAMBDA_READY) ## template vs plain FastAPI and Mangum: bench/results.md, README table
	$(PY) -m bench

deploy: sam-build ## sam build, then sam deploy --guided (asks for the stack name, region and parameters)
	$(SAM) deploy --guided

clean:
	rm -rf $(VENV) $(SAM_VENV) .venv-lambda .aws-sam .pytest_cache .mypy_cache .ruff_cache
