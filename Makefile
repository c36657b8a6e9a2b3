# piBLOOM: one entry point for setting up, running and testing the whole project.
#   make run    set up and run api + web + proxy on the embedded default model
#   make test   set up and run every check and test (what CI runs)
#   make bench  throughput / latency benchmark against the peers

PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch is installed on its own, before the lock, so each platform gets its own build.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# transformers needs accelerate to read GGUF files; accelerate depends on torch, so it stays out of the
# lock too and goes in without dependencies (the others are in the lock).
ACCELERATE_SPEC ?= accelerate==1.16.0
export PIBLOOM_CACHE_DIR ?= $(CURDIR)/.cache/pibloom
# Tests and the local stack share the cores between several processes: see api/pibloom/server.py.
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.pibloom-installed
# Python dependencies come from api/poetry.lock, installed by poetry kept in its own venv (so its own
# dependencies never mix with the project's). torch is not in the lock: it is installed first, above.
POETRY_SPEC ?= poetry==2.5.1
POETRY := $(CURDIR)/$(VENV)/poetry/bin/poetry

.PHONY: setup setup-api setup-web system-deps model run serve test lint test-api test-web test-deploy test-e2e bench test-containers clean

setup: setup-api setup-web

setup-api: $(STAMP)

$(STAMP): api/pyproject.toml api/poetry.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --no-deps "$(ACCELERATE_SPEC)"
	test -x $(POETRY) || ($(PYTHON) -m venv $(VENV)/poetry && $(VENV)/poetry/bin/pip install --quiet "$(POETRY_SPEC)")
	cd api && VIRTUAL_ENV=$(CURDIR)/$(VENV) $(POETRY) install --all-extras --no-interaction --quiet
	touch $@

setup-web: web/node_modules/.package-lock.json web/dist/index.html

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web/dist/index.html: web/node_modules/.package-lock.json $(shell find web/src web/public web/index.html web/vite.config.js -type f 2>/dev/null)
	cd web && npm run build

# Debian packages the local stack and the browser tests use (root on Debian/Ubuntu; elsewhere it says how).
system-deps:
	@bash scripts/system-deps.sh

model: setup-api
	$(BIN)/pibloom model fetch

serve: setup-api
	$(BIN)/pibloom serve

run: setup model
	@bash scripts/run-local.sh

lint: setup-api
	cd api && $(POETRY) check --lock --no-interaction
	$(BIN)/ruff check --config api/pyproject.toml api e2e scripts deploy-tests
	$(BIN)/ruff format --config api/pyproject.toml --check api e2e scripts deploy-tests
	cd api && $(BIN)/lint-imports

# The shared rate-limit tests start Debian's redis-server.
test-api: setup-api system-deps
	cd api && $(BIN)/pytest -q

test-web: setup-web
	cd web && npm test

# Static checks of the Dockerfiles, compose file, nginx template and Kubernetes manifests (nginx -t
# and envsubst need the system packages).
test-deploy: setup-api system-deps
	$(BIN)/pytest -q deploy-tests

test-e2e: setup system-deps model
	$(BIN)/pytest -q e2e

test: lint test-api test-web test-deploy test-e2e

# The three images built from the unchanged Dockerfiles and the stack run in containers as compose
# (and, under podman, the Kubernetes manifests) describe it: Docker when an engine answers, else
# podman as root. Prints "skipped: <why>" where containers cannot run. See README ("Container tests").
test-containers: setup-api
	@bash scripts/test-containers.sh

bench: setup model
	$(BIN)/pibloom bench
	$(BIN)/pibloom bench --structured

clean:
	rm -rf $(VENV) web/node_modules web/dist .cache
