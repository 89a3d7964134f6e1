#!/usr/bin/env bash
# The whole test suite: sets up .venv if needed (scripts/setup.sh: on a set-up checkout it only checks,
# and rebuilds the compiled modules only when their sources changed), then runs pytest.
# Extra arguments go to pytest. "No tests collected" is a failure (pytest exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
