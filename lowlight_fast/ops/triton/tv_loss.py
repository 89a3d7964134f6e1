"""Triton kernels of tv_loss (Zero-DCE L_TV) and their launchers; the ops are defined in
lowlight_fast/ops/tv_loss.py. GPU tensors; CPU tensors under TRITON_INTERPRET=1.

Forward: one program per BLOCK_R image rows sums the squared vertical and horizontal differences of
those rows (reads A once, 4 bytes/pixel in float32); the per-program partial sums are reduced by torch.
Backward: one program per (BLOCK_R rows, BLOCK_W columns) tile writes dA (8 bytes/pixel in float32).
Accumulation in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lowlight_fast.backend import acc_dtype, on_device, wrap_triton

_BLOCK_R = 8
_BLOCK_W = 128


@triton.jit
def _tv_forward_kernel(x_ptr, part_ptr, H, W, ROWS, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    # rows are the B*C*H image rows; one program sums BLOCK_R of them
    pid = tl.program_id(0)
    acc_t = part_ptr.dtype.element_ty
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    row_ok = rows < ROWS
    has_down = row_ok & ((rows % H) + 1 < H)
    base = rows.to(tl.int64) * W
    acc_h = tl.zeros([BLOCK_R, BLOCK_W], acc_t)
    acc_w = tl.zeros([BLOCK_R, BLOCK_W], acc_t)
    for start in range(0, W, BLOCK_W):
        cols = start + tl.arange(0, BLOCK_W)[None, :]
        inside = row_ok & (cols < W)
        has_right = row_ok & (cols + 1 < W)
        v = tl.load(x_ptr + base + cols, mask=inside, other=0.0).to(acc_t)
        right = tl.load(x_ptr + base + cols + 1, mask=has_right, other=0.0).to(acc_t)
        down = tl.load(x_ptr + base + W + cols, mask=inside & has_down, other=0.0).to(acc_t)
        dw = tl.where(has_right, right - v, 0.0)
        dh = tl.where(inside & has_down, down - v, 0.0)
        acc_w += dw * dw
        acc_h += dh * dh
    tl.store(part_ptr + 2 * pid, tl.sum(tl.sum(acc_h, axis=1), axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.sum(acc_w, axis=1), axis=0))


@triton.jit
def _tv_backward_kernel(k_ptr, x_ptr, out_ptr, H, W, ROWS, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    acc_t = k_ptr.dtype.element_ty
    y = rows % H
    inside = (rows < ROWS) & (cols < W)
    has_up = inside & (y > 0)
    has_down = inside & (y + 1 < H)
    has_left = inside & (cols > 0)
    has_right = inside & (cols + 1 < W)
    base = rows.to(tl.int64) * W
    kh = tl.load(k_ptr)
    kw = tl.load(k_ptr + 1)
    v = tl.load(x_ptr + base + cols, mask=inside, other=0.0).to(acc_t)
    up = tl.load(x_ptr + base - W + cols, mask=has_up, other=0.0).to(acc_t)
    down = tl.load(x_ptr + base + W + cols, mask=has_down, other=0.0).to(acc_t)
    left = tl.load(x_ptr + base + cols - 1, mask=has_left, other=0.0).to(acc_t)
    right = tl.load(x_ptr + base + cols + 1, mask=has_right, other=0.0).to(acc_t)
    dh = tl.where(has_up, v - up, 0.0) - tl.where(has_down, down - v, 0.0)
    dw = tl.where(has_left, v - left, 0.0) - tl.where(has_right, right - v, 0.0)
    g = kh * dh + kw * dw
    tl.store(out_ptr + base + cols, g.to(out_ptr.dtype.element_ty), mask=inside)


def _scales(x: torch.Tensor) -> tuple[float, float]:
    batch, _, height, width = x.shape
    return 2.0 / (batch * (height - 1) * width), 2.0 / (batch * height * (width - 1))


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    _, _, height, width = x.shape
    rows = x.shape[0] * x.shape[1] * height
    programs = triton.cdiv(rows, _BLOCK_R)
    part = torch.empty((programs, 2), device=x.device, dtype=acc_dtype(x.dtype))
    with on_device(x):
        wrap_triton(_tv_forward_kernel)[(programs,)](
            x, part, height, width, rows, BLOCK_R=_BLOCK_R, BLOCK_W=_BLOCK_W
        )
    sh, sw = _scales(x)
    sums = part.sum(dim=0)
    return (sums[0] * sh + sums[1] * sw).to(x.dtype)


def tv_loss_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    _, _, height, width = x.shape
    rows = x.shape[0] * x.shape[1] * height
    sh, sw = _scales(x)
    scale = torch.tensor([2.0 * sh, 2.0 * sw], device=x.device, dtype=acc_dtype(x.dtype))
    k = scale * grad.reshape(1).to(scale.dtype)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(rows, _BLOCK_R), triton.cdiv(width, _BLOCK_W))
    with on_device(x):
        wrap_triton(_tv_backward_kernel)[grid](k, x, out, height, width, rows, BLOCK_R=_BLOCK_R, BLOCK_W=_BLOCK_W)
    return out
