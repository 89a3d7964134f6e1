#!/usr/bin/env bash
# Installs everything into ./.venv on a fresh machine: torch (CPU build 2.13.0 unless a torch is
# already importable there), the runtime and test dependencies, and lowlight_fast itself with its
# compiled extension (no build isolation: the extension is built against the torch installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==${LOWLIGHT_FAST_TORCH:-2.13.0}"
fi
.venv/bin/pip install -q setuptools wheel ninja numpy pillow safetensors tqdm \
  pytest pytest-benchmark expecttest triton
.venv/bin/pip install -q --no-build-isolation -e ".[test,triton]"
.venv/bin/python -c "import lowlight_fast, sys; i = lowlight_fast.build_info(); print('lowlight_fast', lowlight_fast.__version__, i); sys.exit(0 if i['cpu'] else 1)"
