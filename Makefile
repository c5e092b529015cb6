# Every target installs what it needs on first use: `make test` works on a fresh clone.
# Versions come from the locks alone (uv.lock, infra/sam-cli/uv.lock): nothing is resolved here.
PYTHON ?= python3
# uv itself, pinned: installed with pip into a bootstrap venv, so nothing needs to be there first.
UV_VERSION := 0.13.9
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
# SAM CLI pins versions that conflict with the project's dependencies: it gets its own venv and lock.
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
# Wheels for Lambda's CPython 3.12 and a stand-in of its runtime (infra/sam_build.py).
LAMBDA_READY := .venv-lambda/.installed
export SAM_CLI_TELEMETRY ?= 0
# uv uses the machine's Pythons and never downloads one.
export UV_PYTHON_DOWNLOADS := never
SYNC_HINT := make: could not install the lock (see above); after editing pyproject.toml, run `make lock`

.PHONY: test test-fast lint run bench deploy deploy-rehearsal clean sam-build sam-build-ready sam-local lock upgrade sync sync-sam function

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Always run (a no-op in milliseconds when in sync): .venv holds exactly uv.lock, whatever was installed by hand.
# The first sync after a change of the lock also compiles every installed module (--compile-bytecode),
# so no process compiles them again: with PYTHONDONTWRITEBYTECODE set, each one would, every time.
sync: | $(UV) ## install exactly uv.lock into .venv
	@$(UV) sync --locked --quiet $(call compile_once,$(VENV),uv.lock) --python $(PYTHON) || { echo "$(SYNC_HINT)" >&2; exit 2; }
	@touch $(VENV)/.bytecode

sync-sam: | $(UV)
	@UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(SAM_VENV) $(UV) sync --locked --quiet --project infra/sam-cli \
		$(call compile_once,$(SAM_VENV),infra/sam-cli/uv.lock) --python $(PYTHON) || { echo "$(SYNC_HINT)" >&2; exit 2; }
	@touch $(SAM_VENV)/.bytecode

# --compile-bytecode unless venv $(1) was compiled after lock $(2) last changed.
compile_once = $$(test $(1)/.bytecode -nt $(2) || echo --compile-bytecode)

# -X no_debug_ranges: a garbage collection inside pytest's parse of a test's source can run a
# finalizer that fails; formatting its error parses again, nested, which CPython 3.11 (seen on
# 3.11.7; cpython#106905) reports as "AST constructor recursion depth mismatch": an INTERNALERROR
# that hides the failing test. Without column ranges, formatting a traceback parses nothing.
#
# The tests run on TEST_WORKERS processes (pytest-xdist): most of a test's time is spent waiting on
# a server, a container or a grace period, so more workers than cores keep both cores busy. A file
# runs whole on one worker (tests/support/workers.py); --durations: the slowest tests, to keep it fast.
#
# The suite starts some 200 Python processes (servers, CLIs, workers): each one compiles the project's
# modules and pytest rewrites every test module in each worker unless their bytecode is cached, so
# the tests run with PYTHONDONTWRITEBYTECODE unset (__pycache__ is ignored by git, Docker and sam build).
TEST_WORKERS ?= 4
test test-fast: export PYTHONDONTWRITEBYTECODE :=
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20
test: sync sync-sam $(LAMBDA_READY) ## run the whole suite (lint, types, import layers, tests)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -X no_debug_ranges -m pytest $(PYTEST_PARALLEL)

# The inner loop: everything but the tests marked slow (builds, containers, whole-project runs).
test-fast: sync sync-sam $(LAMBDA_READY) ## the suite without the slow tests (-m "not slow"): minutes less, CI runs all
	$(PY) -X no_debug_ranges -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: sync ## ruff, mypy, and the import layers (pyproject.toml's importlinter contracts)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

run: sync ## the local stack: moto as local AWS, every function on one port, the durable worker
	$(PY) -m infra.local_stack

function: sync ## a new function: make function NAME=orders [TABLE=1] (its folder, template.yaml block, test)
	@test -n "$(NAME)" || { echo "make function: give it a name, e.g. make function NAME=orders TABLE=1" >&2; exit 2; }
	$(PY) -m infra.scaffold "$(NAME)" $(if $(TABLE),--table)

$(LAMBDA_READY): requirements.txt | sync
	$(PY) -m infra.sam_build prepare
	touch $@

lock: | $(UV) ## after editing pyproject.toml: re-lock (keeping the pins that still fit), export, install
	$(UV) lock --python $(PYTHON)
	$(UV) lock --project infra/sam-cli --python $(PYTHON)
	$(MAKE) sync
	$(PY) -m infra.lock

upgrade: | $(UV) ## move every package to its newest release that fits, then run `make test`
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) lock --upgrade --project infra/sam-cli --python $(PYTHON)
	$(MAKE) sync
	$(PY) -m infra.lock

sam-build: sync sync-sam $(LAMBDA_READY) ## build every function as AWS gets it, into .aws-sam/build
	$(SAM) build

# The HTTP API on 127.0.0.1:3000 in AWS's Lambda emulator (Docker), moto's image as AWS (infra/sam_local.py).
sam-local: sam-build ## sam local start-api against moto: every function as on Lambda, on this machine
	$(PY) -m infra.sam_local

# `sam build` runs `make build-<LogicalId>` per function and layer (BuildMethod: makefile).
build-%Function: sam-build-ready
	$(PY) -m infra.sam_build function $* "$(ARTIFACTS_DIR)"

build-%Layer: sam-build-ready
	$(PY) -m infra.sam_build layer $* "$(ARTIFACTS_DIR)"

sam-build-ready:
	@test -x $(PY) || $(MAKE) sync
	@test -f $(LAMBDA_READY) || $(MAKE) $(LAMBDA_READY)

bench: sync sync-sam $(LAMBDA_READY) ## template vs plain FastAPI and Mangum: bench/results.md, docs/benchmarks.md table
	$(PY) -m bench

# ENV=dev or ENV=prod: that samconfig.toml environment (its stack and parameters), no questions.
deploy: sam-build ## sam build, then sam deploy --guided; ENV=dev|prod: deploy that stage of samconfig.toml
	$(SAM) deploy $(if $(ENV),--config-env $(ENV),--guided)

# What `make deploy` does, against moto's CloudFormation on 127.0.0.1, then read back and deleted
# (infra/deploy_rehearsal.py; docs/deploy.md). Nothing reaches AWS.
deploy-rehearsal: sync sync-sam $(LAMBDA_READY) ## sam build, package, deploy, delete against moto on 127.0.0.1, checked
	$(PY) -m infra.deploy_rehearsal $(if $(ENV),--config-env $(ENV))

clean:
	rm -rf $(VENV) $(SAM_VENV) $(UV_VENV) .venv-lambda .aws-sam .pytest_cache .mypy_cache .ruff_cache
