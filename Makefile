# The two set-up commands of the README: `make run` (the demo) and `make test`.
# Each creates .venv on first use and installs the pinned dependencies of requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATASET ?= data/reference.root

HELDOUT ?= data/heldout.root
MODEL_DIR := zdc_sim/default_model

.PHONY: run test bench bench-regularizers clean default-model

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/zdc-sim data generate --particles 20000 --repeats 4 --seed 1 --out $(DATASET)
	$(BIN)/zdc-sim data inspect $(DATASET)
	$(BIN)/zdc-sim data generate --particles 3000 --repeats 4 --seed 2 --out $(HELDOUT)
	$(BIN)/zdc-sim evaluate --data $(HELDOUT) --ceiling

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/reference_mc.py
	$(BIN)/python bench/rootio.py
	$(BIN)/python bench/metric_sanity.py
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/export.py

# The five diversity regularizers and the plain cGAN on the synthetic benchmarks and on reference
# ZDC data, 3 seeds each (about an hour on 2 CPU cores); writes bench/out/regularizers/.
bench-regularizers: $(STAMP)
	$(BIN)/zdc-sim bench regularizers --out bench/out/regularizers --workers 2

# Reproduces the shipped default model (hours on 2 CPU cores) and the SDI vs plain cGAN comparison
# of the README: same architecture, data, seed and epochs; only the regularizer differs.
default-model: $(STAMP)
	$(BIN)/zdc-sim data generate --particles 20000 --repeats 4 --seed 1 --out $(DATASET) --quiet
	$(BIN)/zdc-sim data generate --particles 3000 --repeats 4 --seed 2 --out $(HELDOUT) --quiet
	$(BIN)/zdc-sim train --config training/configs/default.json --data $(DATASET) --out runs/sdi --quiet
	$(BIN)/zdc-sim train --config training/configs/default.json --data $(DATASET) --out runs/none --regularizer none --quiet
	$(BIN)/zdc-sim train --config training/configs/default.json --data $(DATASET) --out runs/sdi-relative --sdi-weight relative --quiet
	cp runs/sdi/best.safetensors $(MODEL_DIR)/model.safetensors
	$(BIN)/zdc-sim evaluate --data $(HELDOUT) --ceiling --json > $(MODEL_DIR)/evaluation.txt
	for run in none sdi-relative; do \
		$(BIN)/zdc-sim evaluate --checkpoint runs/$$run/best.safetensors --data $(HELDOUT) --ceiling --json > runs/$$run/evaluation.txt; \
	done

clean:
	rm -rf $(VENV) bench/out
