#!/usr/bin/env bash
# Wheels for a lent GPU machine whose image lacks what bnrnn's trainer needs (it has torch,
# triton, numpy, scipy, pandas, matplotlib, pyyaml, tqdm, rich, pytest, but no Hydra and no
# registry to install from): downloads them into .whl/ (git-ignored) for the device call's carry,
# for the image's Python (3.12, manylinux x86_64). Versions are this project's tested ones.
#
#   scripts/device_wheels.sh          # Hydra and OmegaConf: every training campaign
#   scripts/device_wheels.sh sweep    # + Optuna and its sweeper: the appendix grid (grid.txt)
#
# On the device, before anything imports them:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
core=(hydra-core==1.3.8 omegaconf==2.3.1)
sweep=(hydra-optuna-sweeper==1.3.0 optuna==2.10.1 sqlalchemy==2.1.9 colorlog==6.12.0 cmaes==0.13.1
       cliff==4.17.0 stevedore==5.10.0 prettytable==3.19.0 wcwidth==0.7.0 cmd2==4.3.1
       rich-argparse==1.8.0 pyperclip==1.11.0 prompt-toolkit==3.0.53 autopage==0.6.0
       alembic==1.20.1 mako==1.4.3 greenlet==3.5.6)
want=("${core[@]}")
[[ "${1:-}" == "sweep" ]] && want+=("${sweep[@]}")
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${want[@]}"
# antlr4's runtime (Hydra's grammar) is published as a source archive only: a pure-Python wheel
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
du -sh .whl
