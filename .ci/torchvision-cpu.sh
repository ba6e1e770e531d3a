#!/usr/bin/env bash
# Workaround for this CPU-only machine (not part of the package): install PyPI's torchvision beside the
# CPU torch of the active venv and make it importable. That wheel is CUDA-linked, so its C++ ops do not
# load, and its import registers fake kernels for torchvision::nms/qnms unconditionally and fails. Register
# them only when the ops loaded, as torchvision does for its other meta kernels. Transformers' pixtral and
# LLaVA-OneVision processors import torchvision; nothing here runs its ops.
set -euo pipefail
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])")
case "$torch_version" in
  2.13.*) pip install -q --no-deps "torchvision==0.28.0" ;;
  *) python -c "import torchvision" 2>/dev/null || { echo "no torchvision known for torch $torch_version" >&2; exit 1; } ;;
esac
meta=$(python -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py
sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$meta"
python -c "import torchvision.transforms.v2"
