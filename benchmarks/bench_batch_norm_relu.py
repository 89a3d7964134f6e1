"""Benchmarks of SCI's training layers at 1x3x400x600 (its training size), channels-last, CPU:

- batch_norm_relu (csrc/cpu/batch_norm_relu.cpp), forward + backward, against the eager reference
  (``F.relu(F.batch_norm(..., training=True))``: ATen's channels-last batch norm) and
  torch.compile(reference), for the 3-channel (illumination estimator) and 16-channel
  (self-calibration) blocks;
- the 3x3 convolutions' weight gradient: oneDNN's (``aten.convolution_backward``) against ours
  (``conv3x3_nhwc_weight_grad``), per layer shape of SCI (which one the compat step uses:
  lowlight_fast/models/sci.py ``_conv``).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_batch_norm_relu.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

ATEN_CPU_CAPABILITY=avx2 lowers our kernels' instruction-set path; ONEDNN_MAX_CPU_ISA=AVX2 oneDNN's.
"""
from __future__ import annotations

import pytest
import torch

import lowlight_fast._ext  # noqa: F401  (the ops)
from lowlight_fast.ops import batch_norm_relu as bnr

H, W = 400, 600


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("variant", ["eager", "compiled", "ours"])
@pytest.mark.parametrize("channels", [3, 16])
def test_batch_norm_relu_forward_backward(benchmark, channels, variant):
    torch.manual_seed(0)
    x = _cl(torch.randn(1, channels, H, W)).requires_grad_()
    weight = (1 + 0.02 * torch.randn(channels)).requires_grad_()
    bias = torch.zeros(channels, requires_grad=True)
    grad = _cl(torch.randn(1, channels, H, W))
    if variant == "ours":
        fn = bnr.batch_norm_relu
    else:
        fn = bnr.reference if variant == "eager" else torch.compile(bnr.reference)

    def step():
        return torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), grad)

    benchmark.group = f"BatchNorm + ReLU, training, forward + backward, 1x{channels}x{H}x{W} channels-last"
    step()
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)


@pytest.mark.parametrize("variant", ["onednn", "ours"])
@pytest.mark.parametrize("cin,cout", [(16, 16), (3, 16), (16, 3), (3, 3)], ids=lambda v: str(v))
def test_conv_weight_grad(benchmark, cin, cout, variant):
    torch.manual_seed(0)
    x = _cl(torch.rand(1, cin, H, W))
    grad = _cl(torch.randn(1, cout, H, W))
    weight = torch.randn(cout, cin, 3, 3) * 0.1
    if variant == "ours":
        def fn():
            return torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad(grad, x, None)
    else:
        def fn():
            return torch.ops.aten.convolution_backward(
                grad, x, weight, [cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, True])

    benchmark.group = f"3x3 convolution weight + bias gradient, {cin} -> {cout} channels, 1x{H}x{W} channels-last"
    fn()
    benchmark.pedantic(fn, rounds=10, warmup_rounds=1)
