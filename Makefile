# Evolve: the two commands a newcomer needs are `make run` and `make test`.
# Both create .venv on first use and install into it; later calls skip the
# install unless pyproject.toml changed.

PYTHON     ?= python3
VENV       ?= .venv
# torch first, pinned to the CPU build on disk, so pip never pulls a
# multi-GB CUDA build as a dependency. GPU users: make TORCH_SPEC="torch==2.x.y".
TORCH_SPEC ?= torch==2.13.0
ARGS       ?=
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.evolve-installed

.PHONY: install run test test-unit test-integration test-slow test-chaos test-browser test-cluster lint-imports clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m serving.proto.build
	@touch $(STAMP)
	@echo "installed Evolve into $(VENV)"

run: $(STAMP)
	$(BIN)/evolve run configs/default.yaml $(ARGS)

# unit + integration (real Ray); `slow` learning runs are left to `make test-slow`
test: $(STAMP) lint-imports
	$(BIN)/python -m pytest -m "not slow and not chaos and not browser and not cluster" $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration and not chaos and not browser and not cluster" $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# SIGKILLs and disk faults under live traffic (tests/chaos); each reports its recovery time
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

# a real run looked at in headless Chromium (OS package `chromium`): quiet terminal, `evolve status`,
# /v1/docs offline, the Ray dashboard, report.html; screenshots in runs/browser-check/
test-browser: $(STAMP)
	$(BIN)/python -m pytest -m browser tests/browser $(PYTEST_ARGS)

# a multi-node Ray cluster of separate raylets on this machine (tests/cluster): the cluster config's
# loops submitted as a Ray job, placement asserted, a worker node killed; reports recovery time
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

lint-imports: $(STAMP)
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .import_linter_cache
