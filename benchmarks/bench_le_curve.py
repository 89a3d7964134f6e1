"""Benchmarks of the light-enhancement curve: eager reference, torch.compile(reference), fused op.

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_le_curve.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

Device: LOWLIGHT_FAST_BENCH_DEVICE (cpu | cuda), default cuda when a GPU is visible, else cpu.
Each case records in extra_info the bytes the fused op must move ("bytes"), so that an effective
bandwidth can be computed (scripts/gpu_check.sh prints it beside a device-to-device copy's). Each
forward group also holds "copy": dst.copy_(src) of 1x27xHxW into an existing tensor, the memory
system's bandwidth in the same run; the forward's memory floor is its bytes at that bandwidth.
`python benchmarks/bench_le_curve.py --table RESULT.json` (a --benchmark-json file) prints each
group's times, the ratios and the floor as a markdown table.
Settings worth comparing (all in the header of the table): ATEN_CPU_CAPABILITY=default|avx2 (the
instruction-set path of our kernels, and of torch's), LOWLIGHT_FAST_HUGE_PAGES=0 (our huge-page advice
off), LOWLIGHT_FAST_OUTPUT_POOL=0 (our output pool off: every output is fresh memory).
Zero-DCE++'s forward+backward (full-resolution map) is not here: inductor spent more than 20 minutes
compiling the reference's backward on the 2-core CPU without finishing.
The peak-memory group runs each variant in a fresh subprocess and records the peak over the inputs
(CPU: VmHWM after resetting it; CUDA: max_memory_allocated) in extra_info["peak_mb"].
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowlight_fast.ops import le_curve as ops
from lowlight_fast.reference import curve as ref

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("LOWLIGHT_FAST_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE == "cuda"
VARIANTS = ["eager", "compiled", "fused"]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _rounds(numel: int) -> int:
    if CUDA:
        return 50
    return 5 if numel >= 4_000_000 else 10


def _run(benchmark, fn, numel, nbytes, group_extra=None):
    def timed():
        out = fn()
        _sync()
        return out

    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["device"] = DEVICE
    benchmark.extra_info.update(group_extra or {})
    benchmark.pedantic(timed, rounds=_rounds(numel), warmup_rounds=2 if CUDA else 1, iterations=1)


def _curve(variant):
    if variant == "fused":
        return ops.le_curve
    if variant == "compiled":
        return torch.compile(ref.le_curve, fullgraph=True, dynamic=False)
    return ref.le_curve


def _shared(variant):
    if variant == "fused":
        return ops.le_curve_shared
    if variant == "compiled":
        return torch.compile(ref.le_curve_shared, fullgraph=True, dynamic=False)
    return ref.le_curve_shared


def _image(b, h, w, channels=3, lo=0.0, hi=1.0):
    return (torch.rand(b, channels, h, w, device=DEVICE) * (hi - lo) + lo)


ITEM = 4  # float32 bytes

# ---- forward (inference) ----

INFER = {"1080p": (1080, 1920), "4k": (2160, 3840)}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", list(INFER))
def test_forward(benchmark, size, variant):
    """Zero-DCE: x (1,3,H,W), r (1,24,H,W) -> images after 4 and 8 steps."""
    benchmark.group = f"le_curve forward {size} {DEVICE}"
    h, w = INFER[size]
    x, r = _image(1, h, w), _image(1, h, w, 24, -1, 1)
    fn = _curve(variant)
    with torch.no_grad():
        _run(benchmark, lambda: fn(x, r), x.numel(), (3 + 24 + 6) * h * w * ITEM)


@pytest.mark.parametrize("size", list(INFER))
def test_forward_copy(benchmark, size):
    """The bandwidth of this run: dst.copy_(src) of 1x27xHxW float32 into an existing tensor."""
    benchmark.group = f"le_curve forward {size} {DEVICE}"
    h, w = INFER[size]
    src = _image(1, h, w, 27)
    dst = torch.empty_like(src)
    _run(benchmark, lambda: dst.copy_(src), src.numel() // 9, 2 * src.numel() * ITEM)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", list(INFER))
def test_forward_shared_lowres(benchmark, size, variant):
    """Zero-DCE++ inference with scale factor 12: the 3-channel map at 1/12 resolution, upsampled."""
    benchmark.group = f"le_curve_shared forward {size} map/12 {DEVICE}"
    h, w = INFER[size]
    x, a = _image(1, h, w), _image(1, h // 12, w // 12, 3, -1, 1)
    fn = _shared(variant)
    with torch.no_grad():
        _run(benchmark, lambda: fn(x, a), x.numel(), (3 + 3) * h * w * ITEM)


# ---- forward + backward (training) ----

TRAIN = {"8x256": (8, 256, 256), "8x512": (8, 512, 512)}


def _fwd_bwd_curve(fn, x, r, g):
    """Zero-DCE training: the losses see the 8-step image only."""
    _, out8 = fn(x, r)
    return torch.autograd.grad(out8, (x, r), g)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", list(TRAIN))
def test_forward_backward(benchmark, size, variant):
    benchmark.group = f"le_curve forward+backward {size} {DEVICE}"
    b, h, w = TRAIN[size]
    x, r = _image(b, h, w).requires_grad_(), _image(b, h, w, 24, -1, 1).requires_grad_()
    g = torch.randn(b, 3, h, w, device=DEVICE)
    fn = _curve(variant)
    # forward reads x, r, writes 2 images; backward reads x, r, g, writes grad_x, grad_r
    nbytes = ((3 + 24 + 6) + (3 + 24 + 3 + 3 + 24)) * b * h * w * ITEM
    _run(benchmark, lambda: _fwd_bwd_curve(fn, x, r, g), x.numel(), nbytes)


# ---- what the memory system can do: a device-to-device copy of the forward's input ----


def test_copy_reference(benchmark):
    """dst.copy_(src) of 1x27x1080x1920 float32: the bandwidth the fused ops are compared with."""
    benchmark.group = f"copy {DEVICE}"
    src = torch.rand(1, 27, 1080, 1920, device=DEVICE)
    dst = torch.empty_like(src)
    _run(benchmark, lambda: dst.copy_(src), src.numel() // 9, 2 * src.numel() * ITEM)


# ---- peak memory of forward + backward at 1x3x2048x2048 ----

_PEAK = r"""
import json, sys, torch
from lowlight_fast.ops import le_curve as ops
from lowlight_fast.reference import curve as ref
variant, device = sys.argv[1], sys.argv[2]
fn = {"eager": ref.le_curve, "fused": ops.le_curve,
      "compiled": torch.compile(ref.le_curve, fullgraph=True, dynamic=False)}[variant]
H = W = 2048
x = torch.rand(1, 3, H, W, device=device).requires_grad_()
r = (torch.rand(1, 24, H, W, device=device) * 2 - 1).requires_grad_()
g = torch.randn(1, 3, H, W, device=device)
def step():
    _, out8 = fn(x, r)
    return torch.autograd.grad(out8, (x, r), g)
if variant == "compiled":
    step()  # compile first, outside the measurement
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grads = step(); torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
else:
    base = hwm_kb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size to the current one
    base = hwm_kb()
    grads = step()
    peak = (hwm_kb() - base) * 1024
grad_bytes = sum(t.numel() * t.element_size() for t in grads)  # what every method must return
print(json.dumps({"peak_mb": peak / 2**20, "peak_above_grads_mb": (peak - grad_bytes) / 2**20}))
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_peak_memory_forward_backward_2048(benchmark, variant):
    """Memory added at the peak of forward+backward over the inputs; also that peak less the gradients
    (grad_x, grad_r: 432 MiB that every method returns; grad_r alone is 384 MiB)."""
    benchmark.group = f"le_curve peak memory fwd+bwd 1x3x2048x2048 {DEVICE}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def measure():
        proc = subprocess.run([sys.executable, "-c", _PEAK, variant, DEVICE], env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    result = {}
    benchmark.pedantic(lambda: result.update(measure()), rounds=1, iterations=1)
    for key, value in result.items():
        benchmark.extra_info[key] = round(value, 1)
    benchmark.extra_info["device"] = DEVICE
    print(f"\npeak memory fwd+bwd 2048x2048 {variant} {DEVICE}: {result['peak_mb']:.1f} MiB, "
          f"{result['peak_above_grads_mb']:.1f} MiB above the returned gradients")


# ---- the table of RESULTS.md from a --benchmark-json file ----


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _table(path: str) -> str:
    """Median ms of each variant per group, ours vs compiled and eager, and (forward groups) the memory
    floor: our bytes at the bandwidth of the copy measured in the same run."""
    data = json.loads(Path(path).read_text())
    groups: dict[str, dict] = {}
    for b in data["benchmarks"]:
        name = b["name"]
        variant = "copy" if "copy" in name else name.rsplit("-", 1)[-1].rstrip("]")
        groups.setdefault(b["group"], {})[variant] = b
    rows = ["| case | eager | compiled | ours | copy | ours vs compiled | ours vs eager | floor | ours / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group, v in sorted(groups.items()):
        if "fused" not in v:
            continue
        med = {k: b["stats"]["median"] * 1e3 for k, b in v.items()}
        cells = [_ms(med[k]) if k in med else "" for k in ("eager", "compiled", "fused", "copy")]
        ratio = [f"{med[k] / med['fused']:.2f}x" if k in med else "" for k in ("compiled", "eager")]
        floor = ""
        over = ""
        if "copy" in v:
            bandwidth = v["copy"]["extra_info"]["bytes"] / med["copy"]  # bytes per ms
            floor_ms = v["fused"]["extra_info"]["bytes"] / bandwidth
            floor = f"{_ms(floor_ms)} ({bandwidth / 1e6:.1f} GB/s)"
            over = f"{med['fused'] / floor_ms:.2f}x"
        rows.append(f"| {group} | " + " | ".join(cells + ratio + [floor, over]) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", metavar="RESULT_JSON", required=True, help="a pytest --benchmark-json file")
    print(_table(parser.parse_args().table))
