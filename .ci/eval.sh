#!/usr/bin/env bash
# CI step: the lmms-eval model end to end, offline, in its own virtual environment.
# lmms-eval needs torchvision: the CPU wheel of torch (requirements/cpu.txt), then PyPI's torchvision made
# importable beside it (.ci/torchvision-cpu.sh), as in the main venv; a CUDA build would cost ~4 GB more disk.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
python3 -m venv .venv-eval
. .venv-eval/bin/activate
pip install -q --upgrade pip
pip install -q -c requirements/cpu.txt -e ".[eval,test]" "easy-vqa==1.0"
bash .ci/torchvision-cpu.sh
python -c "import torch, transformers, lmms_eval; from importlib.metadata import version; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lmms-eval', version('lmms_eval'))"
echo "eval venv ready in $(( $(date +%s) - start )) s"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -p no:cacheprovider tests_eval
echo "eval step took $(( $(date +%s) - start )) s"
deactivate
