# The verbs people look for. Everything runs from the project's own .venv; state lives under
# MLOPS_HOME (default ./.mlops) and DAGSTER_HOME (default $MLOPS_HOME/dagster), both overridable.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
MLOPS_HOME ?= $(CURDIR)/.mlops
DAGSTER_HOME ?= $(MLOPS_HOME)/dagster
export MLOPS_HOME DAGSTER_HOME
STAMP := $(VENV)/.installed
# uv (pinned in requirements/lock.txt, installed into the venv by pip) or pip: INSTALLER=pip.
INSTALLER ?= uv
# Steps in the `gpu` pool (training, rendering) run one at a time where there is a GPU. On a
# CPU-only machine two may run side by side: the demo trains the NVS captures beside the CD model,
# one core each.
GPU_POOL_LIMIT ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,2)
INSTANCE := $(DAGSTER_HOME)/dagster.yaml
COMPOSE ?= docker-compose
COMPOSE_FILE := docker/compose.yaml
HEARTBEAT := scripts/heartbeat.sh

.PHONY: install demo dev test lint format bench lock up down config check-env clean

install: $(STAMP) $(INSTANCE) ## Create .venv and the local Dagster instance.

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Each install prints nothing (--quiet) for up to minutes: scripts/heartbeat.sh says every
	@# 25 s that it is still running. Times measured on 2 cores (benchmarks/RESULTS.md).
	@echo "Installing the $(shell grep -c '^[A-Za-z0-9].*==' requirements/lock.txt) pinned dependencies of requirements/lock.txt (PyTorch, Dagster, MLflow, ...) into $(VENV):"
ifeq ($(INSTALLER),uv)
	@# uv installs the same pinned set as pip several times faster (benchmarks/RESULTS.md), from
	@# the indexes pip is configured with (a local wheel mirror included: scripts/uv-index-args.sh).
	@# Every version is pinned by the lock, so uv may pick a pin from any index (pip's behaviour).
	@# It compiles bytecode as pip does: without .pyc files (and with PYTHONDONTWRITEBYTECODE set)
	@# every run recompiled PyTorch's and MLflow's sources, about 8 CPU-s per run.
	@# If uv cannot be had or fails, pip installs the lock instead.
	@echo "  with uv: about 45 s with the wheels in its cache, longer when it downloads them"
	$(HEARTBEAT) "installing uv" $(BIN)/python -m pip install --quiet -c requirements/lock.txt uv \
	  && $(HEARTBEAT) "uv: installing requirements/lock.txt" \
	     $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python \
	     --index-strategy unsafe-best-match \
	     $$(scripts/uv-index-args.sh $(BIN)/python) -c requirements/lock.txt -e '.[dev]' \
	  || { echo "uv could not install the lock: pip installs it instead (3 to 11 minutes)"; \
	       $(HEARTBEAT) "pip: installing requirements/lock.txt" \
	       $(BIN)/python -m pip install --quiet -c requirements/lock.txt -e '.[dev]'; }
else
	@echo "  with pip: 3 to 11 minutes (uv, the default INSTALLER, takes about 45 s)"
	$(HEARTBEAT) "pip: upgrading pip" $(BIN)/python -m pip install --quiet --upgrade pip
	$(HEARTBEAT) "pip: installing requirements/lock.txt" \
	  $(BIN)/python -m pip install --quiet -c requirements/lock.txt -e '.[dev]'
endif
	@# torchgeo -> lightly -> hydra-core -> omegaconf pins antlr4 4.9, but Dagster's asset-selection
	@# parser needs the 4.13 runtime (`--select` dies with "ord() expected string of length 1").
	@# Installed last, without deps: torchgeo and lightly still work; OmegaConf interpolation does not.
	$(BIN)/python -m pip install --quiet --no-deps antlr4-python3-runtime==4.13.2
	@echo "Installed into $(VENV)."
	touch $@

$(INSTANCE): dagster.yaml $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@
	$(BIN)/dagster instance concurrency set gpu $(GPU_POOL_LIMIT) >/dev/null

demo: install ## Generate and commit the demo scenes, then materialise every asset.
	BIN=$(BIN) scripts/demo.sh

dev: install ## The Dagster UI (and daemon) on the embedded default: http://localhost:3000
	@# Every sensor defaults to RUNNING (mlops_assets/definitions.py): commits to main flow without
	@# a click in the UI. MLOPS_SENSOR_INTERVAL_S (default 30) sets how often they tick.
	$(BIN)/dagster dev -w workspace.yaml

test: install ## Lint, type check and the whole test suite (as CI runs it).
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/pyright
	$(BIN)/pytest -m "not gpu and not lakefs"

lint: install ## Lint and type check only.
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/pyright

format: install ## Format and fix what ruff can.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Speed and quality benchmarks, printed as a table.
	$(BIN)/python -m benchmarks

lock: $(STAMP) ## Re-pin requirements/lock.txt from the current .venv.
	{ sed -n '1,/^# 4.13.2/p' requirements/lock.txt; $(BIN)/pip freeze --exclude-editable \
	  | grep -v '^antlr4-python3-runtime'; echo 'antlr4-python3-runtime==4.9.3'; } > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt

# The compose file sets `make config` validates: the GPU stack, the CPU stack, and the scale-out
# stack (a container per run). `make up` starts COMPOSE_FILE (the first set by default).
COMPOSE_SETS := docker/compose.yaml|docker/compose.yaml:docker/compose.cpu.yaml|docker/compose.yaml:docker/compose.scale.yaml
ENV_FILE ?= docker/.env

config: ## Validate every production compose file set against docker/.env.example (no engine).
	@set -e; for set in $(subst |, ,$(COMPOSE_SETS)); do \
	  files=$$(echo "$$set" | sed 's/^/-f /; s/:/ -f /g'); \
	  echo "$(COMPOSE) $$files config"; \
	  $(COMPOSE) $$files --env-file docker/.env.example config --quiet; \
	done

check-env: ## Refuse a docker/.env that is missing or still holds a `change-me` value.
	@test -f $(ENV_FILE) || { echo "$(ENV_FILE) is missing: cp docker/.env.example $(ENV_FILE) and set every secret" >&2; exit 1; }
	@bad=$$(grep -E '^[A-Za-z_][A-Za-z0-9_]*=.*change-me' $(ENV_FILE) | cut -d= -f1 | tr '\n' ' '); \
	if [ -n "$$bad" ]; then \
	  echo "$(ENV_FILE): still the example value (change-me) for: $$bad- set real secrets first" >&2; exit 1; \
	fi

up: check-env ## Start the production stack (needs Docker); refuses example secrets.
	$(COMPOSE) -f $(COMPOSE_FILE) --env-file $(ENV_FILE) up -d --build

down: ## Stop the production stack.
	$(COMPOSE) -f $(COMPOSE_FILE) down

clean: ## Remove local state (scenes, runs, models) but keep .venv.
	rm -rf $(MLOPS_HOME)

# The GPU check (benchmarks/gpu_check.py). It runs on GPU_PYTHON: .venv-gpu's Python when that
# exists (made by `make gpu-venv` on this machine's own torch), else .venv's (the pinned torch).
GPU_VENV ?= .venv-gpu
GPU_PYTHON ?= $(if $(wildcard $(GPU_VENV)/bin/python),$(CURDIR)/$(GPU_VENV)/bin/python,$(BIN)/python)
.PHONY: gpu-venv gpu-check

gpu-venv: ## A venv on this machine's own torch (GPU_BASE_PYTHON) where the pinned one cannot run.
	scripts/gpu_venv.sh $(GPU_VENV)

gpu-check: ## Every GPU path on this machine's CUDA device (~6 min); prints the report's folder.
	@test -x $(GPU_PYTHON) || { echo "gpu-check: no $(GPU_PYTHON); run make install or make gpu-venv" >&2; exit 2; }
	$(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)
