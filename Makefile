# bnrnn — the commands the README promises. `make help` lists them.
PYTHON ?= python3
SHARED ?= ../shared/data
# A CPU machine gets the CPU wheel of torch; a machine that already has torch (a CUDA image)
# keeps it. Later installs only see the `torch>=2.4` floor, so nothing reinstalls it.
TORCH_CPU ?= torch==2.13.0
SEEDS ?= 1
DEVICE ?= auto

.PHONY: help install test test-all bench tables reproduce-ptb reproduce-ptb-small \
        reproduce-grid reproduce-speech reproduce-speech-synthetic clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: ## install bnrnn (editable) with its test/sweep/logging extras; keeps an existing torch
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_CPU)
	$(PYTHON) -m pip install -e ".[all]"

test: ## fast CPU test tier (what CI runs)
	$(PYTHON) -m pytest -m "not slow and not gpu" -q

test-all: ## every tier that can run here (slow included; GPU tests skip without CUDA)
	$(PYTHON) -m pytest -q

bench: ## time every NormLSTM variant against cuDNN/native nn.LSTM -> results/bench.md
	$(PYTHON) scripts/bench_rnn.py --device $(DEVICE) --out results/bench.md

tables: ## regenerate results/*.md, *.csv and figures from results/runs
	$(PYTHON) scripts/make_tables.py

reproduce-ptb-small: ## Table 2, small row: 4 variants x SEEDS seeds, then the tables
	$(PYTHON) -m bnrnn.train -m +sweep=ptb sweep_sizes=small seed_count=$(SEEDS) device=$(DEVICE) quiet=true
	$(MAKE) tables

reproduce-ptb: ## Table 2: {small, medium, large} x 4 variants x SEEDS seeds, then the tables
	$(PYTHON) -m bnrnn.train -m +sweep=ptb sweep_sizes=small,medium,large seed_count=$(SEEDS) device=$(DEVICE) quiet=true
	$(MAKE) tables

clean: ## remove local run outputs (never results/)
	rm -rf outputs multirun .pytest_cache
