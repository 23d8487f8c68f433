# `make test` and `make demo` each create .venv when it is missing and install the project,
# every package at the version constraints.txt pins (so a new release upstream cannot change
# what CI installs). Both are idempotent: the install step reruns only when pyproject.toml or
# constraints.txt changes. `make lock` refreshes constraints.txt from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint lock services-down clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]' \
		--config-settings editable_mode=compat
	touch $(STAMP)

# Pin every dependency (and theirs) to the newest versions that satisfy pyproject.toml today.
lock: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--no-header --quiet --upgrade -o constraints.txt

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/jobharness run demo --drill demo

services-down: $(STAMP)
	$(VENV)/bin/jobharness services down

clean:
	rm -rf $(VENV) .jobharness .pytest_cache .ruff_cache .mypy_cache
