# The two commands a newcomer runs on a fresh machine (Python >= 3.10, no GPU needed):
#   make run    set up .venv and run DP-SGD on the embedded ScienceQA-format sample
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint leaderboard

$(BIN)/dpbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU build from local disk first: plain `torch` would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the f-DP audit bound's reference implementation for a test: its auditing module needs no jax
	$(BIN)/pip install -q --no-deps jax-privacy==2.0.0
	touch $@

setup: $(BIN)/dpbench

run: setup
	$(BIN)/dpbench run --method dpsgd --task scienceqa

test: setup
	$(BIN)/python -P -m pytest -q

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

leaderboard: setup
	$(BIN)/dpbench leaderboard --check
