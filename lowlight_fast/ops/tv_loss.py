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
recomputing backward, as a GPU reads A far faster than the CPU), reference (plain PyTorch).
"""
from __future__ import annotations

import torch

from lowlight_fast import _ext, _validate, backend
from lowlight_fast.ops._saved_grad import scale_saved
from lowlight_fast.reference import zerodce_losses as reference

OP = "tv_loss"

def _triton():
    """The Triton kernels and their ops, imported on first use (importing triton takes seconds)."""
    from lowlight_fast.ops.triton import tv_loss as kernels

    return kernels

if _ext.has_op(OP):

    @torch.library.register_fake("lowlight_fast::tv_loss")
    def _tv_loss_fake(x):
        return x.new_empty(())

    @torch.library.register_fake("lowlight_fast::tv_loss_backward")
    def _tv_loss_backward_fake(grad, x):
        return x.new_empty(x.shape)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def _backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.lowlight_fast.tv_loss_backward(grad, x)

    torch.library.register_autograd("lowlight_fast::tv_loss", _backward, setup_context=_setup_context)

    @torch.library.register_fake("lowlight_fast::tv_loss_with_grad")
    def _tv_loss_with_grad_fake(x, weight):
        return x.new_empty(()), x.new_empty(x.shape)

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

    torch.library.register_autograd(
        "lowlight_fast::tv_loss_with_grad", _backward_with_grad, setup_context=_setup_with_grad
    )


def tv_loss(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight`` * L_TV of curve maps ``x`` (B, C, H, W), H and W >= 2; a scalar of x's dtype."""
    _validate.check_image(x, "curve_maps", channels=None, min_size=2)
    which = backend.select(OP, x.device, has_triton=True)
    if which == "cpp":
        if torch.is_grad_enabled() and x.requires_grad and isinstance(weight, (int, float)):
            return torch.ops.lowlight_fast.tv_loss_with_grad(x, float(weight))[0]
        return weight * torch.ops.lowlight_fast.tv_loss(x)
    if which == "triton":
        return weight * _triton().tv_loss_triton(x)
    return reference.illumination_smoothness(x, weight)
