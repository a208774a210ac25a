# bnrnn — the commands the README promises. `make help` lists them.
PYTHON ?= python3
# A folder of local dataset copies (ptb/, ptb_char/, ...); empty: the trainer downloads and verifies.
DATA ?=
# A CPU machine gets the CPU wheel of torch; a machine that already has torch (a CUDA image)
# keeps it. Later installs only see the `torch>=2.4` floor, so nothing reinstalls it.
TORCH_CPU ?= torch==2.13.0
SEEDS ?= 1
PROTOCOL ?=
# a committed run with the same name is kept and the collect step refuses, unless REPLACE=1
COLLECT_ARGS = $(if $(REPLACE),--replace,)
DEVICE ?= auto
ARGS ?=

.PHONY: help install test test-all bench tables reproduce-ptb reproduce-ptb-small \
        reproduce-grid reproduce-speech reproduce-speech-synthetic clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: ## install bnrnn (editable) with its test/sweep/logging extras; keeps an existing torch
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_CPU)
	$(PYTHON) -m pip install -e ".[all]"

# one pytest worker per core (tests pin torch to one thread each, so workers do not oversubscribe)
test: ## fast CPU test tier (what CI runs)
	$(PYTHON) -m pytest -m "not slow and not gpu" -q -n auto

test-all: ## every tier that can run here (slow included; GPU tests skip without CUDA)
	$(PYTHON) -m pytest -q

# the speech cache benchmark runs on CPU (eSpeak); SPEECH_BENCH_ARGS="--hours 2 --tile 25" scales it
SPEECH_BENCH_ARGS ?=
bench: ## time every NormLSTM variant against cuDNN/native nn.LSTM -> results/bench.md; the speech cache's formats -> results/bench_speech_corpus.md
	$(PYTHON) scripts/bench_rnn.py --device $(DEVICE) --out results/bench.md
	$(PYTHON) scripts/bench_speech_corpus.py --out results/bench_speech_corpus.md $(SPEECH_BENCH_ARGS)

tables: ## regenerate results/*.md, *.csv and figures from results/runs
	$(PYTHON) scripts/make_tables.py

# data.root=$(DATA)/<dataset> when DATA is set (make reproduce-ptb DATA=/path/to/data); a
# missing dataset folder there is then an error, never a silent download.
data_root = $(if $(DATA),data.root=$(abspath $(DATA))/$(1),)

# ---------------------------------------------------------------- Penn Treebank, Table 2
# One sweep directory per `make` invocation (nanoseconds), so the collect step takes exactly it.
PTB_SWEEP := multirun/reproduce_ptb/$(shell date +%Y-%m-%d_%H-%M-%S-%N)
# PROTOCOL=laurent_code|zaremba: another protocol than the paper's text (configs/protocol/).
# POPULATION=1: each size x variant trains its SEEDS seeds side by side as one population (one
# process, docs/population.md; members in <job>/seed<k>/): faster on a GPU, slower on a CPU.
PTB_SEEDS = $(if $(POPULATION),'population.seeds=[$(shell seq -s, 1 $(SEEDS))]' \
              "population.member_dir='seed{seed}'",seed=$(shell seq -s, 1 $(SEEDS)))
PTB_SWEEP_ARGS = -m +sweep=ptb $(PTB_SEEDS) device=$(DEVICE) quiet=true \
                 hydra.sweep.dir=$(PTB_SWEEP) $(call data_root,ptb) \
                 $(if $(PROTOCOL),protocol=$(PROTOCOL),) $(ARGS)

reproduce-ptb-small: ## Table 2, small row: 4 variants x SEEDS seeds, then the tables (ARGS: extra overrides; DATA: local copies)
	$(PYTHON) -m bnrnn.train $(PTB_SWEEP_ARGS) experiment=ptb_small
	$(PYTHON) scripts/collect_runs.py $(PTB_SWEEP) --dest results/runs/ptb $(COLLECT_ARGS)
	$(MAKE) tables

reproduce-ptb: ## Table 2: {small, medium, large} x 4 variants x SEEDS seeds, then the tables (ARGS: extra overrides; DATA: local copies)
	$(PYTHON) -m bnrnn.train $(PTB_SWEEP_ARGS)
	$(PYTHON) scripts/collect_runs.py $(PTB_SWEEP) --dest results/runs/ptb $(COLLECT_ARGS)
	$(MAKE) tables

# ---------------------------------------------------------------- appendix grid, Table 3
# Laurent et al. appendix A: the random search, once per norm on the same sampled points.
# Reduced: make reproduce-grid TRIALS=8 EPOCHS=2 LIMIT=25. Parallel trials on one machine:
# LAUNCHER=local JOBS=8 GRID_ARGS=threads=1 (on a GPU: GRID_ARGS=hydra.launcher.gpus_per_node=1,
# the jobs share it; gpus_per_node=0 hides the GPU and device=auto would then train on the CPU).
TRIALS ?= 52
EPOCHS ?= 20
LIMIT ?= null
JOBS ?= 1
LAUNCHER ?= basic
GRID_ARGS ?=
GRID_RUNS ?= results/runs/grid
# GRID_MODE=population: the same points, one process per batch size (bnrnn.population_grid: each
# group of trials trains as one population, docs/population.md); sweep: one process per trial
GRID_MODE ?= population
GRID_SWEEP = multirun/grid_char_rnn/t$(TRIALS)_e$(EPOCHS)_l$(LIMIT)$(if $(filter population,$(GRID_MODE)),_population)

reproduce-grid: ## Table 3: TRIALS random-search points x {none, bn_sum} on char PTB, then the tables
	for norm in none bn_sum; do \
	  if [ "$(GRID_MODE)" = population ]; then \
	    $(PYTHON) -m bnrnn.population_grid --norm $$norm --trials $(TRIALS) --sweep-dir $(GRID_SWEEP)/$$norm -- \
	      trainer.max_epochs=$(EPOCHS) data.limit_batches=$(LIMIT) \
	      $(call data_root,ptb_char) device=$(DEVICE) quiet=true $(GRID_ARGS) || exit 1; \
	  else \
	    $(PYTHON) -m bnrnn.train -m experiment=grid_char_rnn +hparams_search=grid model.norm=$$norm \
	      hydra.sweeper.n_trials=$(TRIALS) hydra.sweeper.n_jobs=$(JOBS) hydra/launcher=$(LAUNCHER) \
	      hydra.sweep.dir=$(GRID_SWEEP)/$$norm trainer.max_epochs=$(EPOCHS) data.limit_batches=$(LIMIT) \
	      $(call data_root,ptb_char) device=$(DEVICE) quiet=true $(GRID_ARGS) || exit 1; \
	  fi; \
	done
	# trials land beside the committed ones; a different grid already in GRID_RUNS is refused
	# (nothing is deleted): collect it elsewhere with GRID_RUNS=results/runs/<name>
	$(PYTHON) scripts/collect_runs.py $(GRID_SWEEP) --dest $(GRID_RUNS) --layout relative
	$(MAKE) tables

# ---------------------------------------------------------------- speech, Table 1
# The synthetic corpus runs offline on CPU (~1 h; needs apt-get install espeak-ng); LibriSpeech
# train-clean-100 + CPC labels downloads 6.4 GB and wants a GPU.
reproduce-speech-synthetic: ## Table 1 offline on CPU: eSpeak corpus, baseline vs sequence-wise BN (~1 h), then the tables
	$(PYTHON) -m bnrnn.train -m experiment=speech_synthetic model.norm=none,bn_input $(call data_root,ptb) \
	  device=cpu quiet=true data.progress=false hydra.sweep.dir=multirun/reproduce_speech_synthetic $(ARGS)
	$(PYTHON) scripts/collect_runs.py multirun/reproduce_speech_synthetic --dest results/runs/speech $(COLLECT_ARGS)
	$(MAKE) tables

reproduce-speech: ## Table 1 on LibriSpeech train-clean-100 + CPC labels (GPU; downloads 6.4 GB), then the tables
	$(PYTHON) -m bnrnn.train -m experiment=speech_librispeech model.norm=none,bn_input device=$(DEVICE) \
	  quiet=true data.progress=false hydra.sweep.dir=multirun/reproduce_speech $(ARGS)
	$(PYTHON) scripts/collect_runs.py multirun/reproduce_speech --dest results/runs/speech $(COLLECT_ARGS)
	$(MAKE) tables

clean: ## remove local run outputs (never results/)
	rm -rf outputs multirun .pytest_cache
