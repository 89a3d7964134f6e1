"""SCI SmoothLoss forward + backward: eager reference, torch.compile(reference) and the fused op.

Timing (pytest-benchmark, one group per shape):
    PYTHONPATH=$PWD python -m pytest benchmarks/bench_smooth_loss.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds
Peak memory (a fresh subprocess per case, extra peak RSS over the inputs):
    PYTHONPATH=$PWD python benchmarks/bench_smooth_loss.py --memory
CPU time of one thread (process time, so other jobs on the machine distort it less than wall time):
    PYTHONPATH=$PWD python benchmarks/bench_smooth_loss.py --cpu-time

Both arguments require gradients (in SCI training the image of stages 2 and 3 comes from the
calibration network). The eager reference at 2160x3840 takes tens of seconds per round: it runs once.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

from lowlight_fast import use_backend
from lowlight_fast.ops.smooth_loss import smooth_loss
from lowlight_fast.reference import sci_losses as ref

SHAPES = [(1, 3, 400, 600), (1, 3, 1080, 1920), (1, 3, 2160, 3840)]
IMPLS = ["eager_reference", "compiled_reference", "ours"]
_compiled = torch.compile(ref.smooth_loss, dynamic=False)


def _loss_fn(impl: str):
    if impl == "eager_reference":
        return ref.smooth_loss
    if impl == "compiled_reference":
        return _compiled
    return smooth_loss


def _inputs(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).requires_grad_()
    o = (torch.rand(shape, generator=g) * 0.9 + 1e-4).requires_grad_()
    return x, o


def _step(fn, x, o):
    x.grad = None
    o.grad = None
    fn(x, o).backward()


def _rounds(impl: str, shape) -> int:
    pixels = shape[2] * shape[3]
    if impl == "eager_reference":
        return 1 if pixels > 3_000_000 else 3
    return 3 if pixels > 3_000_000 else 10


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_smooth_loss_fwd_bwd(benchmark, shape, impl):
    benchmark.group = "smooth_loss fwd+bwd " + "x".join(map(str, shape))
    x, o = _inputs(shape)
    fn = _loss_fn(impl)
    with use_backend("cpp" if impl == "ours" else "reference"):
        _step(fn, x, o)  # warm-up (compiles torch.compile's graph)
        benchmark.pedantic(_step, args=(fn, x, o), rounds=_rounds(impl, shape), iterations=1)


# --- peak memory -----------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_one(impl: str, shape) -> None:
    x, o = _inputs(shape)
    fn = _loss_fn(impl)
    with use_backend("cpp" if impl == "ours" else "reference"):
        if impl == "compiled_reference":
            _step(fn, x, o)  # compile first; its memory is not the loss's
        x.grad = o.grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak RSS (VmHWM)
            f.write("5")
        before = _rss_kib("VmRSS")
        _step(fn, x, o)
        peak = _rss_kib("VmHWM")
    map_mib = x.numel() * x.element_size() / 2**20
    print(f"{(peak - before) / 1024:.1f} {map_mib:.2f}")


def measure_memory() -> None:
    print("| shape | implementation | extra peak RSS (MiB) | in full-size float32 maps |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        for impl in IMPLS:
            code = (
                "import sys; sys.argv=['x']; import benchmarks.bench_smooth_loss as b; "
                f"b._measure_one({impl!r}, {shape!r})"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
            if res.returncode != 0:
                print(f"| {shape} | {impl} | failed: {res.stderr.strip().splitlines()[-1]} | |")
                continue
            extra, map_mib = map(float, res.stdout.split()[-2:])
            print(f"| {'x'.join(map(str, shape))} | {impl} | {extra:.0f} | {extra / map_mib:.1f} |")


# --- CPU time with one thread (robust to other jobs on a shared machine) ------------------------------


def measure_cpu_time() -> None:
    import time

    torch.set_num_threads(1)
    print("| shape | implementation | CPU time per fwd+bwd, 1 thread (ms, min) | rounds |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        for impl in IMPLS:
            x, o = _inputs(shape)
            fn = _loss_fn(impl)
            rounds = _rounds(impl, shape)
            with use_backend("cpp" if impl == "ours" else "reference"):
                _step(fn, x, o)
                best = float("inf")
                for _ in range(rounds):
                    start = time.process_time()
                    _step(fn, x, o)
                    best = min(best, time.process_time() - start)
            print(f"| {'x'.join(map(str, shape))} | {impl} | {best * 1e3:.1f} | {rounds} |", flush=True)


if __name__ == "__main__":
    if "--memory" in sys.argv:
        measure_memory()
    elif "--cpu-time" in sys.argv:
        measure_cpu_time()
    else:
        print(__doc__)
