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

The original-named classes (``L_spa``, ``L_color``, ``L_exp`` in :mod:`lowlight_fast.losses`) are called
one by one, as the authors' scripts call them: ``L_spa(enhanced, low)``, then ``L_color(enhanced)``, then
``L_exp(enhanced)``. Each runs on these ops alone (:func:`single_stats` reads one image once), and they
share one pass: the pooled statistics of the images of the last call are remembered (:class:`_Memo`), so
``L_color`` and ``L_exp`` of the image that ``L_spa`` just pooled reuse its pooled map and channel means,
and the backward of all three writes d enhanced once. Each call still returns what the original returns.

One deliberate difference: where an image's three channel means are exactly equal, L_color is
sqrt(0) and the original's gradient is NaN; the C++ op gives 0 there (the PyTorch path keeps the NaN).
"""
from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F

from lowlight_fast import _ext, _validate, backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops.tv_loss import tv_loss
from lowlight_fast.reference import zerodce_losses as reference

# ---- constants ----

OP = "zerodce_pooled"
SINGLE_OP = "zerodce_pooled_single"
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


def _cpp_terms(t: torch.Tensor, op: str) -> bool:
    """Whether the C++ term op ``op`` runs for the small map ``t`` (CPU, the cpp backend, op built)."""
    return t.device.type == "cpu" and _backend_for(t) == "cpp" and _ext.has_op(op)


def spatial_from_pooled(pooled_org: torch.Tensor, pooled_enhance: torch.Tensor) -> torch.Tensor:
    """L_spa's map from the two pooled maps: with q = org - enhance, sum over the 4 neighbours of
    (q - q_neighbour)^2, a neighbour outside the map counting as 0. (B, 1, H//4, W//4)."""
    if _cpp_terms(pooled_org, "zerodce_spatial_map"):
        return torch.ops.lowlight_fast.zerodce_spatial_map(pooled_org, pooled_enhance)
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
    if _cpp_terms(pooled, "zerodce_exposure") and not isinstance(mean_val, torch.Tensor):
        return torch.ops.lowlight_fast.zerodce_exposure(pooled, patch_size, float(mean_val))
    return torch.mean((F.avg_pool2d(pooled, patch_size // POOL) - mean_val) ** 2)


def color_from_means(means: torch.Tensor) -> torch.Tensor:
    """L_color from the channel means (B, 3): (B, 1, 1, 1)."""
    if _cpp_terms(means, "zerodce_color"):
        return torch.ops.lowlight_fast.zerodce_color(means)
    mr, mg, mb = means[:, 0], means[:, 1], means[:, 2]
    d_rg = (mr - mg) ** 2
    d_rb = (mr - mb) ** 2
    d_gb = (mb - mg) ** 2
    return torch.sqrt(d_rg**2 + d_rb**2 + d_gb**2).reshape(-1, 1, 1, 1)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Sa_Loss(x): the mean over pixels of each pixel's distance from its image's channel means; a scalar.
    On the CPU one op (two reads of x; its backward one read and one write); elsewhere the reference.
    Where a pixel equals its channel means exactly, its gradient is 0 (the reference's is NaN)."""
    _validate.check_image(x, "x")
    if _cpp_terms(x, "zerodce_saturation"):
        return torch.ops.lowlight_fast.zerodce_saturation(x)[0]
    return reference.saturation(x)


def single_stats(x: torch.Tensor, *, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """(4x4-pooled channel mean of x (B, 1, H//4, W//4), channel means of x (B, 3)) from one read of x.
    Its backward writes d x once, or, when only the channel means get a gradient, returns it broadcast
    (no image-sized write)."""
    _validate.check_image(x, name, min_size=POOL)
    which = _backend_for(x)
    if which == "cpp":
        return torch.ops.lowlight_fast.zerodce_pooled_single(x)
    if which == "triton":  # the pair kernel; the second image gets no gradient
        pooled, _, means = _run_pooled(which, x, x.detach())
        return pooled, means
    return F.avg_pool2d(x.mean(dim=1, keepdim=True), POOL), x.mean(dim=(2, 3))


class _Memo(threading.local):
    """The pooled statistics of the images of the last call of the drop-in classes, per thread.

    An entry is (weak reference to the image, its version counter, whether autograd records, pooled map,
    channel means or None). Only images with a ``grad_fn`` are remembered, and an entry is used only for
    the same tensor object, unmodified since (its version counter), under the same grad mode; never
    while torch.compile traces, nor for tensor subclasses or functorch-wrapped tensors. At most
    ``SIZE`` entries (the two images of one L_spa call): the next images replace them, so the memo never
    keeps more than the last call's small pooled maps (and, through their graph, what the caller's
    loss holds anyway). The pooled ops save no tensor for their backward, so sharing one node between
    several losses never makes a later ``backward`` of one of them fail where the original's would not.
    """

    SIZE = 2

    def __init__(self):
        self.entries: list[list] = []

    @staticmethod
    def usable(x: torch.Tensor) -> bool:
        """Whether x may be remembered (the callers have already left torch.compile's tracing out)."""
        # Only images that autograd produced (grad_fn set: the network's output in training, where the
        # shared backward pays). A leaf's values can change without its version counter moving
        # (``x.data`` writes, as gradcheck's perturbations do), so leaves are never remembered.
        if type(x) is not torch.Tensor or x.grad_fn is None:
            return False
        return not torch._C._functorch.is_functorch_wrapped_tensor(x)

    @staticmethod
    def _records(x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and x.requires_grad

    def get(self, x: torch.Tensor):
        """(pooled, means or None) remembered for x, or None."""
        if not self.usable(x):
            return None
        for entry in self.entries:
            if entry[0]() is x and entry[1] == x._version and entry[2] == self._records(x):
                return entry[3], entry[4]
        return None

    def put(self, x: torch.Tensor, pooled: torch.Tensor, means: torch.Tensor | None) -> None:
        if not self.usable(x):
            return
        self.entries = [e for e in self.entries if e[0]() is not x and e[0]() is not None]
        self.entries.insert(0, [weakref.ref(x), x._version, self._records(x), pooled, means])
        del self.entries[self.SIZE :]

    def start_call(self, *images: torch.Tensor) -> None:
        """A call on ``images``: entries of other images go (they belong to an earlier call)."""
        self.entries = [e for e in self.entries if any(e[0]() is x for x in images)]

    def clear(self) -> None:
        self.entries = []


_memo = _Memo()


def _stats_of(x: torch.Tensor, name: str, need_means: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled, means) of x, from the memo when it has them."""
    if torch.compiler.is_compiling():  # the memo is plain Python state: not for Dynamo to trace
        return single_stats(x, name=name)
    found = _memo.get(x)
    if found is not None and (found[1] is not None or not need_means):
        return found
    _memo.start_call(x)
    pooled, means = single_stats(x, name=name)
    _memo.put(x, pooled, means)
    return pooled, means


def spatial_consistency(org: torch.Tensor, enhance: torch.Tensor) -> torch.Tensor:
    """L_spa(org, enhance), fused: (B, 1, H//4, W//4). Needs H, W >= 4. Remembers both pooled maps
    (and the channel means of ``org``) for the calls that follow on the same images."""
    if torch.compiler.is_compiling():
        pooled_org, pooled_enhance, _ = pooled_stats(org, enhance, names=("org", "enhance"))
        return spatial_from_pooled(pooled_org, pooled_enhance)
    found_org, found_enh = _memo.get(org), _memo.get(enhance)
    if found_org is not None and found_enh is not None:
        _check_pair(org, enhance, ("org", "enhance"))
        return spatial_from_pooled(found_org[0], found_enh[0])
    _memo.start_call(org, enhance)
    pooled_org, pooled_enhance, means_org = pooled_stats(org, enhance, names=("org", "enhance"))
    if enhance is not org:
        _memo.put(enhance, pooled_enhance, None)
    _memo.put(org, pooled_org, means_org)
    return spatial_from_pooled(pooled_org, pooled_enhance)


def color_constancy(x: torch.Tensor) -> torch.Tensor:
    """L_color(x), fused: (B, 1, 1, 1) from the channel means of one read of x (or the memo's)."""
    _validate.check_image(x, "x")
    if x.shape[2] < POOL or x.shape[3] < POOL:  # the pooled op needs one whole cell; the means do not
        return reference.color_constancy(x)
    return color_from_means(_stats_of(x, "x", need_means=True)[1])


def exposure(x: torch.Tensor, patch_size: int = reference.EXP_PATCH, mean_val=reference.EXP_MEAN) -> torch.Tensor:
    """L_exp(x), fused for patch sizes that are multiples of 4 (the 4x4-pooled map pooled again; the
    memo's when it has it); other patch sizes run the reference."""
    _validate.check_image(x, "x", min_size=max(patch_size, POOL))
    if patch_size % POOL:
        return reference.exposure(x, patch_size, mean_val)
    return exposure_from_pooled(_stats_of(x, "x", need_means=False)[0], patch_size, mean_val)


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


def _single_fake(x):
    batch, _, height, width = x.shape
    return x.new_empty((batch, 1, height // POOL, width // POOL)), x.new_empty((batch, 3))


def _spatial_map_fake(pooled_org, pooled_enhance):
    return pooled_org.new_empty(pooled_org.shape)


def _spatial_map_backward_fake(grad, pooled_org, pooled_enhance):
    return pooled_org.new_empty(pooled_org.shape), pooled_org.new_empty(pooled_org.shape)


def _exposure_fake(pooled, exp_patch, exp_mean):
    return pooled.new_empty(())


def _exposure_backward_fake(grad, pooled, exp_patch, exp_mean):
    return pooled.new_empty(pooled.shape)


def _color_fake(means):
    return means.new_empty((means.shape[0], 1, 1, 1))


def _color_backward_fake(grad, means):
    return means.new_empty(means.shape)


def _saturation_fake(x):
    return x.new_empty(()), x.new_empty((x.shape[0], 3)), x.new_empty((x.shape[0], 3))


def _saturation_backward_fake(grad, x, channel_means, unit_means):
    return x.new_empty(x.shape)


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


def _save_shape(ctx, inputs, output):
    # The backward needs only the image's shape, dtype and device: saving no tensor lets several losses
    # share this node (the memo) without one's backward freeing what another's still needs.
    x = inputs[0]
    ctx.image = (tuple(x.shape), x.dtype, x.device)


def _shape_proxy(ctx) -> torch.Tensor:
    """A tensor of the saved image's shape, dtype and device (one element, broadcast) for the backward ops."""
    shape, dtype, device = ctx.image
    return torch.empty((), dtype=dtype, device=device).expand(shape)


def _pooled_backward(backward_op: str):
    """The backward of ``zerodce_pooled`` or ``zerodce_pooled_triton``: their backward op, which writes
    d low only when low needs it."""

    def backward(ctx, grad_pooled_enhanced, grad_pooled_low, grad_channel_means):
        low_requires_grad = bool(ctx.needs_input_grad[1])
        grad_enhanced, grad_low = getattr(torch.ops.lowlight_fast, backward_op)(
            grad_pooled_enhanced, grad_pooled_low, grad_channel_means, _shape_proxy(ctx), low_requires_grad
        )
        return grad_enhanced, (grad_low if low_requires_grad else None)

    return backward


def _single_setup_context(ctx, inputs, output):
    _save_shape(ctx, inputs, output)
    ctx.set_materialize_grads(False)


def _single_backward(ctx, grad_pooled, grad_means):
    shape, _, _ = ctx.image
    if grad_pooled is None and grad_means is None:
        return None
    if grad_pooled is None:  # L_color alone: d x = d means / (H W), the same for every pixel of a channel
        return (grad_means / (shape[2] * shape[3])).reshape(shape[0], shape[1], 1, 1).expand(shape)
    if grad_means is None:
        grad_means = grad_pooled.new_zeros((shape[0], shape[1]))
    grad_x, _ = torch.ops.lowlight_fast.zerodce_pooled_backward(
        grad_pooled, torch.zeros_like(grad_pooled), grad_means, _shape_proxy(ctx), False
    )
    return grad_x


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
    ctx.args = tuple(t for t in inputs if not isinstance(t, torch.Tensor))


def _spatial_map_backward(ctx, grad):
    return torch.ops.lowlight_fast.zerodce_spatial_map_backward(grad, *ctx.saved_tensors)


def _exposure_backward(ctx, grad):
    return torch.ops.lowlight_fast.zerodce_exposure_backward(grad, *ctx.saved_tensors, *ctx.args), None, None


def _color_backward(ctx, grad):
    return torch.ops.lowlight_fast.zerodce_color_backward(grad, *ctx.saved_tensors)


def _saturation_setup_context(ctx, inputs, output):
    _, means, unit = output
    ctx.mark_non_differentiable(means, unit)
    ctx.save_for_backward(inputs[0], means, unit)


def _saturation_backward(ctx, grad, grad_means, grad_unit):
    return torch.ops.lowlight_fast.zerodce_saturation_backward(grad, *ctx.saved_tensors)


def _losses_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.exp_patch, ctx.exp_mean = inputs[3], inputs[4]


def _losses_backward(ctx, grad_spa, grad_col, grad_exp):
    grads = torch.ops.lowlight_fast.zerodce_pooled_losses_backward(
        grad_spa, grad_col, grad_exp, *ctx.saved_tensors, ctx.exp_patch, ctx.exp_mean
    )
    return (*grads, None, None)


_registry.register_cpp(
    OP, fake=_pooled_fake, backward=_pooled_backward("zerodce_pooled_backward"), setup_context=_save_shape
)
_registry.register_cpp(SINGLE_OP, fake=_single_fake, backward=_single_backward, setup_context=_single_setup_context)
_registry.register_cpp("zerodce_pooled_backward", fake=_pooled_backward_fake)
_registry.register_cpp(
    "zerodce_spatial_map", fake=_spatial_map_fake, backward=_spatial_map_backward, setup_context=_save_inputs
)
_registry.register_cpp("zerodce_spatial_map_backward", fake=_spatial_map_backward_fake)
_registry.register_cpp("zerodce_exposure", fake=_exposure_fake, backward=_exposure_backward, setup_context=_save_inputs)
_registry.register_cpp("zerodce_exposure_backward", fake=_exposure_backward_fake)
_registry.register_cpp("zerodce_color", fake=_color_fake, backward=_color_backward, setup_context=_save_inputs)
_registry.register_cpp("zerodce_color_backward", fake=_color_backward_fake)
_registry.register_cpp(
    "zerodce_saturation", fake=_saturation_fake, backward=_saturation_backward, setup_context=_saturation_setup_context
)
_registry.register_cpp("zerodce_saturation_backward", fake=_saturation_backward_fake)
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
        setup_context=_save_shape,
    )
