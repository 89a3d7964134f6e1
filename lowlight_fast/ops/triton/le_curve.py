"""Triton kernels of the light-enhancement curve (the math is csrc/common/le_curve.h's).

s <- s + r_k (s^2 - s), 8 steps, in float32 (float64 for float64 tensors); the backward recomputes the
8 states in registers. One program handles BLOCK pixels of one (batch, channel) plane.
Bytes moved per pixel (3 channels, float32):
  le_curve                   reads x, r (27 values), writes the 4- and 8-step images (6):          132 B
  le_curve_backward          reads x, r, 1 or 2 output gradients, writes grad_x, grad_r:       228-240 B
  le_curve_shared            reads x, a, writes out: 36 B; a low-resolution map (bilinear,
                             align_corners=True) is read through the cache, ~24 B
  le_curve_shared_backward   reads x, a, grad, writes grad_x, grad_a (full resolution): 60 B; a low-
                             resolution map's gradient is then reduced by aten's upsample backward

The launchers below are the ops lowlight_fast::le_curve*_triton, defined in lowlight_fast/ops/le_curve.py;
on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowlight_fast.backend import acc_dtype, on_device, wrap_triton

STEPS = 8
CHANNELS = 3
BLOCK = 1024


@triton.jit
def _load(ptr, offs, mask, COMPUTE: tl.constexpr):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _step(s, r):
    return s + r * (s * s - s)


@triton.jit
def _d_state(s, r):
    return 1.0 + r * (2.0 * s - 1.0)


@triton.jit
def _step_back(g, s, r, grad_r_ptr, offs, mask):
    """Stores the gradient to this step's map and returns the gradient to the state entering it."""
    tl.store(grad_r_ptr + offs, (g * (s * s - s)).to(grad_r_ptr.dtype.element_ty), mask=mask)
    return g * _d_state(s, r)


@triton.jit
def _le_curve_fwd_kernel(x_ptr, r_ptr, out4_ptr, out8_ptr, HW, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    plane = tl.program_id(1).to(tl.int64)  # b * 3 + c
    b = plane // 3
    c = plane % 3
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    s = _load(x_ptr + plane * HW, offs, mask, COMPUTE)
    r_plane = r_ptr + (b * 24 + c) * HW  # map k, channel c is channel 3k + c
    for k in tl.static_range(8):
        s = _step(s, _load(r_plane + k * 3 * HW, offs, mask, COMPUTE))
        if k == 3:
            tl.store(out4_ptr + plane * HW + offs, s.to(out4_ptr.dtype.element_ty), mask=mask)
    tl.store(out8_ptr + plane * HW + offs, s.to(out8_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _le_curve_bwd_kernel(
    x_ptr, r_ptr, g4_ptr, g8_ptr, gx_ptr, gr_ptr, HW,
    HAS4: tl.constexpr, HAS8: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr,
):
    plane = tl.program_id(1).to(tl.int64)
    b = plane // 3
    c = plane % 3
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    r_plane = r_ptr + (b * 24 + c) * HW
    gr_plane = gr_ptr + (b * 24 + c) * HW
    # the maps and the states entering each step, in registers
    r0 = _load(r_plane + 0 * HW, offs, mask, COMPUTE)
    r1 = _load(r_plane + 3 * HW, offs, mask, COMPUTE)
    r2 = _load(r_plane + 6 * HW, offs, mask, COMPUTE)
    r3 = _load(r_plane + 9 * HW, offs, mask, COMPUTE)
    r4 = _load(r_plane + 12 * HW, offs, mask, COMPUTE)
    r5 = _load(r_plane + 15 * HW, offs, mask, COMPUTE)
    r6 = _load(r_plane + 18 * HW, offs, mask, COMPUTE)
    r7 = _load(r_plane + 21 * HW, offs, mask, COMPUTE)
    s0 = _load(x_ptr + plane * HW, offs, mask, COMPUTE)
    s1 = _step(s0, r0)
    s2 = _step(s1, r1)
    s3 = _step(s2, r2)
    s4 = _step(s3, r3)
    s5 = _step(s4, r4)
    s6 = _step(s5, r5)
    s7 = _step(s6, r6)
    if HAS8:
        g = _load(g8_ptr + plane * HW, offs, mask, COMPUTE)
    else:
        g = tl.zeros([BLOCK], dtype=COMPUTE)
    g = _step_back(g, s7, r7, gr_plane + 21 * HW, offs, mask)
    g = _step_back(g, s6, r6, gr_plane + 18 * HW, offs, mask)
    g = _step_back(g, s5, r5, gr_plane + 15 * HW, offs, mask)
    g = _step_back(g, s4, r4, gr_plane + 12 * HW, offs, mask)
    if HAS4:  # the 4-step output is the state after step 3 (0-based)
        g = g + _load(g4_ptr + plane * HW, offs, mask, COMPUTE)
    g = _step_back(g, s3, r3, gr_plane + 9 * HW, offs, mask)
    g = _step_back(g, s2, r2, gr_plane + 6 * HW, offs, mask)
    g = _step_back(g, s1, r1, gr_plane + 3 * HW, offs, mask)
    g = _step_back(g, s0, r0, gr_plane + 0 * HW, offs, mask)
    tl.store(gx_ptr + plane * HW + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _map_value(a_ptr, plane, offs, mask, H, W, h, w, GH, GW, FULL: tl.constexpr, COMPUTE: tl.constexpr):
    """The curve map at pixels offs of the plane (H x W, the top-left part of a GH x GW grid): read, or
    sampled bilinearly (align_corners=True) from the h x w map upsampled to the grid, with PyTorch's
    arithmetic (aten/src/ATen/native/UpSample.h)."""
    if FULL:
        return _load(a_ptr + plane * H * W, offs, mask, COMPUTE)
    else:
        oy = offs // W
        ox = offs % W
        # scale (in - 1) / (out - 1); a 1-pixel output reads index 0 whatever the scale
        scale_y = (h - 1).to(COMPUTE) / tl.maximum(GH - 1, 1).to(COMPUTE)
        scale_x = (w - 1).to(COMPUTE) / tl.maximum(GW - 1, 1).to(COMPUTE)
        sy = scale_y * oy.to(COMPUTE)
        sx = scale_x * ox.to(COMPUTE)
        y0 = tl.minimum(tl.floor(sy).to(tl.int64), h - 1)
        x0 = tl.minimum(tl.floor(sx).to(tl.int64), w - 1)
        wy1 = tl.minimum(tl.maximum(sy - y0.to(COMPUTE), 0.0), 1.0)
        wx1 = tl.minimum(tl.maximum(sx - x0.to(COMPUTE), 0.0), 1.0)
        wy0 = 1.0 - wy1
        wx0 = 1.0 - wx1
        y1 = y0 + (y0 < h - 1).to(tl.int64)
        x1 = x0 + (x0 < w - 1).to(tl.int64)
        base = a_ptr + plane * h * w
        v00 = _load(base, y0 * w + x0, mask, COMPUTE)
        v01 = _load(base, y0 * w + x1, mask, COMPUTE)
        v10 = _load(base, y1 * w + x0, mask, COMPUTE)
        v11 = _load(base, y1 * w + x1, mask, COMPUTE)
        return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


@triton.jit(do_not_specialize=["H", "W", "h", "w", "GH", "GW"])
def _le_curve_shared_fwd_kernel(
    x_ptr, a_ptr, out_ptr, H, W, h, w, GH, GW, FULL: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr
):
    plane = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    a = _map_value(a_ptr, plane, offs, mask, H, W, h, w, GH, GW, FULL, COMPUTE)
    s = _load(x_ptr + plane * HW, offs, mask, COMPUTE)
    for _ in tl.static_range(8):
        s = _step(s, a)
    tl.store(out_ptr + plane * HW + offs, s.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["H", "W", "h", "w", "GH", "GW"])
def _le_curve_shared_bwd_kernel(
    x_ptr, a_ptr, g_ptr, gx_ptr, ga_ptr, H, W, h, w, GH, GW,
    FULL: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr,
):
    plane = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    a = _map_value(a_ptr, plane, offs, mask, H, W, h, w, GH, GW, FULL, COMPUTE)
    s0 = _load(x_ptr + plane * HW, offs, mask, COMPUTE)
    s1 = _step(s0, a)
    s2 = _step(s1, a)
    s3 = _step(s2, a)
    s4 = _step(s3, a)
    s5 = _step(s4, a)
    s6 = _step(s5, a)
    s7 = _step(s6, a)
    g = _load(g_ptr + plane * HW, offs, mask, COMPUTE)
    ga = g * (s7 * s7 - s7)
    g = g * _d_state(s7, a)
    ga += g * (s6 * s6 - s6)
    g = g * _d_state(s6, a)
    ga += g * (s5 * s5 - s5)
    g = g * _d_state(s5, a)
    ga += g * (s4 * s4 - s4)
    g = g * _d_state(s4, a)
    ga += g * (s3 * s3 - s3)
    g = g * _d_state(s3, a)
    ga += g * (s2 * s2 - s2)
    g = g * _d_state(s2, a)
    ga += g * (s1 * s1 - s1)
    g = g * _d_state(s1, a)
    ga += g * (s0 * s0 - s0)
    g = g * _d_state(s0, a)
    tl.store(gx_ptr + plane * HW + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(ga_ptr + plane * HW + offs, ga.to(ga_ptr.dtype.element_ty), mask=mask)


_COMPUTE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _compute_type(t: torch.Tensor):
    return _COMPUTE[acc_dtype(t.dtype)]




def _grid(x: torch.Tensor):
    return (triton.cdiv(x.shape[2] * x.shape[3], BLOCK), x.shape[0] * CHANNELS)


def le_curve(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, r = x.contiguous(), r.contiguous()
    out4, out8 = torch.empty_like(x), torch.empty_like(x)
    with on_device(x):
        wrap_triton(_le_curve_fwd_kernel)[_grid(x)](
            x, r, out4, out8, x.shape[2] * x.shape[3], BLOCK=BLOCK, COMPUTE=_compute_type(x)
        )
    return out4, out8


def le_curve_backward(
    x: torch.Tensor, r: torch.Tensor, grad_after4: torch.Tensor | None, grad_after8: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if grad_after4 is None and grad_after8 is None:
        return torch.zeros_like(x), torch.zeros_like(r)
    x, r = x.contiguous(), r.contiguous()
    g4 = grad_after4.contiguous() if grad_after4 is not None else x  # a placeholder pointer, never read
    g8 = grad_after8.contiguous() if grad_after8 is not None else x
    grad_x, grad_r = torch.empty_like(x), torch.empty_like(r)
    with on_device(x):
        wrap_triton(_le_curve_bwd_kernel)[_grid(x)](
            x, r, g4, g8, grad_x, grad_r, x.shape[2] * x.shape[3],
            HAS4=grad_after4 is not None, HAS8=grad_after8 is not None, BLOCK=BLOCK, COMPUTE=_compute_type(x),
        )
    return grad_x, grad_r


def _sizes(x, a, grid):
    H, W = x.shape[2], x.shape[3]
    h, w = a.shape[2], a.shape[3]
    GH, GW = (H, W) if grid is None else (grid[0], grid[1])
    return H, W, h, w, GH, GW, (h, w) == (H, W) == (GH, GW)


def le_curve_shared(x: torch.Tensor, a: torch.Tensor, grid: list[int] | None = None) -> torch.Tensor:
    x, a = x.contiguous(), a.contiguous()
    H, W, h, w, GH, GW, full = _sizes(x, a, grid)
    out = torch.empty_like(x)
    with on_device(x):
        wrap_triton(_le_curve_shared_fwd_kernel)[_grid(x)](
            x, a, out, H, W, h, w, GH, GW, FULL=full, BLOCK=BLOCK, COMPUTE=_compute_type(x)
        )
    return out


def le_curve_shared_backward(
    x: torch.Tensor, a: torch.Tensor, grad_out: torch.Tensor, grid: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    x, a, grad_out = x.contiguous(), a.contiguous(), grad_out.contiguous()
    H, W, h, w, GH, GW, full = _sizes(x, a, grid)
    grad_x = torch.empty_like(x)
    if full:
        grad_a_full = torch.empty_like(x)
    else:  # summed into the low-resolution map's gradient afterwards: kept in the accumulator dtype
        grad_a_full = torch.empty(x.shape, dtype=acc_dtype(x.dtype), device=x.device)
    with on_device(x):
        wrap_triton(_le_curve_shared_bwd_kernel)[_grid(x)](
            x, a, grad_out, grad_x, grad_a_full, H, W, h, w, GH, GW,
            FULL=full, BLOCK=BLOCK, COMPUTE=_compute_type(x),
        )
    if full:
        return grad_x, grad_a_full
    if (GH, GW) != (H, W):  # the grid's pixels outside the image contribute nothing
        grad_a_full = torch.nn.functional.pad(grad_a_full, (0, GW - W, 0, GH - H))
    if (h, w) == (GH, GW):
        return grad_x, grad_a_full.to(a.dtype)
    grad_a = torch.ops.aten.upsample_bilinear2d_backward(
        grad_a_full, [GH, GW], list(a.shape), True, None, None
    )
    return grad_x, grad_a.to(a.dtype)
