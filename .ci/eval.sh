#!/usr/bin/env bash
# CI step: the lmms-eval model end to end, offline, in its own virtual environment.
# lmms-eval needs torchvision; torch 2.14.1 + torchvision 0.29.1 install from this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
python3 -m venv .venv-eval
. .venv-eval/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.14.1" "torchvision==0.29.1"
pip install -q -e ".[eval,test]" "easy-vqa==1.0"
python -c "import torch, transformers, lmms_eval; from importlib.metadata import version; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lmms-eval', version('lmms_eval'))"
echo "eval venv ready in $(( $(date +%s) - start )) s"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -p no:cacheprovider tests_eval
echo "eval step took $(( $(date +%s) - start )) s"
deactivate
