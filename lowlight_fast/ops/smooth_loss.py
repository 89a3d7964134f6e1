"""``smooth_loss``: SCI's 24-direction edge-aware smoothness loss as one fused op.

Kernels: C++ on CPU (csrc/cpu/smooth_loss.cpp), CUDA C++ on GPUs (csrc/cuda/smooth_loss.cu); the math
is in csrc/common/smooth_loss.h and the pure-PyTorch reference in
:mod:`lowlight_fast.reference.sci_losses`.

Three ops in ``torch.ops.lowlight_fast``:

- ``smooth_loss(input, output, sigma, faithful) -> loss``: the value only (no gradient work).
- ``smooth_loss_with_grad(...) -> (loss, d loss/d input, d loss/d output)``: one pass; its autograd
  formula scales the saved gradients by the incoming gradient, or hands them over as they are when
  it is 1 (``ops/_saved_grad.py``). Used when a gradient is needed.
- ``smooth_loss_backward(grad, input, output, sigma, faithful) -> (grad_input, grad_output)``: the
  hand-written backward of ``smooth_loss`` (recomputes; also for callers needing only gradients).

All are deterministic: no atomics, partial sums combined in a fixed order. The loss is float32
(float64 for float64 arguments), like the original, which converts to float32; gradients have the
arguments' dtype.

One deliberate difference: the C++ kernel's faithful colour conversion is a branch-free 5-tap filter
over the flat memory, some of whose taps are 0, so an infinite value in ``input`` gives NaN where the
reference (which skips those taps) can give a finite loss. NaN in, NaN out, as in the reference.
"""
from __future__ import annotations

import math

import torch

from lowlight_fast import _validate, backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops._saved_grad import scale_saved
from lowlight_fast.reference import sci_losses as reference

__all__ = ["smooth_loss", "YCBCR_MODES"]

# ---- constants ----

YCBCR_MODES = reference.YCBCR_MODES
_OP = "smooth_loss"


# ---- checks ----


def _check(input: torch.Tensor, output: torch.Tensor, sigma: float, ycbcr: str) -> None:
    _validate.check_image(input, "input", min_size=3)
    _validate.check_image(output, "output", min_size=3)
    _validate.check_same_device(input=input, output=output)
    _validate.check_same_shape(input=input, output=output)
    _validate.check_same_dtype(input=input, output=output)
    if ycbcr not in YCBCR_MODES:
        raise ValueError(f"ycbcr: expected one of {', '.join(YCBCR_MODES)}, got {ycbcr!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma: expected a positive finite number, got {sigma!r}")


# ---- public function ----


def smooth_loss(
    input: torch.Tensor, output: torch.Tensor, sigma: float = 10.0, ycbcr: str = "faithful"
) -> torch.Tensor:
    """SCI's ``SmoothLoss``: edge-aware smoothness of ``output`` (the illumination) weighted by ``input``
    (the image) in YCbCr. Both (B, 3, H, W), H and W >= 3; returns a scalar tensor.

    ``ycbcr="faithful"`` (default) reproduces the original conversion exactly (it reads the NCHW memory
    as rows of 3 consecutive values, mixing neighbours along W); ``"per_pixel"`` converts each pixel's
    RGB. ``sigma`` is the edge scale of the weights ``exp(-|dY|^2 / (2 sigma^2))``.
    """
    _check(input, output, sigma, ycbcr)
    sigma = float(sigma)
    if backend.select(_OP, input.device, has_triton=False) == "reference":
        return reference.smooth_loss(input, output, sigma=sigma, ycbcr=ycbcr)
    faithful = ycbcr == "faithful"
    if torch.is_grad_enabled() and (input.requires_grad or output.requires_grad):
        return torch.ops.lowlight_fast.smooth_loss_with_grad(input, output, sigma, faithful)[0]
    return torch.ops.lowlight_fast.smooth_loss(input, output, sigma, faithful)


# ---- fakes ----


def _fake(input, output, sigma, faithful):
    return input.new_empty((), dtype=backend.acc_dtype(input.dtype))


def _fake_with_grad(input, output, sigma, faithful):
    return (
        input.new_empty((), dtype=backend.acc_dtype(input.dtype)),
        input.new_empty(input.shape),
        output.new_empty(output.shape),
    )


def _fake_backward(grad, input, output, sigma, faithful):
    return input.new_empty(input.shape), output.new_empty(output.shape)


# ---- autograd ----


def _setup_plain(ctx, inputs, output):
    input, out, sigma, faithful = inputs
    ctx.save_for_backward(input, out)
    ctx.sigma, ctx.faithful = sigma, faithful


def _backward_plain(ctx, grad):
    input, out = ctx.saved_tensors
    grad_input, grad_output = torch.ops.lowlight_fast.smooth_loss_backward(
        grad, input, out, ctx.sigma, ctx.faithful
    )
    return grad_input, grad_output, None, None


def _setup_with_grad(ctx, inputs, output):
    _, grad_input, grad_output = output
    ctx.mark_non_differentiable(grad_input, grad_output)
    ctx.set_materialize_grads(False)  # no full-size zero maps for the two gradient outputs
    ctx.save_for_backward(grad_input, grad_output)


def _backward_with_grad(ctx, grad, _unused_gi, _unused_go):
    if grad is None:
        return None, None, None, None
    grad_input, grad_output = ctx.saved_tensors
    return scale_saved(grad, grad_input), scale_saved(grad, grad_output), None, None


_registry.register_cpp(_OP, fake=_fake, backward=_backward_plain, setup_context=_setup_plain)
_registry.register_cpp(
    "smooth_loss_with_grad",
    fake=_fake_with_grad,
    backward=_backward_with_grad,
    setup_context=_setup_with_grad,
)
_registry.register_cpp("smooth_loss_backward", fake=_fake_backward)


# ---- Triton registration: none; on GPUs the CUDA C++ kernels run (csrc/cuda/smooth_loss.cu) ----
