"""Benchmarks of conv3x3 (Winograd F(4x4, 3x3), csrc/cpu/conv3x3.cpp) on Zero-DCE's layers at
720x680 (the photographs of bench_enhance.py): the eager reference (oneDNN, channels-last, the
concatenation copied, then ReLU or tanh), torch.compile(reference), ours; and the whole inference
trunk (to the tanh-bounded curve maps).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_conv3x3.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

CPU only (on CUDA conv3x3 is cuDNN's convolution). ATEN_CPU_CAPABILITY=avx2 lowers our kernels'
instruction-set path, not oneDNN's (ONEDNN_MAX_CPU_ISA=AVX2 does that).
"""
from __future__ import annotations

import pytest
import torch

from lowlight_fast.models._common import dce_trunk, dce_trunk_winograd, inference_layout
from lowlight_fast.models.zerodce import ZeroDCE
from lowlight_fast.ops import conv3x3 as ops

H, W = 720, 680
# (layer, input channels of each part, output channels)
LAYERS = [("e_conv2", (32,), 32), ("e_conv5", (32, 32), 32), ("e_conv7", (32, 32), 24)]
VARIANTS = ["eager", "compiled", "ours"]


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layer,parts,cout", LAYERS, ids=[name for name, _, _ in LAYERS])
def test_layer(benchmark, layer, parts, cout, variant):
    torch.manual_seed(0)
    xs = [_cl(torch.rand(1, c, H, W)) for c in parts]
    weight = torch.randn(cout, sum(parts), 3, 3) / (3 * sum(parts) ** 0.5)
    bias = torch.randn(cout)
    activation = "tanh" if layer == "e_conv7" else "relu"
    x2 = xs[1] if len(xs) > 1 else None
    if variant == "ours":
        fn = lambda: ops.conv3x3(xs[0], weight, bias, x2=x2, activation=activation)  # noqa: E731
    else:
        ref = ops.reference if variant == "eager" else torch.compile(ops.reference)
        fn = lambda: ref(xs[0], weight, bias, x2=x2, activation=activation)  # noqa: E731
    benchmark.group = f"{layer} 1x{sum(parts)}x{H}x{W} -> {cout}"
    benchmark.extra_info["gflop"] = 2 * sum(parts) * cout * 9 * H * W / 1e9
    with torch.no_grad():
        fn()
        benchmark.pedantic(fn, rounds=10, warmup_rounds=1)


@pytest.mark.parametrize("variant", ["eager", "compiled", "ours"])
def test_trunk(benchmark, variant):
    torch.manual_seed(0)
    m = ZeroDCE().eval()
    x = torch.rand(1, 3, H, W) * 0.4
    if variant == "ours":
        fn = lambda: dce_trunk_winograd(m, x)  # noqa: E731
    else:
        trunk = dce_trunk if variant == "eager" else torch.compile(dce_trunk)
        fn = lambda: torch.tanh(trunk(m, inference_layout(x)))  # noqa: E731
    benchmark.group = f"Zero-DCE trunk 1x3x{H}x{W}"
    with torch.no_grad():
        fn()
        benchmark.pedantic(fn, rounds=8, warmup_rounds=1)
