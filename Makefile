# The two set-up commands of the README: `make run` (the demo) and `make test`.
# Each creates .venv on first use and installs the pinned dependencies of requirements.lock.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATASET ?= data/reference.root

HELDOUT ?= data/heldout.root
HELDOUT_ZP ?= data/heldout_zp.root
MODEL_DIR := zdc_sim/default_model

.PHONY: run test test-all test-slow bench bench-regularizers clean default-model default-model-zp \
	compare-regularizers compare-regularizers-mapped shape-zoom

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/zdc-sim data generate --particles 20000 --repeats 4 --seed 1 --out $(DATASET)
	$(BIN)/zdc-sim data inspect $(DATASET)
	$(BIN)/zdc-sim data generate --particles 10000 --repeats 4 --seed 2 --reaching zn --out $(HELDOUT)
	$(BIN)/zdc-sim data generate --particles 10000 --repeats 4 --seed 2 --reaching zp --out $(HELDOUT_ZP)
	$(BIN)/zdc-sim evaluate --checkpoint zn --data $(HELDOUT) --ceiling
	$(BIN)/zdc-sim evaluate --checkpoint zp --data $(HELDOUT_ZP) --ceiling

# The fast tier (CI): every module, tiny models; `test-all` adds the slow tier.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/reference_mc.py
	$(BIN)/python bench/rootio.py
	$(BIN)/python bench/metric_sanity.py
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/soak.py

# The five diversity regularizers and the plain cGAN on the synthetic benchmarks and on reference
# ZDC data, 3 seeds each (about an hour on 2 CPU cores); writes bench/out/regularizers/.
bench-regularizers: $(STAMP)
	$(BIN)/zdc-sim bench regularizers --out bench/out/regularizers --workers 2

# Reproduce a shipped model (35-70 minutes of training on 2 CPU cores each): 100,000 training
# particles that reach the detector x 2 repeats (seed 1), a validation set that picks the best epoch
# (seed 3) and the held-out set it is judged on (10,000 particles x 4, seed 2, never trained or
# validated on). `default-model` is the ZN's, `default-model-zp` the ZP's. The best checkpoint's
# intensity factors (common and electromagnetic) are refitted on every training particle on their way to
# the shipped file: a run of today's recipe gets ~1.000 there (docs/fidelity.md); then its tower share
# map is fitted on the same particles (`refit-share-map`, zdc_sim/share_map.py), with the ZP's edge
# total map before it.
# Both shipped models: the default recipe, one thread. The ZN's: the bounded total alone, seed 2 (the
# regularizer comparison's sdi-2, the best of three SDI networks with the map on two 30,000-particle
# sets and confirmed on a third, docs/fidelity.md); the ZP's: with the learned width per sample
# (shape_zoom), seed 1.
SHIP_SEED ?= 1
SHIP_OPTIONS ?= {"bounded_total": true, "shape_zoom": true}
default-model: $(STAMP)
	$(MAKE) shipped-model DETECTOR=zn TARGET=model.safetensors SHIP_SEED=2 SHIP_OPTIONS='{"bounded_total": true}'

default-model-zp: $(STAMP)
	$(MAKE) shipped-model DETECTOR=zp TARGET=zp.safetensors

shipped-model:
	$(BIN)/zdc-sim data generate --particles 100000 --repeats 2 --seed 1 --reaching $(DETECTOR) --out data/train100k_$(DETECTOR).root --quiet
	$(BIN)/zdc-sim data generate --particles 10000 --repeats 4 --seed 3 --reaching $(DETECTOR) --out data/validation10k_$(DETECTOR).root --quiet
	$(BIN)/zdc-sim train --config training/configs/default.json --detector $(DETECTOR) \
		--data data/train100k_$(DETECTOR).root --val-data data/validation10k_$(DETECTOR).root --out runs/$(DETECTOR) \
		--quiet --seed $(SHIP_SEED) --threads 1 --model-options '$(SHIP_OPTIONS)'
	$(BIN)/zdc-sim refit-intensity --checkpoint runs/$(DETECTOR)/best.safetensors --data data/train100k_$(DETECTOR).root \
		--out $(MODEL_DIR)/$(TARGET)
	$(BIN)/zdc-sim refit-share-map --checkpoint $(MODEL_DIR)/$(TARGET) --data data/train100k_$(DETECTOR).root \
		$(if $(filter zp,$(DETECTOR)),--edge-total-map)
	$(BIN)/zdc-sim data generate --particles 10000 --repeats 4 --seed 2 --reaching $(DETECTOR) --out data/heldout10k_$(DETECTOR).root --quiet
	$(BIN)/zdc-sim evaluate --checkpoint $(DETECTOR) --data data/heldout10k_$(DETECTOR).root --ceiling --json | tail -n 1 > $(MODEL_DIR)/evaluation_$(DETECTOR).txt

# The regularizer comparison of docs/regularizers.md at full budget, at the default recipe: each
# regularizer trained with everything else equal, model options pinned to those the table ran with
# (the bounded total, no shape_zoom; SDI and the plain cGAN on seeds 1 and 2, the four
# others on seed 1), its intensity factors refitted on every training particle (`refit-intensity`),
# and scored on the same 30,000 held-out ZN particles x 4 (seed 30001), paired with the SDI run of
# its seed (SDI seed 2 with SDI seed 1, SDI seed 1 with the shipped model and with the perfect
# simulator's figures). One training takes 40-95 minutes on 2 threads and holds under 4 GB, so two
# can also run at a time with one thread each (`make -j2 compare-regularizers COMPARE_THREADS=1`:
# two trainings in 71 minutes, about what two in a row take on 2 cores). A finished run is not
# trained again, an interrupted one resumes from its last epoch. Records in
# runs/compare/<regularizer>-<seed>/.
COMPARE_RUNS ?= sdi-1 sdi-2 none-1 none-2 ms-1 dp-1 ndiv-1 iid-1
COMPARE_THREADS ?= 2
HELDOUT30K ?= data/heldout30k.root

compare-regularizers: $(foreach run,$(COMPARE_RUNS),runs/compare/$(run)/evaluation.json)
	$(BIN)/python bench/regularizer_table.py $(addprefix runs/compare/,$(COMPARE_RUNS))

.PRECIOUS: runs/compare/%/trained runs/compare/%/refit.safetensors
runs/compare/%/trained: | data/train100k_zn.root data/validation10k_zn.root
	$(BIN)/zdc-sim train --config training/configs/default.json --detector zn --data data/train100k_zn.root \
		--val-data data/validation10k_zn.root --out runs/compare/$* --quiet --threads $(COMPARE_THREADS) \
		--regularizer $(word 1,$(subst -, ,$*)) --seed $(word 2,$(subst -, ,$*)) \
		--model-options '{"bounded_total": true}' $(if $(wildcard runs/compare/$*/last.safetensors),--resume)
	touch $@

runs/compare/%/refit.safetensors: runs/compare/%/trained
	$(BIN)/zdc-sim refit-intensity --checkpoint runs/compare/$*/best.safetensors --data data/train100k_zn.root --out $@

# (zn: the shipped ZN model; the table in docs/regularizers.md was paired with 5817c5d1ddde, shipped then)
runs/compare/sdi-1/evaluation.json: EVALUATE_FLAGS = --ceiling --compare zn
runs/compare/none-2/evaluation.json: EVALUATE_FLAGS = --compare runs/compare/sdi-2/refit.safetensors
runs/compare/none-2/evaluation.json: runs/compare/sdi-2/refit.safetensors
runs/compare/%/evaluation.json: runs/compare/%/refit.safetensors runs/compare/sdi-1/refit.safetensors | $(HELDOUT30K)
	$(BIN)/zdc-sim evaluate --checkpoint runs/compare/$*/refit.safetensors --data $(HELDOUT30K) --json \
		$(or $(EVALUATE_FLAGS),--compare runs/compare/sdi-1/refit.safetensors) > runs/compare/$*/evaluation.txt
	tail -n 1 runs/compare/$*/evaluation.txt > $@

# The same runs with the shipped post-processing's last step, the tower share map
# (zdc_sim/share_map.py), fitted on the same training particles (`refit-share-map`, 4 minutes on 2
# CPU cores) and scored on the same 30,000 particles, paired (all mapped): the plain cGAN seed N with
# SDI seed N, SDI seed 2 (the shipped ZN network, when trained with COMPARE_THREADS=1) with the
# plain cGAN seed 2, every other run with SDI seed 2, which is therefore trained first if missing.
# Records
# runs/compare/<run>/mapped.safetensors and evaluation_mapped.json.
compare-regularizers-mapped: $(foreach run,$(COMPARE_RUNS),runs/compare/$(run)/evaluation_mapped.json)
	$(BIN)/python bench/regularizer_table.py --mapped $(addprefix runs/compare/,$(COMPARE_RUNS))

mapped_partner = runs/compare/$(if $(filter none-%,$(1)),sdi-$(word 2,$(subst -, ,$(1))),$(if $(filter sdi-2,$(1)),none-2,sdi-2))/mapped.safetensors

.PRECIOUS: runs/compare/%/mapped.safetensors
runs/compare/%/mapped.safetensors: runs/compare/%/refit.safetensors
	$(BIN)/zdc-sim refit-share-map --checkpoint $< --data data/train100k_zn.root --out $@

# The learned width per sample (docs/fidelity.md, "A learned width per sample"): the default recipe
# with the model option shape_zoom, seeds 1 and 2 (zoom-1, zoom-2) and seed 1 with the linear channel
# score (zoomlin-1), refitted and scored on the 30,000 held-out particles paired with the default
# recipe's SDI run of the same seed; seeds 3 and 4 (zoom-3, zoom-4) paired with zoom-1, the shipped
# ZN. zoom-1 and zoomlin-1, then zoom-3 and zoom-4, ran two at a time with one thread each
# (`make -j2 shape-zoom COMPARE_THREADS=1`), zoom-2 alone on two threads.
ZOOM_RUNS ?= zoom-1 zoomlin-1 zoom-2 zoom-3 zoom-4
zoom_partner = $(if $(filter zoom-3 zoom-4,$(1)),runs/zoom/zoom-1,runs/compare/sdi-$(word 2,$(subst -, ,$(1))))/refit.safetensors

shape-zoom: $(foreach run,$(ZOOM_RUNS),runs/zoom/$(run)/evaluation.json)

.PRECIOUS: runs/zoom/%/refit.safetensors
runs/zoom/%/refit.safetensors: | data/train100k_zn.root data/validation10k_zn.root
	$(BIN)/zdc-sim train --config training/configs/default.json --detector zn --data data/train100k_zn.root \
		--val-data data/validation10k_zn.root --out runs/zoom/$* --quiet --threads $(COMPARE_THREADS) \
		--seed $(word 2,$(subst -, ,$*)) --model-options '{"bounded_total": true, "shape_zoom": true}' \
		$(if $(filter zoomlin-%,$*),--energy-score-linear 20) $(if $(wildcard runs/zoom/$*/last.safetensors),--resume)
	$(BIN)/zdc-sim refit-intensity --checkpoint runs/zoom/$*/best.safetensors --data data/train100k_zn.root --out $@

.SECONDEXPANSION:
runs/zoom/%/evaluation.json: runs/zoom/%/refit.safetensors $$(call zoom_partner,$$*) | $(HELDOUT30K)
	$(BIN)/zdc-sim evaluate --checkpoint runs/zoom/$*/refit.safetensors --data $(HELDOUT30K) --json \
		--compare $(call zoom_partner,$*) > runs/zoom/$*/evaluation.txt
	tail -n 1 runs/zoom/$*/evaluation.txt > $@

runs/compare/%/evaluation_mapped.json: runs/compare/%/mapped.safetensors $$(call mapped_partner,$$*) | $(HELDOUT30K)
	$(BIN)/zdc-sim evaluate --checkpoint $< --data $(HELDOUT30K) --json \
		--compare $(call mapped_partner,$*) > runs/compare/$*/evaluation_mapped.txt
	tail -n 1 runs/compare/$*/evaluation_mapped.txt > $@

data/train100k_zn.root: | $(STAMP)
	$(BIN)/zdc-sim data generate --particles 100000 --repeats 2 --seed 1 --reaching zn --out $@ --quiet
data/validation10k_zn.root: | $(STAMP)
	$(BIN)/zdc-sim data generate --particles 10000 --repeats 4 --seed 3 --reaching zn --out $@ --quiet
$(HELDOUT30K): | $(STAMP)
	$(BIN)/zdc-sim data generate --particles 30000 --repeats 4 --seed 30001 --reaching zn --out $@ --quiet

clean:
	rm -rf $(VENV) bench/out
