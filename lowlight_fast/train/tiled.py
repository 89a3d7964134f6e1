"""Exact tiled training steps for Zero-DCE and Zero-DCE++ (``lowlight-fast train --tile N``).

A training step of these models can run tile by tile with the gradients of the whole image, because
everything but one loss term is local:

- the networks: every output pixel depends on the 15 x 15 input window around it (seven 3x3
  convolutions, ``NET_HALO`` = 7); the curve is per pixel;
- L_TV: pairs of neighbouring pixels of the curve maps; L_spa: 4x4-pooled cells and their four
  neighbour cells; L_exp: 16x16 patches;
- L_color alone needs each image's channel means: a first, gradient-free pass over the image gives
  them, and with ``g = dL_color / d mean`` (detached) the gradient through the means is that of
  ``sum(enhanced * g_c) / (H W)``, which each tile adds for its own pixels.

The image is cut into cores at multiples of the tile size (a multiple of 16, so that the cores are
aligned to L_spa's 4x4 cells and L_exp's 16x16 patches; a last core narrower than 16 joins its
neighbour). Each loss term belongs to exactly one core: a pixel, cell or patch to the core that holds
it, a pair of neighbours to the core of its top/left member. A tile's loss is the SUM of its terms
scaled by the untiled loss's normaliser (its counts and means), so the tiles' losses add up to the
untiled loss and their gradients to its gradient. A term needs its neighbours: the enhanced image and
the curve maps are computed on the core plus ``LOSS_HALO`` = 4 (one L_spa cell, which also covers
L_TV's next row and column), from an input window ``NET_HALO`` further out; the rows and columns of
that margin are computed and discarded. At the image border the window is cut at the border, not
padded, so that the convolutions see the same zero padding as on the whole image. As in the untiled
losses (AvgPool2d floors), the rows and columns past the last whole 4x4 cell or 16x16 patch count
for the channel means only.

Zero-DCE++ above scale factor 1 resizes the whole image, so it is not local; its network runs once,
with autograd, on the whole downscaled image (small), each tile upsamples only its window of the curve
map (bilinear, align_corners=True, in the coordinates of the whole image), the gradient with respect
to the low-resolution map is accumulated over the tiles, and one backward runs through the network.

SCI cannot be tiled this way: its BatchNorm layers normalise with the statistics of the whole batch
(training mode), so every pixel depends on every other, forward and backward (README, "Training in
tiles").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from lowlight_fast.models._common import curve_ops
from lowlight_fast.ops.zerodce_losses import color_from_means, pooled_stats
from lowlight_fast.reference import zerodce_losses as reference
from lowlight_fast.train.config import TrainingError

if TYPE_CHECKING:
    from lowlight_fast.train.objective import Objective
    from lowlight_fast.train.state import Run

__all__ = ["ALIGN", "LOSS_HALO", "NET_HALO", "TRAIN_BYTES_PER_PIXEL", "auto_tile", "compute_gradients_tiled",
           "compute_run_gradients_tiled", "tile_spans"]

NET_HALO = 7  # receptive-field radius of seven 3x3 convolutions
POOL = reference.SPA_POOL  # L_spa's cell
ALIGN = reference.EXP_PATCH  # L_exp's patch; a multiple of POOL
LOSS_HALO = POOL  # L_spa's neighbour cell (covers L_TV's next row/column)
# Peak working set of one training step (forward + backward, float32) per pixel of the network's input
# window and per image of the batch, from `python benchmarks/bench_train_tiled.py --bytes-per-pixel`
# (benchmarks/RESULTS.md), rounded up generously. For --tile auto.
TRAIN_BYTES_PER_PIXEL = {"zerodce": 3072, "zerodcepp": 4608}
MIN_AUTO_TILE = 64


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """The cores along one axis: [k tile, (k+1) tile), the last one to ``length``; a last core shorter
    than ALIGN is merged into the one before it (every core then holds whole 16x16 patches)."""
    if tile < ALIGN or tile % ALIGN:
        raise ValueError(f"tile: expected a multiple of {ALIGN} (L_exp's patch), got {tile}")
    starts = list(range(0, length, tile))
    if len(starts) > 1 and length - starts[-1] < ALIGN:
        starts.pop()
    return [(a, starts[i + 1] if i + 1 < len(starts) else length) for i, a in enumerate(starts)]


@dataclass(frozen=True)
class _Axis:
    """One axis of a tile: its core [c0, c1), the outputs it needs [o0, o1) and its input window [i0, i1),
    all in image coordinates, and the image's length n."""

    c0: int
    c1: int
    o0: int
    o1: int
    i0: int
    i1: int
    n: int

    @classmethod
    def of(cls, c0: int, c1: int, n: int, net_halo: int, loss_halo: int = LOSS_HALO) -> "_Axis":
        o0, o1 = max(0, c0 - loss_halo), min(n, c1 + loss_halo)
        return cls(c0, c1, o0, o1, max(0, o0 - net_halo), min(n, o1 + net_halo), n)

    def out_in_window(self) -> slice:
        return slice(self.o0 - self.i0, self.o1 - self.i0)

    def core_in_out(self) -> slice:
        return slice(self.c0 - self.o0, self.c1 - self.o0)

    def pairs_in_out(self) -> tuple[slice, slice]:
        """The neighbour pairs (p, p+1) whose first member is in the core: both members, in the outputs."""
        end = min(self.c1, self.n - 1)
        return slice(self.c0 - self.o0, end - self.o0), slice(self.c0 + 1 - self.o0, end + 1 - self.o0)

    def cells(self) -> tuple[int, int, int]:
        """(first cell of the outputs, first and end cell of the core), in cells of the whole image; the
        last core ends at the last whole cell (floor)."""
        end = self.c1 // POOL if self.c1 < self.n else self.n // POOL
        return self.o0 // POOL, self.c0 // POOL, end


def _own_cells(q: torch.Tensor, ay: _Axis, ax: _Axis) -> torch.Tensor:
    """The pooled map q (of the outputs' cells) on the core's cells plus one neighbour cell on each
    side, a neighbour outside the whole image's map being 0 (L_spa's zero padding)."""
    q = torch.nn.functional.pad(q, (1, 1, 1, 1))  # padded index of cell c: c - first + 1
    (fy, y0, y1), (fx, x0, x1) = ay.cells(), ax.cells()
    return q[..., y0 - fy:y1 - fy + 2, x0 - fx:x1 - fx + 2]


def _spa_sum(q: torch.Tensor) -> torch.Tensor:
    """Sum over the inner cells of q (one ring of neighbours around them) of L_spa's four squared
    neighbour differences."""
    c = q[..., 1:-1, 1:-1]
    return (((c - q[..., 1:-1, :-2]) ** 2) + ((c - q[..., 1:-1, 2:]) ** 2)
            + ((c - q[..., :-2, 1:-1]) ** 2) + ((c - q[..., 2:, 1:-1]) ** 2)).sum()


def _upsample_window(a: torch.Tensor, size: tuple[int, int], ay: _Axis, ax: _Axis) -> torch.Tensor:
    """Rows [ay.o0, ay.o1) and columns [ax.o0, ax.o1) of ``a`` upsampled to ``size`` bilinearly with
    align_corners=True (Zero-DCE++'s UpsamplingBilinear2d), computed from the rows and columns of ``a``
    that they need only."""

    def weights(o0: int, o1: int, n_out: int, n_in: int):
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = torch.arange(o0, o1, dtype=torch.float64) * scale
        lo = src.floor().long().clamp_(max=n_in - 1)
        hi = (lo + 1).clamp_(max=n_in - 1)
        frac = (src - lo).to(a.dtype).to(a.device)
        return lo.to(a.device), hi.to(a.device), frac

    lo, hi, f = weights(ay.o0, ay.o1, size[0], a.shape[-2])
    a = a.index_select(-2, lo) * (1 - f)[:, None] + a.index_select(-2, hi) * f[:, None]
    lo, hi, f = weights(ax.o0, ax.o1, size[1], a.shape[-1])
    return a.index_select(-1, lo) * (1 - f) + a.index_select(-1, hi) * f


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 (autocast's outputs) as float32, as the untiled objective computes the loss."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _Pieces:
    """The model as the tiled step sees it: ``outputs(x, ay, ax)`` -> (enhanced, curve maps) on the
    outputs region of a tile, from the input window (or, for Zero-DCE++ above scale factor 1, from the
    low-resolution map ``self.low``)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, amp_dtype):
        from lowlight_fast.models.zerodce import ZeroDCE
        from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

        if not isinstance(model, (ZeroDCE, ZeroDCEPlusPlus)):
            raise TrainingError("tiled training supports Zero-DCE and Zero-DCE++, not "
                                f"{type(model).__name__} "
                                "(SCI's BatchNorm needs the statistics of whole images)")
        model._check_input(x)
        self.model = model
        self.amp_dtype = amp_dtype
        self.global_map = isinstance(model, ZeroDCEPlusPlus) and model.scale_factor > 1
        self.net_halo = 0 if self.global_map else NET_HALO
        self.low = self.low_leaf = None
        if self.global_map:
            xp = model._pad(x)
            self.padded_size = tuple(xp.shape[-2:])
            with self._autocast(x):
                self.low = model.curve_map(xp)  # the whole downscaled image, with autograd
            self.low_leaf = _full_precision(self.low.detach()).requires_grad_(True)

    def _autocast(self, x: torch.Tensor):
        return torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def outputs(self, x: torch.Tensor, ay: _Axis, ax: _Axis, *,
                grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.global_map:
            low = self.low_leaf if grad else self.low_leaf.detach()
            a = _upsample_window(low, self.padded_size, ay, ax)
            xo = x[:, :, ay.o0:ay.o1, ax.o0:ax.o1]
            return curve_ops(self.model.fused).le_curve_shared(xo, a.to(xo.dtype)), a
        window = x[:, :, ay.i0:ay.i1, ax.i0:ax.i1]
        with self._autocast(x):
            enhanced, maps = self.model(window)[-2:]  # Zero-DCE returns the image after 4 steps first
        keep = (slice(None), slice(None), ay.out_in_window(), ax.out_in_window())
        return _full_precision(enhanced[keep]), _full_precision(maps[keep])

    def enhanced_core(self, x: torch.Tensor, ay: _Axis, ax: _Axis) -> torch.Tensor:
        """The enhanced image on the core of a tile whose axes have no loss margin, without gradients
        (the model's inference path: channels-last convolutions on the CPU)."""
        if self.global_map:
            return self.outputs(x, ay, ax, grad=False)[0]
        with self._autocast(x):
            enhanced = self.model.enhance_image(x[:, :, ay.i0:ay.i1, ax.i0:ax.i1])
        return enhanced[:, :, ay.out_in_window(), ax.out_in_window()]

    def finish(self) -> None:
        """Zero-DCE++ above scale factor 1: the one backward through the low-resolution network."""
        if self.global_map and self.low_leaf.grad is not None:
            self.low.backward(self.low_leaf.grad.to(self.low.dtype))


def _channel_means(pieces: _Pieces, x: torch.Tensor, spans_y, spans_x) -> torch.Tensor:
    """The per-image channel means of the enhanced image (B, 3), without gradients, tile by tile."""
    b, _, h, w = x.shape
    total = torch.zeros(b, 3, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for y0, y1 in spans_y:
            ay = _Axis.of(y0, y1, h, pieces.net_halo, loss_halo=0)
            for x0, x1 in spans_x:
                ax = _Axis.of(x0, x1, w, pieces.net_halo, loss_halo=0)
                total += pieces.enhanced_core(x, ay, ax).sum(dim=(2, 3), dtype=torch.float64)
    return (total / (h * w)).to(torch.float32 if x.dtype != torch.float64 else x.dtype)


def compute_gradients_tiled(
    model: nn.Module,
    objective: "Objective",
    x: torch.Tensor,
    tile: int,
    *,
    amp_dtype: torch.dtype | None = None,
    loss_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward of the Zero-DCE / Zero-DCE++ training loss of batch ``x`` in ``tile`` x
    ``tile`` tiles; the parameter gradients of the whole batch are ADDED to ``.grad`` (zero them first).

    ``objective``: the run's :class:`~lowlight_fast.train.objective.Objective` (or any object whose
    ``loss`` is a ZeroDCELoss / ZeroDCEPPLoss: its ``tv_weight`` is used). ``loss_scale``: applied to
    each tile's loss before its backward (a GradScaler's ``scale``). Returns the detached loss terms
    {"loss", "tv", "spa", "col", "exp"} of the whole batch, equal to the untiled loss's.
    """
    from lowlight_fast.losses import ZeroDCELoss

    loss_module = getattr(objective, "loss", None)
    if not isinstance(loss_module, ZeroDCELoss):
        raise TrainingError("tiled training needs the Zero-DCE / Zero-DCE++ loss (objective.loss), got "
                            f"{type(loss_module).__name__}")
    loss_scale = loss_scale or (lambda t: t)
    b, _, h, w = x.shape
    if h < ALIGN or w < ALIGN:
        raise TrainingError(f"the training loss needs images of at least {ALIGN}x{ALIGN} pixels, got {h}x{w}")
    spans_y, spans_x = tile_spans(h, tile), tile_spans(w, tile)
    pieces = _Pieces(model, x, amp_dtype)

    # L_color: its value and dL/dmean from the channel means of a gradient-free pass
    means = _channel_means(pieces, x, spans_y, spans_x).requires_grad_(True)
    per_image = color_from_means(means)
    col = reference.COLOR_WEIGHT * per_image.mean()
    (g,) = torch.autograd.grad(col, means)
    # equal channel means: sqrt(0), whose gradient is NaN; the fused loss takes 0 there (ops.zerodce_losses)
    g = torch.where(per_image.reshape(b, 1) == 0, torch.zeros_like(g), g).detach()
    g_pixel = (g / (h * w))[:, :, None, None]

    # the untiled losses' normalisers
    tv_norm = loss_module.tv_weight * 2 / b
    tv_h, tv_w = tv_norm / ((h - 1) * w), tv_norm / (h * (w - 1))
    spa_norm = 1.0 / (b * (h // POOL) * (w // POOL))
    exp_norm = reference.EXP_WEIGHT / (b * (h // ALIGN) * (w // ALIGN))
    sums = {k: torch.zeros((), dtype=torch.float64, device=x.device) for k in ("tv", "spa", "exp")}
    for y0, y1 in spans_y:
        ay = _Axis.of(y0, y1, h, pieces.net_halo)
        for x0, x1 in spans_x:
            ax = _Axis.of(x0, x1, w, pieces.net_halo)
            enhanced, maps = pieces.outputs(x, ay, ax, grad=True)
            core_y, core_x = ay.core_in_out(), ax.core_in_out()
            (p, p1), (q, q1) = ay.pairs_in_out(), ax.pairs_in_out()
            tv = tv_h * ((maps[:, :, p1, core_x] - maps[:, :, p, core_x]) ** 2).sum() \
                + tv_w * ((maps[:, :, core_y, q1] - maps[:, :, core_y, q]) ** 2).sum()
            low = x[:, :, ay.o0:ay.o1, ax.o0:ax.o1]
            pooled_enhanced, pooled_low, _ = pooled_stats(enhanced.to(x.dtype), low)
            spa = spa_norm * _spa_sum(_own_cells(pooled_enhanced - pooled_low, ay, ax))
            (fy, cy0, cy1), (fx, cx0, cx1) = ay.cells(), ax.cells()
            own = pooled_enhanced[..., cy0 - fy:cy1 - fy, cx0 - fx:cx1 - fx]  # the core's cells
            patches = torch.nn.functional.avg_pool2d(own, ALIGN // POOL)
            exp = exp_norm * ((patches - reference.EXP_MEAN) ** 2).sum()
            col_grad = (enhanced[:, :, core_y, core_x] * g_pixel).sum()  # its gradient is L_color's
            loss_scale(tv + spa + exp + col_grad).backward()
            for k, v in (("tv", tv), ("spa", spa), ("exp", exp)):
                sums[k] += v.detach()
    pieces.finish()
    values = {k: v.to(x.dtype if x.dtype == torch.float64 else torch.float32) for k, v in sums.items()}
    values["col"] = col.detach()
    values["loss"] = values["tv"] + values["spa"] + values["col"] + values["exp"]
    return values


# ----------------------------------------------------------------------------------- the run's step
def _available_bytes(device: torch.device) -> int:
    from lowlight_fast.enhance import _available_bytes as available

    return available(device)


def auto_tile(model_name: str, x_shape: tuple[int, ...], device: torch.device,
              available: int | None = None) -> int | None:
    """The tile size for ``--tile auto``: the largest multiple of 16 whose training working set (batch x
    window area x TRAIN_BYTES_PER_PIXEL) fits in half the free memory of ``device`` (``available``
    overrides it); None when the whole image fits (no tiling needed)."""
    b, _, h, w = x_shape
    budget = (available if available is not None else _available_bytes(device)) // 2
    per_pixel = b * TRAIN_BYTES_PER_PIXEL[model_name]
    if h * w * per_pixel <= budget:
        return None
    margin = 2 * (NET_HALO + LOSS_HALO)
    side = int(math.isqrt(max(0, budget // per_pixel))) - margin
    return max(MIN_AUTO_TILE, side // ALIGN * ALIGN)


def compute_run_gradients_tiled(run: "Run", batch: torch.Tensor) -> dict[str, float]:
    """``compute_gradients`` of a run with ``cfg.tile`` set: fresh gradients of ``batch``, computed in
    tiles; returns the loss and its terms (floats). Raises Diverged when the loss is not finite (after
    the tiles' backwards, which cannot be told apart in advance; nothing is applied)."""
    from lowlight_fast.train.step import Diverged, compute_gradients

    x = batch.to(run.device, non_blocking=True)
    tile = run.cfg.tile
    if tile == "auto":
        tile = auto_tile(run.cfg.model, tuple(x.shape), run.device)
        if tile is None:
            return compute_gradients(run, x)
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    terms = compute_gradients_tiled(run.model, run.objective, x, int(tile), amp_dtype=run.amp_dtype,
                                    loss_scale=run.scaler.scale)
    values = {k: float(terms[k]) for k in ("loss", "tv", "spa", "col", "exp")}
    if not math.isfinite(values["loss"]):
        raise Diverged(f"the loss became {values['loss']} at step {run.step + 1}", values)
    return values
