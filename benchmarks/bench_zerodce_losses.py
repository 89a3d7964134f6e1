"""Zero-DCE losses forward + backward: eager reference, torch.compile(reference) and the fused ops.

Timing (pytest-benchmark, one group per loss and shape):
    PYTHONPATH=$PWD python -m pytest benchmarks/bench_zerodce_losses.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-sort=name
Peak memory (a fresh subprocess per case, extra peak RSS over the inputs):
    PYTHONPATH=$PWD python benchmarks/bench_zerodce_losses.py --memory

Groups:
- ``total``: the whole Zero-DCE training loss, 200 L_TV(A) + mean L_spa + 5 mean L_color + 10 L_exp,
  gradients to the enhanced image and the 24-channel curve maps A (the low image is the network
  input: no gradient), as in training.
- ``spa+col+exp``: the three losses on (low, enhanced) only (zerodce_pooled and the small maps).
- ``tv``: 200 L_TV on the 24-channel curve maps only.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

from lowlight_fast import use_backend
from lowlight_fast.ops import zerodce_losses as fused
from lowlight_fast.ops.tv_loss import tv_loss
from lowlight_fast.reference import zerodce_losses as ref

SHAPES = [(8, 3, 256, 256), (8, 3, 512, 512), (1, 3, 1080, 1920)]
IMPLS = ["eager_reference", "compiled_reference", "ours"]
LOSSES = ["total", "spa+col+exp", "tv"]


def _ref_total(low, enhanced, curves):
    return ref.zerodce_loss(low, enhanced, curves)


def _ref_pooled(low, enhanced, curves):
    return (
        torch.mean(ref.spatial_consistency(enhanced, low))
        + ref.COLOR_WEIGHT * torch.mean(ref.color_constancy(enhanced))
        + ref.EXP_WEIGHT * ref.exposure(enhanced, ref.EXP_PATCH, ref.EXP_MEAN)
    )


def _ref_tv(low, enhanced, curves):
    return ref.ZERODCE_TV_WEIGHT * ref.illumination_smoothness(curves)


def _ours_total(low, enhanced, curves):
    return fused.zerodce_loss(low, enhanced, curves)


def _ours_pooled(low, enhanced, curves):
    spa, col, exp = fused.pooled_losses(*fused.pooled_stats(enhanced, low))
    return spa + ref.COLOR_WEIGHT * col + ref.EXP_WEIGHT * exp


def _ours_tv(low, enhanced, curves):
    return tv_loss(curves, ref.ZERODCE_TV_WEIGHT)


_REFERENCE = {"total": _ref_total, "spa+col+exp": _ref_pooled, "tv": _ref_tv}
_OURS = {"total": _ours_total, "spa+col+exp": _ours_pooled, "tv": _ours_tv}
_COMPILED = {k: torch.compile(f, dynamic=False) for k, f in _REFERENCE.items()}


def _loss_fn(impl: str, loss: str):
    if impl == "eager_reference":
        return _REFERENCE[loss]
    if impl == "compiled_reference":
        return _COMPILED[loss]
    return _OURS[loss]


def _inputs(shape, loss: str):
    g = torch.Generator().manual_seed(0)
    low = torch.rand(shape, generator=g) * 0.3
    enhanced = torch.rand(shape, generator=g).requires_grad_(loss != "tv")
    curves = (torch.rand((shape[0], 24, *shape[2:]), generator=g) - 0.5).requires_grad_(loss != "spa+col+exp")
    return low, enhanced, curves


def _step(fn, low, enhanced, curves):
    enhanced.grad = None
    curves.grad = None
    fn(low, enhanced, curves).backward()


def _rounds(impl: str, shape) -> int:
    return 3 if impl == "eager_reference" else 5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_zerodce_losses_fwd_bwd(benchmark, shape, loss, impl):
    benchmark.group = f"{loss} fwd+bwd " + "x".join(map(str, shape))
    inputs = _inputs(shape, loss)
    fn = _loss_fn(impl, loss)
    with use_backend("auto" if impl == "ours" else "reference"):
        _step(fn, *inputs)  # compiles torch.compile's graph
        # Steady state, as in training: on our VM the first large allocations of a process take several
        # times longer than later ones (the host backs the guest's memory on first use).
        benchmark.pedantic(_step, args=(fn, *inputs), rounds=_rounds(impl, shape), iterations=1, warmup_rounds=2)


# --- peak memory -----------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_one(impl: str, shape, loss: str = "total") -> None:
    inputs = _inputs(shape, loss)
    fn = _loss_fn(impl, loss)
    with use_backend("auto" if impl == "ours" else "reference"):
        if impl == "compiled_reference":
            _step(fn, *inputs)  # compile first; its memory is not the loss's
        inputs[1].grad = inputs[2].grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak RSS (VmHWM)
            f.write("5")
        before = _rss_kib("VmRSS")
        _step(fn, *inputs)
        peak = _rss_kib("VmHWM")
    image_mib = inputs[0].numel() * inputs[0].element_size() / 2**20
    print(f"{(peak - before) / 1024:.1f} {image_mib:.2f}")


def measure_memory() -> None:
    print("| shape | implementation | extra peak RSS (MiB) | in 3-channel float32 images |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        for impl in IMPLS:
            code = (
                "import sys; sys.argv=['x']; import benchmarks.bench_zerodce_losses as b; "
                f"b._measure_one({impl!r}, {shape!r})"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
            if res.returncode != 0:
                print(f"| {shape} | {impl} | failed: {res.stderr.strip().splitlines()[-1]} | |")
                continue
            extra, image_mib = map(float, res.stdout.split()[-2:])
            print(f"| {'x'.join(map(str, shape))} | {impl} | {extra:.0f} | {extra / image_mib:.1f} |")


if __name__ == "__main__":
    if "--memory" in sys.argv:
        measure_memory()
    else:
        print(__doc__)
