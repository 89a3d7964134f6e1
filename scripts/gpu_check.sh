#!/usr/bin/env bash
# The GPU check, in stages with their own time budgets (scripts/gpu_check.py says what each does):
#
#   bash scripts/gpu_check.sh [--budget SECONDS] [--rehearse] [--stages 1,2,3,4]
#
# Default budget 480 s (8 minutes): one device-tool command, with room to spare. Results in
# $OUT/gpu_check (else out/gpu_check), each written as soon as it exists: summary.json, env.json,
# build.txt, tests.txt, headline.jsonl, headline.md, rest.txt. Exit status 0 when every stage passed.
# --rehearse runs the same stages on the CPU at tiny sizes (the test suite does: tests/test_gpu_check.py).
# PYTHON: the interpreter (default .venv/bin/python when present, else python3); on a GPU machine it
# needs a CUDA build of torch, triton, pytest and pytest-benchmark (nothing is installed there).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHON=$PY
exec "$PY" scripts/gpu_check.py "$@"
