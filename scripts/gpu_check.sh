#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: builds lowlight_fast._C in place (CUDA kernels too when a
# toolkit is found), runs the whole test suite with LOWLIGHT_FAST_TEST_DEVICE=cuda, runs every
# benchmarks/*.py suite on cuda, and prints a table of the GPU timings with the effective bandwidth of
# each case (extra_info["bytes"] / median time) against a device-to-device copy's.
#
#   bash scripts/gpu_check.sh [extra pytest arguments for the test run]
#
# PYTHON: the interpreter (default .venv/bin/python when present, else python3); it needs a CUDA build of
# torch, triton, pytest and pytest-benchmark (nothing is installed here: GPU machines may be offline).
# Results go to $OUT/gpu_check when OUT is set, else to out/gpu_check: tests.txt, bench.txt,
# bench.json, table.md. Exit status: non-zero when the build, a test or a benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
RESULTS=${OUT:-$ROOT/out}/gpu_check
mkdir -p "$RESULTS"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export LOWLIGHT_FAST_TEST_DEVICE=cuda
export LOWLIGHT_FAST_BENCH_DEVICE=cuda
unset TRITON_INTERPRET LOWLIGHT_FAST_BACKEND

say() { printf '\n=== %s ===\n' "$*"; }

say "environment"
if ! "$PY" - <<'EOF'
import sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (a CPU build of torch, or no GPU)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}")
missing = []
for mod in ("triton", "pytest", "pytest_benchmark", "numpy"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", ""))
    except ImportError:
        missing.append(mod)
if missing:
    sys.exit("gpu_check: missing Python packages: " + ", ".join(missing))
EOF
then
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

say "build (python setup.py build_ext --inplace)"
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py build_ext --inplace >"$RESULTS/build.txt" 2>&1; then
  tail -n 60 "$RESULTS/build.txt"
  echo "gpu_check: the build failed (log: $RESULTS/build.txt)"
  exit 3
fi
"$PY" -c "import lowlight_fast; print('build_info', lowlight_fast.build_info())"

say "tests on cuda (LOWLIGHT_FAST_TEST_DEVICE=cuda)"
"$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$RESULTS/tests.txt"
test_rc=${PIPESTATUS[0]}

say "benchmarks on cuda (every benchmarks/*.py)"
"$PY" -m pytest -q -p no:cacheprovider benchmarks -o "python_files=bench_*.py test_*.py" \
  --benchmark-enable --benchmark-group-by=group --benchmark-columns=min,median,mean,stddev,rounds \
  --benchmark-json="$RESULTS/bench.json" 2>&1 | tee "$RESULTS/bench.txt"
bench_rc=${PIPESTATUS[0]}

say "table"
"$PY" - "$RESULTS/bench.json" <<'EOF' | tee "$RESULTS/table.md"
import json
import sys

try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"no benchmark results to tabulate ({exc})")
print(f"machine: {data.get('machine_info', {}).get('node', '?')}, date {data.get('datetime', '?')}")
rows = []
for b in data["benchmarks"]:
    median = b["stats"]["median"]
    nbytes = b.get("extra_info", {}).get("bytes")
    gbps = nbytes / median / 1e9 if nbytes and median > 0 else None
    rows.append((b.get("group") or "", b["name"], median, gbps, b.get("extra_info", {})))
copy = [g for group, _, _, g, _ in rows if group.startswith("copy") and g]
copy_gbps = max(copy) if copy else None
if copy_gbps:
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)")
print()
print("| group | case | median ms | speed-up vs eager | GB/s (effective) | % of copy | peak MiB |")
print("|---|---|---:|---:|---:|---:|---:|")
eager = {group: m for group, name, m, _, _ in rows if "eager" in name}
for group, name, median, gbps, extra in sorted(rows, key=lambda r: (r[0], r[1])):
    base = eager.get(group)
    speedup = f"{base / median:.1f}x" if base and median > 0 and "peak" not in group else ""
    bw = f"{gbps:.0f}" if gbps else ""
    pct = f"{100 * gbps / copy_gbps:.0f}%" if gbps and copy_gbps else ""
    peak = f"{extra['peak_mb']:.0f}" if "peak_mb" in extra else ""
    print(f"| {group} | {name} | {median * 1e3:.3f} | {speedup} | {bw} | {pct} | {peak} |")
EOF

say "summary"
echo "tests: exit $test_rc; benchmarks: exit $bench_rc; results in $RESULTS"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
