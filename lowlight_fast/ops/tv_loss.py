"""tv_loss: the Zero-DCE illumination smoothness L_TV of curve maps A (B, C, H, W), fused.

L = 2 * (sum (A[y+1]-A[y])^2 / ((H-1) W) + sum (A[x+1]-A[x])^2 / (H (W-1))) / B, one pass forward and
one pass backward (hand-written), instead of the eager version's slices, temporaries and reductions.
Backends: C++ (CPU), Triton (CUDA, or CPU under TRITON_INTERPRET=1), reference (plain PyTorch).
"""
from __future__ import annotations

import torch

from lowlight_fast import _ext, _validate, backend
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


def tv_loss(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight`` * L_TV of curve maps ``x`` (B, C, H, W), H and W >= 2; a scalar of x's dtype."""
    _validate.check_image(x, "curve_maps", channels=None, min_size=2)
    which = backend.select(OP, x.device, has_triton=True)
    if which == "cpp":
        return weight * torch.ops.lowlight_fast.tv_loss(x)
    if which == "triton":
        return weight * _triton().tv_loss_triton(x)
    return reference.illumination_smoothness(x, weight)
