"""The light-enhancement curve of Zero-DCE / Zero-DCE++, in plain PyTorch.

One step is ``x <- x + r * (x^2 - x)`` (the code's sign: r = -alpha of the paper), applied 8 times.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def le_curve(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-DCE: x (B,3,H,W), r (B,24,H,W) = 8 maps of 3 channels; returns (after 4 steps, after 8 steps)."""
    after4 = x
    for k in range(8):
        x = x + r[:, 3 * k : 3 * k + 3] * (x * x - x)
        if k == 3:
            after4 = x
    return after4, x


def upsample_map(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-DCE++'s upsampling of the curve map: bilinear, align_corners=True (UpsamplingBilinear2d)."""
    if tuple(a.shape[-2:]) == tuple(size):
        return a
    return F.interpolate(a, size=size, mode="bilinear", align_corners=True)


def le_curve_shared(x: torch.Tensor, a: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Zero-DCE++: one 3-channel map for all 8 steps; a low-resolution map is upsampled first.

    ``grid`` (Gh, Gw) >= x's (H, W): the map covers that pixel grid (it is upsampled to it) and x is
    the grid's top-left part, as when an image padded to (Gh, Gw) is enhanced and cropped back."""
    h, w = x.shape[-2:]
    if grid is None or tuple(grid) == (h, w):
        a = upsample_map(a, (h, w))
    else:
        a = upsample_map(a, (int(grid[0]), int(grid[1])))[..., :h, :w]
    for _ in range(8):
        x = x + a * (x * x - x)
    return x
