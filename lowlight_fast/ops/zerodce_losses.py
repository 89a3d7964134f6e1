"""zerodce_pooled: one read of (enhanced, low) gives what L_spa, L_exp and L_color need, and the Zero-DCE
losses computed from it.

``pooled_stats(enhanced, low)`` returns the 4x4-pooled channel means of both images, (B, 1, H//4, W//4),
and the channel means of ``enhanced``, (B, 3) (AvgPool2d floor semantics: rows and columns beyond the
last whole cell are left out of the pools, never out of the channel means). Its backward writes
d enhanced (and d low when that is needed) in one pass. Everything after it works on maps 16x smaller
than one channel: L_spa's zero-padded neighbour differences, the 16x16 exposure pool (the 4x4 average
of the 4x4 pool: floor(floor(H/4)/4) = floor(H/16)), L_color from the channel means. On the CPU that
part is one C++ op, ``zerodce_pooled_losses`` (with its backward); elsewhere a few PyTorch ops.

Backends: C++ (CPU), Triton (CUDA, or CPU under TRITON_INTERPRET=1; kernels in ops/triton/zerodce_losses.py),
reference (plain PyTorch).

One deliberate difference: where an image's three channel means are exactly equal, L_color is
sqrt(0) and the original's gradient is NaN; the C++ op gives 0 there (the PyTorch path keeps the NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowlight_fast import _ext, _validate, backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops.tv_loss import tv_loss
from lowlight_fast.reference import zerodce_losses as reference

# ---- constants ----

OP = "zerodce_pooled"
LOSSES_OP = "zerodce_pooled_losses"
POOL = reference.SPA_POOL


# ---- checks ----


def _check_pair(enhanced: torch.Tensor, low: torch.Tensor, names: tuple[str, str]) -> None:
    first, second = names
    _validate.check_image(enhanced, first, min_size=POOL)
    _validate.check_image(low, second, min_size=POOL)
    pair = {first: enhanced, second: low}
    _validate.check_same_device(**pair)
    _validate.check_same_shape(**pair)
    _validate.check_same_dtype(**pair)


def check_loss_inputs(low, enhanced, curve_maps, exp_patch: int) -> None:
    """The checks of the combined Zero-DCE loss (its exposure pool needs images of exp_patch pixels)."""
    if not isinstance(exp_patch, int) or exp_patch < POOL or exp_patch % POOL:
        raise ValueError(f"exp_patch: the fused exposure pool needs a multiple of 4, got {exp_patch!r}")
    _validate.check_image(low, "low", min_size=exp_patch)
    _validate.check_image(enhanced, "enhanced", min_size=exp_patch)
    _validate.check_image(curve_maps, "curve_maps", channels=None, min_size=2)
    _validate.check_same_device(low=low, enhanced=enhanced, curve_maps=curve_maps)
    _validate.check_same_shape(low=low, enhanced=enhanced)
    _validate.check_same_dtype(low=low, enhanced=enhanced)


# ---- public functions ----


def _pooled_reference(enhanced: torch.Tensor, low: torch.Tensor):
    return (
        F.avg_pool2d(enhanced.mean(dim=1, keepdim=True), POOL),
        F.avg_pool2d(low.mean(dim=1, keepdim=True), POOL),
        enhanced.mean(dim=(2, 3)),
    )


def pooled_stats(enhanced: torch.Tensor, low: torch.Tensor, *, names: tuple[str, str] = ("enhanced", "low")):
    """(4x4-pooled channel mean of enhanced, the same of low, channel means of enhanced (B, 3)).
    ``names`` are the argument names that error messages use."""
    _check_pair(enhanced, low, names)
    return _run_pooled(_backend_for(enhanced), enhanced, low)


def _backend_for(enhanced: torch.Tensor) -> str:
    return backend.select(OP, enhanced.device, has_triton=True)


def _run_pooled(which: str, enhanced: torch.Tensor, low: torch.Tensor):
    if which == "cpp":
        return torch.ops.lowlight_fast.zerodce_pooled(enhanced, low)
    if which == "triton":
        _registry.use_triton("zerodce_losses")
        return torch.ops.lowlight_fast.zerodce_pooled_triton(enhanced, low)
    return _pooled_reference(enhanced, low)


def spatial_from_pooled(pooled_org: torch.Tensor, pooled_enhance: torch.Tensor) -> torch.Tensor:
    """L_spa's map from the two pooled maps: with q = org - enhance, sum over the 4 neighbours of
    (q - q_neighbour)^2, a neighbour outside the map counting as 0. (B, 1, H//4, W//4)."""
    q = F.pad(pooled_org - pooled_enhance, (1, 1, 1, 1))
    centre = q[..., 1:-1, 1:-1]
    return (
        (centre - q[..., 1:-1, :-2]) ** 2
        + (centre - q[..., 1:-1, 2:]) ** 2
        + (centre - q[..., :-2, 1:-1]) ** 2
        + (centre - q[..., 2:, 1:-1]) ** 2
    )


def exposure_from_pooled(pooled: torch.Tensor, patch_size: int, mean_val) -> torch.Tensor:
    """L_exp from the 4x4-pooled channel mean: its (patch_size/4)-pool is the patch_size pool (floor)."""
    return torch.mean((F.avg_pool2d(pooled, patch_size // POOL) - mean_val) ** 2)


def color_from_means(means: torch.Tensor) -> torch.Tensor:
    """L_color from the channel means (B, 3): (B, 1, 1, 1)."""
    mr, mg, mb = means[:, 0], means[:, 1], means[:, 2]
    d_rg = (mr - mg) ** 2
    d_rb = (mr - mb) ** 2
    d_gb = (mb - mg) ** 2
    return torch.sqrt(d_rg**2 + d_rb**2 + d_gb**2).reshape(-1, 1, 1, 1)


def spatial_consistency(org: torch.Tensor, enhance: torch.Tensor) -> torch.Tensor:
    """L_spa(org, enhance), fused: (B, 1, H//4, W//4). Needs H, W >= 4."""
    pooled_org, pooled_enhance, _ = pooled_stats(org, enhance, names=("org", "enhance"))
    return spatial_from_pooled(pooled_org, pooled_enhance)


def zerodce_loss_terms(
    low: torch.Tensor,
    enhanced: torch.Tensor,
    curve_maps: torch.Tensor,
    tv_weight: float = reference.ZERODCE_TV_WEIGHT,
    *,
    exp_patch: int = reference.EXP_PATCH,
    exp_mean: float = reference.EXP_MEAN,
) -> dict[str, torch.Tensor]:
    """The weighted Zero-DCE loss terms {tv, spa, col, exp} with the fused ops (see
    :func:`lowlight_fast.reference.zerodce_losses.zerodce_loss_terms`)."""
    check_loss_inputs(low, enhanced, curve_maps, exp_patch)
    which = _backend_for(enhanced)
    stats = _run_pooled(which, enhanced, low)
    spa, col, exp = pooled_losses(*stats, exp_patch, exp_mean, use_cpp=which == "cpp")
    return {
        "tv": tv_loss(curve_maps, tv_weight),
        "spa": spa,
        "col": reference.COLOR_WEIGHT * col,
        "exp": reference.EXP_WEIGHT * exp,
    }


def pooled_losses(
    pooled_enhanced: torch.Tensor,
    pooled_low: torch.Tensor,
    channel_means: torch.Tensor,
    exp_patch: int = reference.EXP_PATCH,
    exp_mean: float = reference.EXP_MEAN,
    *,
    use_cpp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean L_spa(enhanced, low), mean L_color(enhanced), L_exp(enhanced)), unweighted, from the outputs
    of :func:`pooled_stats`. On the CPU one C++ op (``zerodce_pooled_losses``, one image per task over the small
    maps); elsewhere, or with ``use_cpp=False``, a few PyTorch ops on the small maps."""
    if use_cpp and pooled_enhanced.device.type == "cpu" and _ext.has_op(LOSSES_OP):
        return torch.ops.lowlight_fast.zerodce_pooled_losses(
            pooled_enhanced, pooled_low, channel_means, exp_patch, float(exp_mean)
        )
    return (
        torch.mean(spatial_from_pooled(pooled_enhanced, pooled_low)),
        torch.mean(color_from_means(channel_means)),
        exposure_from_pooled(pooled_enhanced, exp_patch, exp_mean),
    )


def zerodce_loss(
    low: torch.Tensor,
    enhanced: torch.Tensor,
    curve_maps: torch.Tensor,
    tv_weight: float = reference.ZERODCE_TV_WEIGHT,
) -> torch.Tensor:
    """The Zero-DCE total training loss with the fused ops (Zero-DCE++ with tv_weight=1600)."""
    t = zerodce_loss_terms(low, enhanced, curve_maps, tv_weight)
    return t["tv"] + t["spa"] + t["col"] + t["exp"]


# ---- fakes (the C++ and the Triton ops alike) ----


def _pooled_fake(enhanced, low):
    batch, _, height, width = enhanced.shape
    pooled = (batch, 1, height // POOL, width // POOL)
    return enhanced.new_empty(pooled), enhanced.new_empty(pooled), enhanced.new_empty((batch, 3))


def _pooled_backward_fake(
    grad_pooled_enhanced, grad_pooled_low, grad_channel_means, enhanced, low_requires_grad
):
    shape = tuple(enhanced.shape)
    return enhanced.new_empty(shape), enhanced.new_empty(shape if low_requires_grad else (0,))


def _losses_fake(pooled_enhanced, pooled_low, channel_means, exp_patch, exp_mean):
    return pooled_enhanced.new_empty(()), pooled_enhanced.new_empty(()), pooled_enhanced.new_empty(())


def _losses_backward_fake(
    grad_spa, grad_col, grad_exp, pooled_enhanced, pooled_low, channel_means, exp_patch, exp_mean
):
    return (
        pooled_enhanced.new_empty(pooled_enhanced.shape),
        pooled_enhanced.new_empty(pooled_enhanced.shape),
        channel_means.new_empty(channel_means.shape),
    )


# ---- autograd ----


def _save_enhanced(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _pooled_backward(backward_op: str):
    """The backward of ``zerodce_pooled`` or ``zerodce_pooled_triton``: their backward op, which writes
    d low only when low needs it."""

    def backward(ctx, grad_pooled_enhanced, grad_pooled_low, grad_channel_means):
        (enhanced,) = ctx.saved_tensors
        low_requires_grad = bool(ctx.needs_input_grad[1])
        grad_enhanced, grad_low = getattr(torch.ops.lowlight_fast, backward_op)(
            grad_pooled_enhanced, grad_pooled_low, grad_channel_means, enhanced, low_requires_grad
        )
        return grad_enhanced, (grad_low if low_requires_grad else None)

    return backward


def _losses_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.exp_patch, ctx.exp_mean = inputs[3], inputs[4]


def _losses_backward(ctx, grad_spa, grad_col, grad_exp):
    grads = torch.ops.lowlight_fast.zerodce_pooled_losses_backward(
        grad_spa, grad_col, grad_exp, *ctx.saved_tensors, ctx.exp_patch, ctx.exp_mean
    )
    return (*grads, None, None)


_registry.register_cpp(
    OP, fake=_pooled_fake, backward=_pooled_backward("zerodce_pooled_backward"), setup_context=_save_enhanced
)
_registry.register_cpp("zerodce_pooled_backward", fake=_pooled_backward_fake)
_registry.register_cpp(
    LOSSES_OP, fake=_losses_fake, backward=_losses_backward, setup_context=_losses_setup_context
)
_registry.register_cpp("zerodce_pooled_losses_backward", fake=_losses_backward_fake)


# ---- Triton registration ----


@_registry.triton_registration("zerodce_losses")
def _register_triton(kernels):
    _registry.define_triton(
        "zerodce_pooled_triton_backward", kernels.zerodce_pooled_backward, fake=_pooled_backward_fake
    )
    _registry.define_triton(
        "zerodce_pooled_triton",
        kernels.zerodce_pooled,
        fake=_pooled_fake,
        backward=_pooled_backward("zerodce_pooled_triton_backward"),
        setup_context=_save_enhanced,
    )
