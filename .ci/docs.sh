#!/usr/bin/env bash
# CI step for the documentation site: its own venv with MkDocs and hired with its dependencies (the results
# hook builds the tables with hired's own functions, and importing hired imports torch and transformers;
# the constraint file takes the CPU wheel of torch), then a strict build.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

python3 -m venv .venv-docs
. .venv-docs/bin/activate
pip install -q --upgrade pip
pip install -q -c requirements/cpu.txt -e ".[docs]"   # hired, torch (CPU), transformers and the docs tools
export NO_MKDOCS_2_WARNING=1
mkdocs build --strict -d site
echo "docs built in $((SECONDS - start)) s: site/index.html"
