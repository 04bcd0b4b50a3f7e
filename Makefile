# kamim — every user-facing workflow is a make target; each installs what it needs first.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
KAMIM   := $(BIN)/kamim
STAMP   := $(VENV)/.installed

DATASET  ?= photos
SPLIT    ?= train
DETECTOR ?= fast
FORMAT   ?= zarr
KEYPOINTS ?= auto
WORKERS  ?= $(shell nproc)
MODEL    ?= vit_t
METHOD   ?= kamim
WPS      ?= 8
TEMP     ?= 0.25
STEPS    ?= 20
BATCH    ?= 16
DEVICE   ?= auto
RUN      ?=
DATA_ROOT ?=

# Passed to every verb that reads the dataset, only when set (else $KAMIM_DATA_ROOT or ./data). The
# default cache path carries a tag of the resolved data root, so `make cache` and `make pretrain` with
# the same DATASET/DATA_ROOT/DETECTOR/FORMAT name the same cache.
DATA_ARGS = --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

.PHONY: help install test lint demo cache pretrain linprobe bench bench-gpu test-xla clean

help:
	@echo "make demo      cache + short SimMIM/KAMIM pretraining + linear probe + report on 'photos'"
	@echo "make test      lint + the test suite"
	@echo "make cache     DATASET=photos DATA_ROOT= DETECTOR=fast FORMAT=zarr WORKERS=$(WORKERS)"
	@echo "make pretrain  MODEL=vit_t METHOD=kamim DETECTOR=fast KEYPOINTS=auto FORMAT=zarr WPS=8 TEMP=0.25 STEPS=20 BATCH=16 DEVICE=auto"
	@echo "make linprobe  RUN=runs/<run dir> (default: the latest pretrain run) DATASET=photos DATA_ROOT="
	@echo "make bench     CPU benchmarks -> bench/results/*.json and the README tables"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

cache: install
	$(KAMIM) cache $(DATA_ARGS) --split $(SPLIT) --detector $(DETECTOR) --format $(FORMAT) --workers $(WORKERS)

pretrain: install
	$(KAMIM) pretrain --model $(MODEL) --method $(METHOD) --detector $(DETECTOR) --keypoints $(KEYPOINTS) --cache-format $(FORMAT) \
		--weight-ps $(WPS) --temperature $(TEMP) $(DATA_ARGS) --split $(SPLIT) --steps $(STEPS) --batch-size $(BATCH) \
		--device $(DEVICE)

linprobe: install
	$(KAMIM) linprobe $(if $(RUN),--checkpoint $(RUN),--latest) $(DATA_ARGS)

demo: install
	$(BIN)/python -m kamim.demo

bench: install
	$(BIN)/python -m bench.run_all

bench-gpu: install
	$(BIN)/python -m bench.gpu

test-xla:
	bash .ci/xla

clean:
	rm -rf runs caches .pytest_cache
