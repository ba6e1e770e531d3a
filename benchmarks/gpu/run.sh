#!/usr/bin/env bash
# GPU figures in one command (issue 20): the CUDA tests, hired bench on llava-next-7b (batch 1, 2, 4) and
# llava-1.5-7b (batch 1) with random weights, a sync check, versions and nvidia-smi, all into one folder,
# in under 8 minutes, installing nothing. See README.md, "GPU benchmark", and benchmarks/gpu/run.py.
#
#   bash benchmarks/gpu/run.sh [OUTDIR]             # GPU machine, from the repository root (default $OUT or gpu-results/)
#   bash benchmarks/gpu/run.sh --dry-run [OUTDIR]   # CPU, small models, about a minute: the same steps (CI)
#   bash benchmarks/gpu/run.sh --help
#
# The package is used from this working tree (PYTHONPATH=src), not installed. PYTHON=... picks the
# interpreter (default: python3 on PATH). Exit code 0 only if every step succeeded.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    PY="$(command -v python3 || command -v python || true)"
fi
if [ -z "$PY" ]; then
    echo "run.sh: no python3 on PATH; set PYTHON=/path/to/python" >&2
    exit 2
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
# nothing may reach the network: the models are built locally with random weights
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$PY" "$ROOT/benchmarks/gpu/run.py" "$@"
