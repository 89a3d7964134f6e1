"""Input checks shared by models, losses and ops: user errors become clear exceptions before any kernel.

TypeError: not a tensor, or an unsupported dtype. ValueError: rank, channels, size, emptiness,
device or shape mismatch, values out of range. Every message names the argument and says what was
expected and what was given.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_image(
    t,
    name: str,
    *,
    channels: int | None = 3,
    min_size: int = 1,
    dtypes=FLOAT_DTYPES,
) -> None:
    """A (B, C, H, W) floating tensor with ``channels`` channels and H, W >= ``min_size``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (B, C, H, W), got {t.dim()}-D with shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_names(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (B, {channels}, H, W), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty tensor (shape {tuple(t.shape)}); expected B, C, H, W all > 0")
    h, w = t.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{name}: image of {h}x{w} pixels is smaller than the {min_size}x{min_size} this needs")


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors on one device."""
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {desc}")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """All tensors of one shape."""
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"tensors must have the same shape, got {desc}")


def check_same_dtype(**tensors: torch.Tensor) -> None:
    """All tensors of one dtype."""
    dtypes = {n: t.dtype for n, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} {str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"tensors must have the same dtype, got {desc}")


def check_unit_range(t: torch.Tensor, name: str, *, tol: float = 1e-3) -> None:
    """Values in [0, 1] (images scaled by 1/255), NaN rejected. Skipped while tracing (it needs a device sync)."""
    if torch.compiler.is_compiling() or t.is_meta:
        return
    lo, hi = torch.aminmax(t.detach())  # NaN propagates into both
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name}: contains NaN values; expected an image in [0, 1]")
    if lo < -tol or hi > 1 + tol:
        raise ValueError(
            f"{name}: expected values in [0, 1] (an image divided by 255), got min {lo:.4g}, max {hi:.4g}"
        )
