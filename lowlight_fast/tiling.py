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


MIN_WINDOW_AREA = 128 * 128  # windows at least this large (pixels): see _tile_sizes


def _window(c0: int, c1: int, length: int, size: int, margin: int, align: int = 1) -> tuple[int, int]:
    """The input window of the core [c0, c1) along one axis: the core plus ``margin`` on each side,
    widened inside the image to the common ``size`` (edge tiles included), its start rounded down to
    a multiple of ``align``."""
    a = max(0, c0 - margin)
    b = min(length, c1 + margin)
    if b - a < size:
        a = max(0, min(a, b - size))
        b = min(length, a + size)
    # align 4 (Zero-DCE): the 4x4 output tiles of the Winograd convolutions (ops/conv3x3.py) then
    # cover the same pixels in the window as in the whole image, and round them alike (the window is
    # align - 1 pixels wider at most; other models keep one size, which their oneDNN kernels need)
    return a - a % align, b


def _tile_sizes(h: int, w: int, tile: int, margin: int) -> tuple[int, int]:
    """Core tile height and width. Every window gets the same shape, and at least MIN_WINDOW_AREA
    pixels (a thin image gets longer tiles): CPU convolution libraries choose their algorithm by the
    input's size, and tiny inputs get another one, with another rounding. Same shapes, same algorithm
    as the whole image, same pixels."""
    th = tw = tile
    wh, ww = min(h, tile + 2 * margin), min(w, tile + 2 * margin)
    if wh * ww < MIN_WINDOW_AREA:
        if wh <= ww:
            tw = max(tile, -(-MIN_WINDOW_AREA // wh) - 2 * margin)
        else:
            th = max(tile, -(-MIN_WINDOW_AREA // ww) - 2 * margin)
    return th, tw


def enhance_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    margin: int = MARGIN,
    out_device: torch.device | str | None = None,
    align: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` (N x C x h x w -> N x C' x h x w, local with radius <= ``margin``) to ``x`` tile by tile.

    ``x`` may live on another device than the one ``fn`` computes on (for example a large image kept
    in host memory); ``fn`` moves each tile. The result is assembled on ``out_device`` (default:
    ``x``'s device). ``align``: windows start at multiples of it (``tile_alignment`` of the model:
    4 for Zero-DCE's Winograd trunk).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    n, _, h, w = x.shape
    th, tw = _tile_sizes(h, w, tile, margin)
    out = None
    for y0 in range(0, h, th):
        y1 = min(y0 + th, h)
        ya, yb = _window(y0, y1, h, min(h, th + 2 * margin), margin, align)
        for x0 in range(0, w, tw):
            x1 = min(x0 + tw, w)
            xa, xb = _window(x0, x1, w, min(w, tw + 2 * margin), margin, align)
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
