"""The light-enhancement curve of Zero-DCE and Zero-DCE++ as one fused pass, forward and backward.

``le_curve(x, r)``: Zero-DCE, 8 maps (r has 24 channels); returns the images after 4 and 8 steps.
``le_curve_shared(x, a, grid=None)``: Zero-DCE++, one 3-channel map for the 8 steps, at the image's size
or smaller (then upsampled bilinearly with align_corners=True inside the kernel, never materialised);
``grid``: the map covers a larger pixel grid whose top-left part x is (an image padded to a multiple of
the scale factor, without the padded copy).

Both keep nothing for the backward but their inputs: the backward recomputes the 8 states.
Implementations (``lowlight_fast.backend``): ``cpp`` = ``torch.ops.lowlight_fast.le_curve*`` (C++ CPU
kernels, csrc/cpu/le_curve.cpp), ``triton`` = ``torch.ops.lowlight_fast.le_curve*_triton`` (defined
here on first use, kernels in lowlight_fast/ops/triton/le_curve.py; CUDA, or CPU under
TRITON_INTERPRET=1), ``reference`` = lowlight_fast.reference.curve. All are custom ops with fake
implementations and autograd, so they work under torch.compile(fullgraph=True).
"""
from __future__ import annotations

import torch

from lowlight_fast import _validate, backend
from lowlight_fast.ops import _registry
from lowlight_fast.reference import curve as reference
from lowlight_fast.reference.curve import upsample_map

__all__ = ["le_curve", "le_curve_shared", "upsample_map"]

# ---- constants ----

STEPS = 8
MAP_CHANNELS = 3 * STEPS


# ---- checks ----


def _check(x: torch.Tensor, m: torch.Tensor, name: str, channels: int, *, same_size: bool) -> None:
    _validate.check_image(x, "x")
    _validate.check_image(m, name, channels=channels)
    _validate.check_same_device(x=x, **{name: m})
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: expected batch size {x.shape[0]} like x, got shape {tuple(m.shape)}")
    if same_size and m.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"{name}: expected the spatial size of x, {x.shape[-2]}x{x.shape[-1]}, got shape {tuple(m.shape)}"
        )


# ---- public functions ----


def le_curve(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-DCE's curve: ``x <- x + r_k (x^2 - x)`` for k = 1..8.

    x: (B, 3, H, W) image; r: (B, 24, H, W), map k in channels 3k..3k+2; same dtype and device.
    Returns ``(image after 4 steps, image after 8 steps)``, like the original model.
    """
    _check(x, r, "r", MAP_CHANNELS, same_size=True)
    x, r = _promote(x, r)
    impl = _select(x)
    if impl == "reference":
        return reference.le_curve(x, r)
    if impl == "cpp":
        return torch.ops.lowlight_fast.le_curve(x, r)
    _registry.use_triton("le_curve")
    return torch.ops.lowlight_fast.le_curve_triton(x, r)


def le_curve_shared(x: torch.Tensor, a: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Zero-DCE++'s curve: ``x <- x + a (x^2 - x)`` 8 times with one map ``a``; returns the result.

    x: (B, 3, H, W); a: (B, 3, h, w). When (h, w) != (H, W), ``a`` is upsampled bilinearly with
    align_corners=True (Zero-DCE++'s UpsamplingBilinear2d) inside the kernel. ``grid`` (Gh, Gw) >= (H, W):
    ``a`` is upsampled to that grid, of which x is the top-left part: the result equals the curve on x
    padded to (Gh, Gw), cropped back to (H, W), without the padded copy.
    """
    _check(x, a, "a", 3, same_size=False)
    grid = _check_grid(x, grid)
    x, a = _promote(x, a)
    impl = _select(x)
    if impl == "reference":
        return reference.le_curve_shared(x, a, grid)
    if impl == "cpp":
        return torch.ops.lowlight_fast.le_curve_shared(x, a, grid)
    _registry.use_triton("le_curve")
    return torch.ops.lowlight_fast.le_curve_shared_triton(x, a, grid)


def _check_grid(x: torch.Tensor, grid) -> list[int] | None:
    """None, or (Gh, Gw) as a list of two ints covering x; None when it is x's own size."""
    if grid is None:
        return None
    try:
        gh, gw = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid: expected (height, width), got {grid!r}") from None
    h, w = x.shape[-2:]
    if gh < h or gw < w:
        raise ValueError(f"grid: {gh}x{gw} must cover the image, {h}x{w}")
    return None if (gh, gw) == (h, w) else [gh, gw]


def _promote(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed dtypes (e.g. a bfloat16 map from convs under autocast and a float32 image) are promoted,
    as the eager arithmetic of the original would."""
    if x.dtype == m.dtype:
        return x, m
    dtype = torch.promote_types(x.dtype, m.dtype)
    return x.to(dtype), m.to(dtype)


def _select(x: torch.Tensor) -> str:
    impl = backend.select("le_curve", x.device, has_triton=True)
    if impl == "cpp" and x.device.type != "cpu":  # this op's compiled kernels are CPU only; Triton is the GPU path
        if backend.requested() == "cpp":
            raise RuntimeError(
                f"le_curve: no compiled C++ kernel for {x.device.type} tensors; use the triton backend there"
            )
        return "reference"
    return impl


# ---- fakes (the C++ and the Triton ops alike) ----


def _fake_curve(x, r):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        x, memory_format=torch.contiguous_format
    )


def _fake_curve_backward(x, r, grad_after4, grad_after8):
    if grad_after4 is None and grad_after8 is None:
        return torch.zeros_like(x), torch.zeros_like(r)
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        r, memory_format=torch.contiguous_format
    )


def _fake_shared(x, a, grid=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_shared_backward(x, a, grad_out, grid=None):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        a, memory_format=torch.contiguous_format
    )


# ---- autograd ----


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # only the inputs: the backward recomputes the states
    ctx.set_materialize_grads(False)


def _curve_backward(backward_op: str):
    """The backward of ``le_curve`` or ``le_curve_triton``: their backward op, from the saved inputs."""

    def backward(ctx, grad_after4, grad_after8):
        if grad_after4 is None and grad_after8 is None:
            return None, None
        x, r = ctx.saved_tensors
        return getattr(torch.ops.lowlight_fast, backward_op)(x, r, grad_after4, grad_after8)

    return backward


def _save_shared_inputs(ctx, inputs, output):
    x, a, grid = inputs
    ctx.save_for_backward(x, a)
    ctx.grid = grid
    ctx.set_materialize_grads(False)


def _shared_backward(backward_op: str):
    """The backward of ``le_curve_shared`` or ``le_curve_shared_triton``: their backward op."""

    def backward(ctx, grad_out):
        if grad_out is None:
            return None, None, None
        x, a = ctx.saved_tensors
        grad_x, grad_a = getattr(torch.ops.lowlight_fast, backward_op)(x, a, grad_out, ctx.grid)
        return grad_x, grad_a, None

    return backward


_registry.register_cpp(
    "le_curve", fake=_fake_curve, backward=_curve_backward("le_curve_backward"), setup_context=_save_inputs
)
_registry.register_cpp("le_curve_backward", fake=_fake_curve_backward)
_registry.register_cpp(
    "le_curve_shared",
    fake=_fake_shared,
    backward=_shared_backward("le_curve_shared_backward"),
    setup_context=_save_shared_inputs,
)
_registry.register_cpp("le_curve_shared_backward", fake=_fake_shared_backward)


# ---- Triton registration ----


@_registry.triton_registration("le_curve")
def _register_triton(kernels):
    _registry.define_triton("le_curve_triton_backward", kernels.le_curve_backward, fake=_fake_curve_backward)
    _registry.define_triton(
        "le_curve_triton",
        kernels.le_curve,
        fake=_fake_curve,
        backward=_curve_backward("le_curve_triton_backward"),
        setup_context=_save_inputs,
    )
    _registry.define_triton(
        "le_curve_shared_triton_backward", kernels.le_curve_shared_backward, fake=_fake_shared_backward
    )
    _registry.define_triton(
        "le_curve_shared_triton",
        kernels.le_curve_shared,
        fake=_fake_shared,
        backward=_shared_backward("le_curve_shared_triton_backward"),
        setup_context=_save_shared_inputs,
    )


# ---- export ----


def export_decompositions() -> dict:
    """This module's ops in plain PyTorch (:mod:`lowlight_fast.reference.curve`), for the exporters
    that need standard operators: ``ExportedProgram.run_decompositions(table)`` replaces each op by
    its reference, which is how :mod:`lowlight_fast.export` lowers them to ONNX. The Triton variants
    are included once defined. The ops' own behaviour does not change."""
    ops = torch.ops.lowlight_fast
    table = {}
    for name, fn in (("le_curve", reference.le_curve), ("le_curve_shared", reference.le_curve_shared)):
        for variant in (name, f"{name}_triton"):
            if hasattr(ops, variant):
                table[getattr(ops, variant).default] = fn
    return table
