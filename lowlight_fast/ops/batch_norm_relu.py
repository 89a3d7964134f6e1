"""batch_norm_relu: ``relu(batch_norm(x, ..., training=True))`` for channels-last float CPU images, in
one op forward and one backward (csrc/cpu/batch_norm_relu.cpp), for SCI's conv -> BatchNorm2d -> ReLU
blocks in training. ATen's channels-last batch norm walks the C channels of every pixel in a loop of
its own, slow for SCI's 3-channel block; this op reads the tensor as one flat array with a
coefficient pattern per 16-lane block, whatever C is, and applies the ReLU as it writes (its backward
recomputes the mask from x: the output is not read again).

``torch.ops.lowlight_fast.batch_norm_relu_nhwc(x, weight, bias, eps) -> (y, mean, var)``: the batch's
mean and biased variance per channel (not differentiable; the running statistics are updated from
them by :func:`batch_norm_relu`, as ``F.batch_norm`` does). Backward:
``batch_norm_relu_nhwc_backward(grad, x, weight, bias, mean, var, eps) -> (grad_x, grad_weight, grad_bias)``.

Backends: C++ (CPU, float32/float64); elsewhere (CUDA: cuDNN), for the reference backend and under
autocast, ``F.batch_norm`` then ``F.relu``. Sums run in float64: within a few float32 ulps of ATen's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowlight_fast import backend
from lowlight_fast.ops import _registry

# ---- constants ----

OP = "batch_norm_relu_nhwc"
OP_BACKWARD = "batch_norm_relu_nhwc_backward"

# ---- checks ----


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"batch_norm_relu: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dim() != 1 or t.shape[0] != x.shape[1]:
            raise ValueError(f"batch_norm_relu: {name} must be ({x.shape[1]},), got {tuple(t.shape)}")
    if x.numel() // max(x.shape[1], 1) <= 1:
        raise ValueError(
            f"batch_norm_relu: expected more than 1 value per channel in training, got input of shape {tuple(x.shape)}"
        )


def _compiled_ok(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether the C++ kernel runs: backend auto or cpp, CPU float32/float64 tensors, no autocast."""
    if backend.requested() not in ("auto", "cpp"):
        return False
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and all(t.dtype == x.dtype and t.device == x.device for t in (weight, bias))
        and backend.select(OP, x.device, has_triton=False) == "cpp"
        and not torch.is_autocast_enabled("cpu")
    )


# ---- public function ----


def batch_norm_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``relu(F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum, eps))``:
    normalised with the batch's statistics; the running statistics, when given, updated in place as
    ``F.batch_norm`` updates them (the unbiased variance). On the CPU (float32/float64) the fused
    kernel runs and the result is channels-last."""
    _check(x, weight, bias)
    if not _compiled_ok(x, weight, bias):
        return reference(x, weight, bias, running_mean, running_var, momentum, eps)
    y, mean, var = torch.ops.lowlight_fast.batch_norm_relu_nhwc(x, weight, bias, eps)
    if running_mean is not None or running_var is not None:
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                running_var.mul_(1 - momentum).add_(var.to(running_var.dtype) * (n / (n - 1)), alpha=momentum)
    return y


def reference(x, weight, bias, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
    """The plain-PyTorch version: ``F.batch_norm`` in training mode, then ``F.relu``."""
    return F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps))


def fuses(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> bool:
    """True when :func:`batch_norm_relu_module` runs the fused op on ``x`` (whose output no autograd
    node keeps: the op saves its input and recomputes the ReLU's mask)."""
    batch_stats = bn.training or bn.running_mean is None
    return bool(batch_stats and bn.affine and _compiled_ok(x, bn.weight, bn.bias))


def batch_norm_relu_module(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(x))`` for a BatchNorm module, with the module's own bookkeeping (num_batches_tracked,
    momentum None as a cumulative average, track_running_stats): the fused op where it runs and the
    module normalises with batch statistics (training, or no running statistics), else ``bn`` then an
    in-place ReLU."""
    if not fuses(bn, x):
        return torch.relu_(bn(x))
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    track = bn.training and bn.track_running_stats
    return batch_norm_relu(
        x, bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None, factor, bn.eps
    )


# ---- fakes ----


def _fake(x, weight, bias, eps):
    y = x.new_empty(x.shape).contiguous(memory_format=torch.channels_last)
    return y, x.new_empty((x.shape[1],)), x.new_empty((x.shape[1],))


# ---- autograd ----


def _setup(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, var = output
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)


def _backward(ctx, grad, _grad_mean, _grad_var):
    x, weight, bias, mean, var = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.lowlight_fast.batch_norm_relu_nhwc_backward(
        grad, x, weight, bias, mean, var, ctx.eps
    )
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    return grad_x if need_x else None, grad_w if need_w else None, grad_b if need_b else None, None


_registry.register_cpp(OP, fake=_fake, backward=_backward, setup_context=_setup)


def _fake_backward(grad, x, weight, bias, mean, var, eps):
    return x.new_empty(x.shape).contiguous(memory_format=torch.channels_last), weight.new_empty(
        weight.shape
    ), bias.new_empty(bias.shape)


_registry.register_cpp(OP_BACKWARD, fake=_fake_backward)


# ---- export ----


def _decomposed(x, weight, bias, eps):
    dims = (0, 2, 3)
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    return reference(x, weight, bias, eps=eps), mean, var


def export_decompositions() -> dict:
    """``batch_norm_relu_nhwc`` in standard operators, for exporters (see
    :func:`lowlight_fast.ops.le_curve.export_decompositions`)."""
    ops = torch.ops.lowlight_fast
    return {ops.batch_norm_relu_nhwc.default: _decomposed} if hasattr(ops, OP) else {}
