# `make test` and `make demo` create (or reuse) .venv and install rlkit with the
# torch pin of constraints.txt. Nothing else needs to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlkit-installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole suite, slow end-to-end runs included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the slow end-to-end runs, for quick iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/rlkit demo

clean:
	rm -rf $(VENV) .pytest_cache runs/demo
