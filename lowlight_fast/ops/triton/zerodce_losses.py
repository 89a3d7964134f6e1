"""Triton kernels of zerodce_pooled and their launchers; the ops are defined in
lowlight_fast/ops/zerodce_losses.py. GPU tensors; CPU tensors under TRITON_INTERPRET=1.

Forward: one program per (image, group of 4 rows, BLOCK_J pooled columns) loads a 4 x 4*BLOCK_J tile of
each channel of enhanced and low (24 bytes/pixel in float32), writes the 4x4-pooled channel means and
its partial channel sums of enhanced; torch adds the partials (a fixed order: deterministic).
Backward: one program per (BLOCK_R rows, BLOCK_W columns) tile writes d enhanced (and d low when asked):
d = g_pooled[y/4, x/4] / 48 inside the pooled region + g_mean[b, c] / (H W) (enhanced only).
Accumulation in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowlight_fast.backend import acc_dtype, on_device, wrap_triton

POOL = 4
CELL = POOL * POOL * 3
_BLOCK_J = 32
_BLOCK_R = 8
_BLOCK_W = 128


@triton.jit
def _pooled_forward_kernel(
    e_ptr, l_ptr, pe_ptr, pl_ptr, part_ptr, H, W, H4, W4, G, NJ, BLOCK_J: tl.constexpr
):
    t = tl.program_id(0)
    pj = tl.program_id(1)
    b = t // G
    g = t % G
    acc_t = part_ptr.dtype.element_ty
    y = g * 4 + tl.arange(0, 4)[:, None, None]
    j = pj * BLOCK_J + tl.arange(0, BLOCK_J)[None, :, None]
    x = j * 4 + tl.arange(0, 4)[None, None, :]
    inside = (y < H) & (x < W)
    in_region = (y < H4 * 4) & (x < W4 * 4)
    plane = H * W
    base = b.to(tl.int64) * 3 * plane + y * W + x
    comb_e = tl.zeros([4, BLOCK_J, 4], acc_t)
    comb_l = tl.zeros([4, BLOCK_J, 4], acc_t)
    part = (t * NJ + pj) * 3
    for c in tl.static_range(3):
        v = tl.load(e_ptr + base + c * plane, mask=inside, other=0.0).to(acc_t)
        tl.store(part_ptr + part + c, tl.sum(tl.sum(tl.sum(v, axis=2), axis=1), axis=0))
        comb_e += v
        comb_l += tl.load(l_ptr + base + c * plane, mask=in_region, other=0.0).to(acc_t)
    jj = pj * BLOCK_J + tl.arange(0, BLOCK_J)
    ok = (jj < W4) & (jj * 0 + g < H4)
    out = b * H4 * W4 + g * W4 + jj
    pooled_e = tl.sum(tl.sum(comb_e, axis=2), axis=0) / 48.0
    pooled_l = tl.sum(tl.sum(comb_l, axis=2), axis=0) / 48.0
    tl.store(pe_ptr + out, pooled_e.to(pe_ptr.dtype.element_ty), mask=ok)
    tl.store(pl_ptr + out, pooled_l.to(pl_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _pooled_backward_kernel(
    gpe_ptr, gpl_ptr, gm_ptr, ge_ptr, gl_ptr, H, W, H4, W4, ROWS,
    LOW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # rows are the B*3*H image rows: row = (b * 3 + c) * H + y
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    row_ok = rows < ROWS
    y = rows % H
    bc = rows // H
    b = bc // 3
    inside = row_ok & (cols < W)
    in_region = inside & (y < H4 * 4) & (cols < W4 * 4)
    cell = b * H4 * W4 + (y // 4) * W4 + cols // 4
    g_cell = tl.load(gpe_ptr + cell, mask=in_region, other=0.0)
    g_channel = tl.load(gm_ptr + bc, mask=row_ok, other=0.0)
    offs = rows.to(tl.int64) * W + cols
    tl.store(ge_ptr + offs, (g_cell + g_channel).to(ge_ptr.dtype.element_ty), mask=inside)
    if LOW:
        g_low = tl.load(gpl_ptr + cell, mask=in_region, other=0.0)
        tl.store(gl_ptr + offs, g_low.to(gl_ptr.dtype.element_ty), mask=inside)


def zerodce_pooled(
    enhanced: torch.Tensor, low: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enhanced = enhanced.contiguous()
    low = low.contiguous()
    batch, _, height, width = enhanced.shape
    h4, w4 = height // POOL, width // POOL
    groups = triton.cdiv(height, POOL)
    nj = triton.cdiv(triton.cdiv(width, POOL), _BLOCK_J)
    pooled_enhanced = torch.empty((batch, 1, h4, w4), device=enhanced.device, dtype=enhanced.dtype)
    pooled_low = torch.empty((batch, 1, h4, w4), device=enhanced.device, dtype=enhanced.dtype)
    part = torch.empty((batch, groups * nj, 3), device=enhanced.device, dtype=acc_dtype(enhanced.dtype))
    with on_device(enhanced):
        wrap_triton(_pooled_forward_kernel)[(batch * groups, nj)](
            enhanced, low, pooled_enhanced, pooled_low, part, height, width, h4, w4, groups, nj, BLOCK_J=_BLOCK_J
        )
    means = (part.sum(dim=1) / (height * width)).to(enhanced.dtype)
    return pooled_enhanced, pooled_low, means


def zerodce_pooled_backward(
    grad_pooled_enhanced: torch.Tensor,
    grad_pooled_low: torch.Tensor,
    grad_channel_means: torch.Tensor,
    enhanced: torch.Tensor,
    low_requires_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, height, width = enhanced.shape
    acc = acc_dtype(enhanced.dtype)
    g_cell = (grad_pooled_enhanced.to(acc) / CELL).contiguous()
    g_low = (grad_pooled_low.to(acc) / CELL).contiguous()
    g_channel = (grad_channel_means.to(acc) / (height * width)).contiguous()
    shape = (batch, 3, height, width)
    grad_enhanced = torch.empty(shape, device=enhanced.device, dtype=enhanced.dtype)
    grad_low = torch.empty(shape if low_requires_grad else (0,), device=enhanced.device, dtype=enhanced.dtype)
    rows = batch * 3 * height
    grid = (triton.cdiv(rows, _BLOCK_R), triton.cdiv(width, _BLOCK_W))
    with on_device(enhanced):
        wrap_triton(_pooled_backward_kernel)[grid](
            g_cell, g_low, g_channel, grad_enhanced, grad_low, height, width, height // POOL, width // POOL, rows,
            LOW=low_requires_grad, BLOCK_R=_BLOCK_R, BLOCK_W=_BLOCK_W,
        )
    return grad_enhanced, grad_low
