# The two set-up commands of the README: `make run` (the demo) and `make test`.
# Each creates .venv on first use and installs the pinned dependencies of requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATASET ?= data/reference.root

.PHONY: run test bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/zdc-sim data generate --particles 20000 --repeats 4 --seed 1 --out $(DATASET)
	$(BIN)/zdc-sim data inspect $(DATASET)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/reference_mc.py
	$(BIN)/python bench/rootio.py
	$(BIN)/python bench/metric_sanity.py

clean:
	rm -rf $(VENV) bench/out
