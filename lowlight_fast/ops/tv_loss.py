"""tv_loss: the Zero-DCE illumination smoothness L_TV of curve maps A (B, C, H, W), fused.

L = 2 * (sum (A[y+1]-A[y])^2 / ((H-1) W) + sum (A[x+1]-A[x])^2 / (H (W-1))) / B, instead of the eager
version's slices, temporaries and reductions. Three ops in ``torch.ops.lowlight_fast``:

- ``tv_loss(x) -> L``: the value, one read of A.
- ``tv_loss_with_grad(x, weight) -> (weight L, weight dL/dA)`` (CPU): value and gradient in one pass
  over A; its backward scales the saved gradient, or hands it over as it is when the incoming gradient
  is 1 (``ops/_saved_grad.py``). Used on the CPU whenever a gradient is needed: forward + backward
  is then one read of A and one write of dA, where a recomputing backward reads A twice.
- ``tv_loss_backward(grad, x) -> dA``: the hand-written backward of ``tv_loss`` (recomputes).

Backends: C++ (CPU), Triton (CUDA, or CPU under TRITON_INTERPRET=1: ``tv_loss_triton`` with a
recomputing backward, as a GPU reads A far faster than the CPU; kernels in ops/triton/tv_loss.py),
reference (plain PyTorch).
"""
from __future__ import annotations

import torch

from lowlight_fast import _validate, backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops._saved_grad import scale_saved
from lowlight_fast.reference import zerodce_losses as reference

# ---- constants ----

OP = "tv_loss"


# ---- checks ----


def _check(x: torch.Tensor) -> None:
    _validate.check_image(x, "curve_maps", channels=None, min_size=2)


# ---- public function ----


def tv_loss(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight`` * L_TV of curve maps ``x`` (B, C, H, W), H and W >= 2; a scalar of x's dtype."""
    _check(x)
    which = backend.select(OP, x.device, has_triton=True)
    if which == "cpp":
        if torch.is_grad_enabled() and x.requires_grad and isinstance(weight, (int, float)):
            return torch.ops.lowlight_fast.tv_loss_with_grad(x, float(weight))[0]
        return weight * torch.ops.lowlight_fast.tv_loss(x)
    if which == "triton":
        _registry.use_triton(OP)
        return weight * torch.ops.lowlight_fast.tv_loss_triton(x)
    return reference.illumination_smoothness(x, weight)


# ---- fakes (the C++ and the Triton ops alike) ----


def _fake(x):
    return x.new_empty(())


def _fake_backward(grad, x):
    return x.new_empty(x.shape)


def _fake_with_grad(x, weight):
    return x.new_empty(()), x.new_empty(x.shape)


# ---- autograd ----


def _save_input(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _recomputing_backward(backward_op: str):
    """The backward of ``tv_loss`` or ``tv_loss_triton``: their backward op, from the saved input."""

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return getattr(torch.ops.lowlight_fast, backward_op)(grad, x)

    return backward


def _setup_with_grad(ctx, inputs, output):
    grad_x = output[1]
    ctx.mark_non_differentiable(grad_x)
    ctx.set_materialize_grads(False)  # no full-size zero map for the gradient output
    ctx.save_for_backward(grad_x)


def _backward_with_grad(ctx, grad, _unused):
    if grad is None:
        return None, None
    (grad_x,) = ctx.saved_tensors
    return scale_saved(grad, grad_x), None


_registry.register_cpp(
    "tv_loss", fake=_fake, backward=_recomputing_backward("tv_loss_backward"), setup_context=_save_input
)
_registry.register_cpp("tv_loss_backward", fake=_fake_backward)
_registry.register_cpp(
    "tv_loss_with_grad", fake=_fake_with_grad, backward=_backward_with_grad, setup_context=_setup_with_grad
)


# ---- Triton registration ----


@_registry.triton_registration(OP)
def _register_triton(kernels):
    _registry.define_triton("tv_loss_triton_backward", kernels.tv_loss_backward, fake=_fake_backward)
    _registry.define_triton(
        "tv_loss_triton",
        kernels.tv_loss,
        fake=_fake,
        backward=_recomputing_backward("tv_loss_triton_backward"),
        setup_context=_save_input,
    )
