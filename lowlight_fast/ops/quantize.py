"""``quantize_hwc(x, bits)``: float samples in [0, 1] -> 8- or 16-bit integers, interleaved, for the
image and video writers; ``dequantize_hwc(q)``: its inverse for the readers.

x: (B, C, H, W), any strides (planar or channels-last), float16/bfloat16/float32/float64 on any device;
returns (B, H, W, C) uint8 (bits 8) or uint16 (bits 16): ``floor(clamp(x, 0, 1) * peak + 0.5)`` computed
in float32 (peak 255 or 65535), the arithmetic of torchvision's ``save_image`` that the authors' scripts
use, so 8-bit results match theirs pixel for pixel. NaN becomes 0.

On CPU tensors the compiled kernel (csrc/cpu/quantize.cpp: one pass, single-threaded because it runs
in the writer threads beside the model) replaces the reference's five passes; the reference
(:func:`reference_quantize_hwc`, plain PyTorch) runs elsewhere, without the extension, and under
``LOWLIGHT_FAST_BACKEND=reference``. Not differentiable (integers out).

``dequantize_hwc(q)``: (B, H, W, C) uint8 / uint16 -> (B, C, H, W) float32 ``q / peak`` (one division,
as numpy's ``q.astype(np.float32) / 255.0`` in the image readers), one pass instead of a conversion, a
division and a transposing copy.
"""
from __future__ import annotations

import torch

from lowlight_fast import _ext, backend
from lowlight_fast.ops import _registry

__all__ = ["dequantize_hwc", "quantize_hwc", "reference_dequantize_hwc", "reference_quantize_hwc"]

# ---- constants ----

PEAK = {8: 255.0, 16: 65535.0}
DTYPE = {8: torch.uint8, 16: torch.uint16}
BITS = {torch.uint8: 8, torch.uint16: 16}

# ---- checks ----


def _check(x: torch.Tensor, bits: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    if bits not in PEAK:
        raise ValueError(f"bits: expected 8 or 16, got {bits!r}")


def _check_q(q: torch.Tensor) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a tensor, got {type(q).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q: expected a 4-D tensor (B, H, W, C), got shape {tuple(q.shape)}")
    if q.dtype not in BITS:
        raise ValueError(f"q: expected uint8 or uint16 samples, got {q.dtype}")


def _compiled(t: torch.Tensor, op: str) -> bool:
    return t.device.type == "cpu" and _ext.has_op(op) and backend.requested() != "reference"


# ---- public functions ----


def quantize_hwc(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, H, W, C) uint8 / uint16 (see the module docstring)."""
    _check(x, bits)
    if _compiled(x, "quantize_hwc"):
        return torch.ops.lowlight_fast.quantize_hwc(x, bits)
    return reference_quantize_hwc(x, bits)


def dequantize_hwc(q: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 / uint16 -> (B, C, H, W) float32 in [0, 1] (see the module docstring)."""
    _check_q(q)
    if _compiled(q, "dequantize_hwc"):
        return torch.ops.lowlight_fast.dequantize_hwc(q)
    return reference_dequantize_hwc(q)


def reference_quantize_hwc(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The plain-PyTorch definition: clamp, scale, add one half and floor, in float32."""
    _check(x, bits)
    v = x.to(torch.float32).clamp(0.0, 1.0).nan_to_num(0.0)
    q = torch.floor(v * PEAK[bits] + 0.5)
    return q.to(torch.int32).to(DTYPE[bits]).permute(0, 2, 3, 1).contiguous()


def reference_dequantize_hwc(q: torch.Tensor) -> torch.Tensor:
    """The plain-PyTorch definition: q / peak in float32, channels first."""
    _check_q(q)
    peak = PEAK[BITS[q.dtype]]
    return (q.to(torch.float32) / peak).permute(0, 3, 1, 2).contiguous()


# ---- fakes ----


def _fake_quantize_hwc(x: torch.Tensor, bits: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.new_empty((b, h, w, c), dtype=DTYPE[bits])


def _fake_dequantize_hwc(q: torch.Tensor) -> torch.Tensor:
    b, h, w, c = q.shape
    return q.new_empty((b, c, h, w), dtype=torch.float32)


_registry.register_cpp("quantize_hwc", fake=_fake_quantize_hwc)
_registry.register_cpp("dequantize_hwc", fake=_fake_dequantize_hwc)
