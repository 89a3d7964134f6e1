"""conv3x3: ``act(conv2d(cat([x, x2], 1), weight, bias, padding=1))`` for channels-last float CPU
images by Winograd's F(4x4, 3x3) (csrc/cpu/conv3x3.cpp), for the 32- and 64-channel layers of the
Zero-DCE trunk: fewer multiply-adds than oneDNN's direct kernels, the concatenation of the skip
layers read in place (never copied), bias and the activation (none, ReLU, tanh) applied as the
result is written. One op, ``torch.ops.lowlight_fast.conv3x3_nhwc(x, x2, weight, bias, activation)``
(activation 0 none, 1 ReLU, 2 tanh), output channels-last. Its tanh is computed the same way for
every element (torch.tanh's results can change from call to call by an ulp; within 1e-7 of it).

Its backward: the input gradient is the same op on the output gradient times the activation's
derivative (from the output), with the flipped, transposed weight; the weight and bias gradients
are ``conv3x3_nhwc_weight_grad(grad, x, x2)`` (:func:`weight_grad`: direct sums over channels-last
rows, 9 taps x register blocks of input x output channels, chunks of rows summed in a fixed order).

Backends: C++ (CPU, float32/float64); elsewhere (CUDA: cuDNN picks its own algorithms) and for the
reference backend, ``F.conv2d`` of the concatenation. The rounding differs from a direct
convolution's by a few units in the last place of float32 (tests/ops/test_conv3x3.py; the enhanced
images: benchmarks/RESULTS.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowlight_fast import backend
from lowlight_fast.ops import _registry

# ---- constants ----

OP = "conv3x3_nhwc"
OP_WEIGHT_GRAD = "conv3x3_nhwc_weight_grad"
ACTIVATIONS = {"none": 0, "relu": 1, "tanh": 2}

# ---- checks ----


def _check(x: torch.Tensor, x2: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"conv3x3: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if x2 is not None:
        if x2.dim() != 4 or x2.shape[0] != x.shape[0] or x2.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"conv3x3: x2 must match x {tuple(x.shape)} apart from channels, got {tuple(x2.shape)}"
            )
        if x2.device != x.device:
            raise ValueError(f"conv3x3: x2 is on {x2.device}, x on {x.device}")
        channels += x2.shape[1]
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (channels, 3, 3):
        raise ValueError(f"conv3x3: weight must be (Cout, {channels}, 3, 3), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv3x3: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def _compiled_ok(x: torch.Tensor, x2, weight, bias) -> bool:
    """Whether the C++ kernel runs: backend auto or cpp (triton has no kernel of this op: the other
    ops run in Triton, the convolutions stay ATen's, as with the reference backend)."""
    if backend.requested() not in ("auto", "cpp"):
        return False
    tensors = [t for t in (x, x2, weight, bias) if t is not None]
    return (
        x.dtype in (torch.float32, torch.float64)
        and all(t.dtype == x.dtype and t.device == x.device for t in tensors)
        and backend.select(OP, x.device, has_triton=False) == "cpp"
        and not torch.is_autocast_enabled("cpu")
    )


# ---- public function ----


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x2: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """``conv2d(cat([x, x2], 1), weight, bias, stride=1, padding=1)``, then ``activation``: "none",
    "relu" or "tanh".

    On the CPU (float32/float64) the Winograd kernel runs (direct sums for up to 4 input channels from
    one tensor) and the result is channels-last; elsewhere,
    or with ``LOWLIGHT_FAST_BACKEND=reference`` or ``triton``, ``F.conv2d`` of the concatenation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv3x3: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    _check(x, x2, weight, bias)
    if x.device.type == "cpu" and _compiled_ok(x, x2, weight, bias):
        return torch.ops.lowlight_fast.conv3x3_nhwc(x, x2, weight, bias, ACTIVATIONS[activation])
    return reference(x, weight, bias, x2=x2, activation=activation)


def reference(x, weight, bias=None, *, x2=None, activation="none"):
    """The plain-PyTorch version: ``F.conv2d`` of the concatenation, then the activation."""
    y = F.conv2d(x if x2 is None else torch.cat([x, x2], 1), weight, bias, 1, 1)
    if activation == "relu":
        return F.relu(y)
    return torch.tanh(y) if activation == "tanh" else y


# ---- fakes ----


def _fake(x, x2, weight, bias, activation):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3])).contiguous(
        memory_format=torch.channels_last
    )


# ---- autograd ----


def _setup(ctx, inputs, output):
    x, x2, weight, bias, activation = inputs
    ctx.activation = activation
    ctx.has_x2 = x2 is not None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, x2, weight, output if activation else None)


def _backward(ctx, grad):
    x, x2, weight, out = ctx.saved_tensors
    if ctx.activation == ACTIVATIONS["relu"]:
        grad = grad * (out > 0)
    elif ctx.activation == ACTIVATIONS["tanh"]:
        grad = grad * (1 - out * out)
    need_x, need_x2, need_w, need_b = ctx.needs_input_grad[:4]
    grad_x = grad_x2 = grad_w = grad_b = None
    if need_x or need_x2:
        # conv_transpose2d(g, w, padding=1) == conv2d(g, w flipped and transposed, padding=1)
        g_in = torch.ops.lowlight_fast.conv3x3_nhwc(
            grad.contiguous(memory_format=torch.channels_last),
            None,
            weight.flip(2, 3).transpose(0, 1).contiguous(),
            None,
            False,
        )
        grad_x = g_in[:, : x.shape[1]] if need_x else None
        grad_x2 = g_in[:, x.shape[1] :] if ctx.has_x2 and need_x2 else None
    if need_w or need_b:
        grad_w, grad_b = torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad(grad, x, x2)
        grad_w = grad_w if need_w else None
    return grad_x, grad_x2, grad_w, grad_b if ctx.has_bias else None, None


_registry.register_cpp(OP, fake=_fake, backward=_backward, setup_context=_setup)


def _fake_weight_grad(grad, x, x2):
    cin = x.shape[1] + (x2.shape[1] if x2 is not None else 0)
    return grad.new_empty((grad.shape[1], cin, 3, 3)), grad.new_empty((grad.shape[1],))


_registry.register_cpp(OP_WEIGHT_GRAD, fake=_fake_weight_grad)


def weight_grad(grad: torch.Tensor, x: torch.Tensor, x2: torch.Tensor | None = None):
    """(weight gradient, bias gradient) of ``conv3x3(x, weight, bias, x2=x2)`` for the output gradient
    ``grad`` (any layout; channels-last reads in place): on the CPU (float32/float64) our kernel, direct
    sums over channels-last rows (no copies to NCHW, no im2col); elsewhere ATen's convolution
    backward."""
    _check(x, x2, torch.empty((1, x.shape[1] + (0 if x2 is None else x2.shape[1]), 3, 3), device="meta"), None)
    if grad.dim() != 4 or grad.shape[0] != x.shape[0] or grad.shape[2:] != x.shape[2:]:
        raise ValueError(f"conv3x3: grad must match x {tuple(x.shape)} apart from channels, got {tuple(grad.shape)}")
    if x.device.type == "cpu" and _compiled_ok(x, x2, grad, None):
        return torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad(grad, x, x2)
    return reference_weight_grad(grad, x, x2)


def reference_weight_grad(grad, x, x2=None):
    """:func:`weight_grad` by ``aten.convolution_backward``."""
    full = x if x2 is None else torch.cat([x, x2], 1)
    weight = grad.new_empty((grad.shape[1], full.shape[1], 3, 3))
    _, gw, gb = torch.ops.aten.convolution_backward(
        grad, full, weight, [grad.shape[1]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, True]
    )
    return gw, gb


# ---- export ----


_NAMES = {code: name for name, code in ACTIVATIONS.items()}


def _decomposed(x, x2, weight, bias, activation):
    return reference(x, weight, bias, x2=x2, activation=_NAMES[activation])


def export_decompositions() -> dict:
    """``conv3x3_nhwc`` as ``F.conv2d`` of the concatenation, for exporters that need standard operators
    (see :func:`lowlight_fast.ops.le_curve.export_decompositions`)."""
    ops = torch.ops.lowlight_fast
    return {ops.conv3x3_nhwc.default: _decomposed} if hasattr(ops, OP) else {}
