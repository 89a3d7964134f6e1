#!/usr/bin/env bash
# Installs everything into ./.venv: torch (CPU build 2.13.0 unless a torch is already importable there),
# the runtime and test dependencies, and lowlight_fast itself, editable, with its compiled modules (no
# build isolation: they are built against the torch installed here).
#
# Run again, it does only what is missing: the dependencies are installed only when one is absent, and
# the compiled modules are rebuilt only when their inputs changed (setup.py --inputs-hash: csrc/, setup.py,
# torch, the CUDA settings) or they do not import. LOWLIGHT_FAST_REBUILD=1 forces a rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VPY=$ROOT/.venv/bin/python
[ -x "$VPY" ] || "$PY" -m venv .venv
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q "torch==${LOWLIGHT_FAST_TORCH:-2.13.0}"
fi

# Distribution names: the build tools, the dependencies of pyproject.toml and its test/triton/video/export extras.
DEPS=(setuptools wheel ninja numpy pillow safetensors tqdm pytest pytest-benchmark pytest-timeout expecttest hypothesis scikit-image triton av onnx onnxscript onnxruntime)
if ! "$VPY" - "${DEPS[@]}" <<'EOF'
import sys
from importlib import metadata
missing = []
for name in sys.argv[1:]:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
sys.exit(1 if missing else 0)
EOF
then
  .venv/bin/pip install -q "${DEPS[@]}"
fi

# Triton's interpreter before 3.7 fails with NumPy 2.4+ (lowlight_fast/_torch_compat.py says why): the
# tests run Triton interpreted, so such a Triton (torch 2.11's) gets a NumPy it works with.
rc=0
"$VPY" -c "
import runpy, sys
sys.exit(1 if runpy.run_path('lowlight_fast/_torch_compat.py')['interpreter_problem']() else 0)" >/dev/null 2>&1 || rc=$?
if [ "$rc" = 1 ]; then
  .venv/bin/pip install -q "numpy<2.4"
fi

# Up to date: the stamp the last in-place build wrote matches the inputs now, and the installed package
# is this checkout's, with both compiled modules importable (checked from / so that the checkout itself
# is not on sys.path by accident).
up_to_date() {
  [ "${LOWLIGHT_FAST_REBUILD:-0}" != 1 ] || return 1
  [ -f lowlight_fast/.build-inputs.sha256 ] || return 1
  [ "$("$VPY" setup.py --inputs-hash)" = "$(cat lowlight_fast/.build-inputs.sha256)" ] || return 1
  (cd / && LLF_ROOT=$ROOT "$VPY" -c "
import os, torch, lowlight_fast, lowlight_fast._C, lowlight_fast._runtime  # torch first: it loads libc10
here = os.path.dirname(lowlight_fast.__file__)
raise SystemExit(0 if os.path.samefile(here, os.path.join(os.environ['LLF_ROOT'], 'lowlight_fast')) else 1)
") >/dev/null 2>&1
}

if up_to_date; then
  echo "lowlight_fast: compiled modules up to date with the sources (LOWLIGHT_FAST_REBUILD=1 rebuilds)"
else
  .venv/bin/pip install -q --no-build-isolation --no-deps -e .
fi
"$VPY" -c "import lowlight_fast, sys; i = lowlight_fast.build_info(); print('lowlight_fast', lowlight_fast.__version__, i); sys.exit(0 if i['cpu'] and i['runtime'] else 1)"
