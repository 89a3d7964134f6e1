"""Enhancing images larger than the device's memory, in overlapping tiles.

The three networks are local: each output pixel depends on the input pixels within a fixed radius
(Zero-DCE and Zero-DCE++ at scale factor 1: seven 3x3 convolutions, radius 7; SCI's illumination
network: three 3x3 convolutions, radius 3; everything else is per pixel). A tile extended by a margin
of at least that radius on every side where the image continues gives exactly the pixels of the whole
image run, because at a real image border the tile sees the same zero padding as the whole image.

Zero-DCE++ with a scale factor above 1 is not local (it resizes the whole image), but it runs the network
on the reduced image only, so it needs little memory; it is never tiled.
"""
from __future__ import annotations

from typing import Callable

import torch

MARGIN = 16  # >= the receptive-field radius of every model above (7 at most)


def tile_starts(length: int, tile: int) -> list[int]:
    """Start offsets of the core tiles covering ``range(length)``."""
    return list(range(0, length, tile))


def _window(c0: int, c1: int, length: int, tile: int, margin: int) -> tuple[int, int]:
    """The input window of the core [c0, c1): the core plus ``margin`` on each side, widened inside the
    image to the common size ``tile + 2 * margin`` (edge tiles included), so that every tile runs the
    same convolution shapes (CPU convolution libraries pick their algorithm by size; same algorithm,
    same rounding, same pixels as the whole-image run)."""
    size = min(length, tile + 2 * margin)
    a = max(0, c0 - margin)
    b = min(length, c1 + margin)
    if b - a < size:
        a = max(0, min(a, b - size))
        b = min(length, a + size)
    return a, b


def enhance_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    margin: int = MARGIN,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (N x C x h x w -> N x C' x h x w, local with radius <= ``margin``) to ``x`` tile by tile.

    ``x`` may live on another device than the one ``fn`` computes on (for example a large image kept
    in host memory); each tile is moved with ``fn``'s own device handling. The result is assembled on
    ``out_device`` (default: ``x``'s device).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    n, _, h, w = x.shape
    out = None
    for y0 in tile_starts(h, tile):
        y1 = min(y0 + tile, h)
        ya, yb = _window(y0, y1, h, tile, margin)
        for x0 in tile_starts(w, tile):
            x1 = min(x0 + tile, w)
            xa, xb = _window(x0, x1, w, tile, margin)
            y = fn(x[:, :, ya:yb, xa:xb])
            if out is None:
                out = torch.empty((n, y.shape[1], h, w), dtype=y.dtype,
                                  device=out_device if out_device is not None else x.device)
            out[:, :, y0:y1, x0:x1] = y[:, :, y0 - ya:y1 - ya, x0 - xa:x1 - xa].to(out.device)
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the allocation failures of CUDA and of the CPU allocator."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text or (
            "not enough memory" in text
        )
    return False
