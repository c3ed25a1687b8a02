# Two commands matter: `make demo` and `make test`. Both build .venv with the system python3
# and install `.[dev]` and the emulators whenever a pyproject.toml is newer than the last
# install. The emulators (EWS, token server) are test and demo infrastructure, a distribution of
# their own in emulators/ that a production install of ews-listener leaves out (issue 12).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt check pytest clean bench

$(STAMP): pyproject.toml emulators/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./emulators
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy listener emulators/ews_listener_emulators

# The suite runs on every core (pytest-xdist): most of its time is end-to-end tests waiting on
# emulators and daemons, so two workers on two cores finish in a little over half the time.
# `make test PYTEST_ARGS="-n 0 -x"` runs it in one process.
PYTEST_ARGS ?= -n auto

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint pytest

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/ews-listener demo --config config/demo.toml

bench: $(STAMP)
	$(BIN)/python benchmarks/emulator.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/idle.py

clean:
	rm -rf $(VENV) var build *.egg-info emulators/*.egg-info .pytest_cache .mypy_cache .ruff_cache
