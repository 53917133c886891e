# The two commands a newcomer runs on a fresh machine (Python >= 3.11, no GPU needed):
#   make run       set up .venv with what the main job imports, and run it on the embedded default
#   make test-all  set up .venv with the test tools too, and run every test (what .ci/run runs)
# While working on the code:
#   make test      the fast loop: every test not marked slow (end-to-end runs, dpbench subprocesses,
#                  torch.distributed and the sweep engines are marked slow; `make test-all` runs them)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV = $(BIN)/uv pip install -q --python $(BIN)/python
# pip's own setting, which uv does not read: where this machine keeps wheels (here, torch's CPU build)
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

.PHONY: setup setup-test run test test-all lint leaderboard

# the runtime alone: `make run` needs nothing the tests, the linter or the cluster engines bring
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# uv installs in seconds what pip takes a minute and a half to. torch first, its CPU build from
	# where pip is told to find wheels (plain `torch` from PyPI is a multi-GB CUDA build); the rest keeps it
	$(BIN)/pip install -q uv
	$(UV) $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) torch==2.13.0
	$(UV) -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(UV) -e '.[test]'
	# byte-compiled, as pip does and uv does not by default: without it the tests' many fresh
	# processes (Ray workers, dpbench subprocesses) ran twice as slowly. `-`: a few files that only
	# newer Pythons parse (torch's py312 test helpers) fail to compile, and need not
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null
	# the f-DP audit bound's reference implementation for a test: its auditing module needs no jax
	$(UV) --no-deps jax-privacy==2.0.0
	touch $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

run: setup
	$(BIN)/dpbench run --method dualpriv --task scienceqa

test: setup-test
	$(BIN)/python -P -m pytest -q -m "not slow"

test-all: setup-test
	$(BIN)/python -P -m pytest -q

lint: setup-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

leaderboard: setup-test
	$(BIN)/dpbench leaderboard --check
