# Entry points: `make run` starts the whole stack, `make test` runs the tests. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package of the development and CI environment, pinned (pip-compile of pyproject.toml's dev and postgres
# extras). `make lock` regenerates it after a dependency changes in pyproject.toml, keeping the other pins;
# `make lock LOCKFLAGS=--upgrade` moves every pin to the newest version pyproject.toml allows. It runs:
#   CUSTOM_COMPILE_COMMAND="make lock" pip-compile --extra dev --extra postgres --strip-extras \
#     --no-emit-index-url --no-emit-find-links --output-file requirements/dev.lock pyproject.toml
LOCK := requirements/dev.lock
LOCKFLAGS ?=

.PHONY: run test test-fast test-system test-postgres lint lock format bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@ $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/conveyor run

test: $(VENV)/.dev
	$(BIN)/pytest

test-fast: $(VENV)/.dev
	$(BIN)/pytest -m "not system"

test-system: $(VENV)/.dev
	$(BIN)/pytest -m system

# The suite's PostgreSQL pass (CI runs it after `make test`): the tests whose job store is the default one run again
# with CONVEYOR_TEST_STORE=postgresql, each in a schema of its own (tests/postgres.py): the in-process api, the
# worker's plain functions, and the system tests whose processes go through the job store. `make test` already runs
# the store's own tests on both backends and the PostgreSQL-only system tests (-m postgres).
PG_TESTS := tests/api tests/worker tests/system/test_skeleton.py tests/system/test_notifications.py \
	tests/system/test_events_resume.py tests/system/test_revocation.py tests/system/test_security.py \
	tests/system/test_ws_protocol.py tests/system/test_ws_asgi.py
PG_DESELECT := --deselect tests/system/test_skeleton.py::test_conveyor_run_starts_everything_and_ctrl_c_leaves_nothing

test-postgres: $(VENV)/.dev
	CONVEYOR_TEST_STORE=postgresql $(BIN)/pytest $(PG_TESTS) $(PG_DESELECT)

bench: $(VENV)/.dev
	$(BIN)/python -m bench

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(wildcard $(LOCK)),-c $(LOCK)) pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra dev --extra postgres --strip-extras \
		--no-emit-index-url --no-emit-find-links $(LOCKFLAGS) --output-file $(LOCK) pyproject.toml

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# The console's browser tests (Debian's /usr/bin/chromium), also writing the README's screenshots.
.PHONY: screenshots
screenshots: $(VENV)/.dev
	CONVEYOR_SCREENSHOTS=docs/screenshots $(BIN)/pytest -p no:cacheprovider tests/system/test_console.py
