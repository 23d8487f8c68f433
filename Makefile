# `make test` and `make demo` each create .venv when it is missing and install the project.
# Both are idempotent: the install step reruns only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint services-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/jobharness run smoke

services-down: $(STAMP)
	$(VENV)/bin/jobharness services down

clean:
	rm -rf $(VENV) .jobharness .pytest_cache .ruff_cache .mypy_cache
