# The two commands (see README): `make demo` sets up and runs the main job; `make test` sets up and
# runs the tests. Both are idempotent; a second run skips the installs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demos test test-all bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) demos/main.py

demos: demo  # the name a reader of demos/ types

test: setup
	@bash scripts/run_tests.sh

test-all: setup
	@bash scripts/run_tests.sh -m ""

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
