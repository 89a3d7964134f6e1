"""The training forward of the Zero-DCE / Zero-DCE++ trunk with less memory (and fresh memory) than
autograd over the plain trunk (``_common.dce_trunk``), and the same values and gradients.

- No concatenations: layers 5-7 read ``cat([a, b])``; a convolution over a concatenation is the sum of
  convolutions over its parts with the weight split along the input channels. The split is a slice of
  the parameter at run time (``e_conv5.weight[:, :32]``), so parameter names and shapes stay those of
  the original checkpoints.
- :class:`ZeroDCETrunk` (Zero-DCE): one autograd node for the seven convolutions and the ReLUs (tanh
  follows it). It keeps for backward the image and five ReLU outputs, a2..a6 (each is the input of a
  later convolution, and its sign is the ReLU's mask); a1 is recomputed from the image when layer 2's
  backward needs it (a 3-channel convolution: a tenth of a 32-channel one), so it is not held through
  the backward. The backward runs each layer's direct part first, then masks the previous output's
  gradient in place and frees that output, then the layer's skip part; a gradient that several
  layers contribute to is added into in place. Every convolution's backward runs over pieces of
  about ``CHUNK_PIXELS`` pixels (whole images, or bands of rows of a large one): oneDNN reorders its
  operands into a blocked layout, and those copies then take a piece's size, not the image's (glibc
  keeps such freed temporaries in its heap: they are given back after each convolution). At its
  peak the backward holds six 32-channel maps (activations and gradients together) besides the
  gradient of r. Recomputing a4 (read only by layer 5) was considered: it lowers the layers 7-6
  part of the backward but not layer 5's, where the four gradient maps and a4 itself are live anyway.
  On the CPU (float32/float64, :data:`WINOGRAD` true, backend auto or cpp) all seven layers run on
  our ``conv3x3_nhwc`` (Winograd F(4x4, 3x3); layer 1 by its direct sums; channels-last activations, the skip layers' two inputs
  read in place, ReLU in the kernel), their input gradients on the same op with the flipped weights
  (in pieces only where added into a gradient that exists), and all weight and bias gradients on
  ``conv3x3_nhwc_weight_grad`` (direct channels-last sums, no temporaries of the image's size): the
  whole step 3.4-4x faster than the original code's on AVX-512 and AVX2 (benchmarks/RESULTS.md,
  "Issue #14 on the Zen 5 machine"). Elsewhere oneDNN's (or cuDNN's) NCHW convolutions, in pieces.
- :class:`DepthwiseSeparableTrunk` (Zero-DCE++): the same order and the same recomputed a1 for
  depthwise + pointwise layers; the depthwise outputs are not kept either but recomputed in the
  backward (a depthwise 3x3 convolution costs 9 multiply-adds per value, the pointwise one 32 or 64).
  Its convolutions' backward runs whole (its peak is below Zero-DCE's).

Used by the models' ``forward`` when ``fused=True`` and gradients are recorded; ``fused=False`` keeps
the plain trunk, the reference these are tested against. Under autocast or torch.compile the models
use :func:`split_trunk` (autograd over the split convolutions: no concatenations, autocast's casts
and the compiler's own memory planning apply).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_conv_backward = torch.ops.aten.convolution_backward
_relu_backward_ = torch.ops.aten.threshold_backward.grad_input  # out= the gradient itself: in place

# (layer, the earlier layers whose outputs it reads; 0 = the image). Layers 5-7 read two.
_INPUTS = ((0,), (1,), (2,), (3,), (3, 4), (2, 5), (1, 6))

# Every convolution of Zero-DCE's backward runs over pieces of about this many pixels (whole images
# while they are smaller, else bands of rows); read at each call.
CHUNK_PIXELS = 1 << 17

# Zero-DCE's node on the CPU: layers 2-7 and their input gradients on conv3x3_nhwc (Winograd); read at
# each call (False: oneDNN's NCHW convolutions throughout, as on other devices).
WINOGRAD = True


def _load_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()
_TRIM_BYTES = 1 << 20  # pieces of a map this big or bigger: their temporaries are worth giving back


def _give_back_freed_heap() -> None:
    """Return the freed memory in glibc's heap to the system. The pieces' temporaries are smaller than
    glibc's mmap threshold, so they come from its heap, where pieces of slightly different sizes
    leave holes that the next ones cannot reuse and that glibc does not give back by itself."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _split(weight: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """The weight's slices along the input channels, one per part (views: autograd sums their grads)."""
    return list(weight.chunk(parts, dim=1)) if parts > 1 else [weight]


def _relu_mask_(grad: torch.Tensor, relu_out: torch.Tensor) -> torch.Tensor:
    """grad where relu_out > 0, else 0 (ReLU's backward from its output), in place."""
    return _relu_backward_(grad, relu_out, 0, grad_input=grad)


def _is_plain(x: torch.Tensor) -> bool:
    """Whether the custom autograd nodes apply: not under autocast (their backward would not see its
    casts) nor torch.compile (it plans its own memory)."""
    return not torch.is_autocast_enabled(x.device.type) and not torch.compiler.is_compiling()


# ---- Zero-DCE: 3x3 convolutions --------------------------------------------------------------------


def _conv(inputs, weight, bias):
    """conv(cat(inputs), weight, bias) as a sum of convolutions over the parts."""
    ws = _split(weight, len(inputs))
    y = F.conv2d(inputs[0], ws[0], bias, 1, 1)
    for a, w in zip(inputs[1:], ws[1:]):
        y += F.conv2d(a, w, None, 1, 1)
    return y


def _pieces(batch: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(b0, b1, r0, r1): images b0..b1-1, rows r0..r1-1; about CHUNK_PIXELS pixels each."""
    if height * width <= CHUNK_PIXELS:
        n = max(1, CHUNK_PIXELS // (height * width))
        return [(b, min(b + n, batch), 0, height) for b in range(0, batch, n)]
    n = -(-height * width // CHUNK_PIXELS)  # bands per image, of equal height but for the last
    rows = -(-height // n)
    return [(b, b + 1, r, min(r + rows, height)) for b in range(batch) for r in range(0, height, rows)]


def _conv3x3_backward(g, a, w, need_in, need_w, need_b, acc=None, winograd=False):
    """The backward of conv2d(a, w, b, padding=1) for the output gradient g, piece by piece (oneDNN's
    reorders of g and a then take a piece's size, not the image's): (input gradient, added into ``acc``
    when given, weight gradient, bias gradient), each None where not needed.

    A piece (rows r0..r1-1 of g) adds its input gradient to rows r0-1..r1 (the transposed convolution
    of the piece); its weight and bias gradients read a's rows r0-1..r1 (zero rows beyond the image).

    ``winograd``: g and a are channels-last (the CPU forward's layout, :func:`_winograd_ok`); the input
    gradient is then ``conv3x3_nhwc`` with the flipped, transposed weight (Winograd), and the weight
    and bias gradients ``conv3x3_nhwc_weight_grad`` (oneDNN's channels-last weight gradient is slow on
    AVX2, and NCHW copies cost more than they save; benchmarks/RESULTS.md)."""
    height = a.shape[2]
    pieces = _pieces(a.shape[0], height, a.shape[3])
    bias_sizes = [w.shape[0]] if need_b else None
    if winograd:
        return _conv3x3_backward_winograd(g, a, w, need_in, need_w, need_b, acc, pieces)
    if len(pieces) == 1:
        gin, gw, gb = _conv_backward(g, a, w, bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                     [need_in, need_w, need_b])
        if acc is not None and gin is not None:
            gin = acc.add_(gin)
        return gin, gw, gb
    gin = (acc if acc is not None else torch.zeros_like(a)) if need_in else None
    # the sums exist before the pieces' temporaries (a small block left between them would keep
    # the allocator from reusing their memory)
    gw = torch.zeros_like(w) if need_w else None
    gb = w.new_zeros(w.shape[0]) if need_b else None
    for b0, b1, r0, r1 in pieces:
        s0, s1 = max(r0 - 1, 0), min(r1 + 1, height)
        top, bottom = int(r0 == 0), int(r1 == height)
        whole = top and bottom  # whole images: the convolution's own zero padding
        gp = g[b0:b1] if whole else g[b0:b1, :, r0:r1]
        if need_in:
            part = F.conv_transpose2d(gp, w, None, 1, 1 if whole else (0, 1))
            gin[b0:b1, :, s0:s1].add_(part if whole else part[:, :, top: part.shape[2] - bottom])
            del part
        if need_w or need_b:
            ap = a[b0:b1, :, s0:s1]
            if not whole and (top or bottom):
                ap = F.pad(ap, (0, 0, top, bottom))
            _, dw, db = _conv_backward(gp, ap, w, bias_sizes, [1, 1], [1, 1] if whole else [0, 1], [1, 1],
                                       False, [0, 0], 1, [False, need_w, need_b])
            if need_w:
                gw.add_(dw)
            if need_b:
                gb.add_(db)
            del dw, db
    if a.numel() * a.element_size() >= _TRIM_BYTES * len(pieces):
        _give_back_freed_heap()
    return gin, gw, gb


def _conv3x3_backward_winograd(g, a, w, need_in, need_w, need_b, acc, pieces):
    """:func:`_conv3x3_backward` for channels-last g and a (``winograd=True``): the weight and bias
    gradients in one ``conv3x3_nhwc_weight_grad`` call (no temporaries of the image's size); the input
    gradient in one call when there is nothing to add it to, else piece by piece into ``acc`` (a
    piece's temporary, not the image's)."""
    height = a.shape[2]
    gw = gb = gin = None
    if need_w or need_b:
        gw, gb = torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad(g, a, None)
        gw, gb = (gw if need_w else None), (gb if need_b else None)
    if not need_in:
        return gin, gw, gb
    wt = w.flip(2, 3).transpose(0, 1).contiguous()  # conv_transpose as a conv
    if acc is None:
        return _conv3x3_op(g, None, wt, None, 0), gw, gb
    for b0, b1, r0, r1 in pieces:
        s0, s1 = max(r0 - 1, 0), min(r1 + 1, height)
        top, bottom = int(r0 == 0), int(r1 == height)
        if top and bottom:
            acc[b0:b1].add_(_conv3x3_op(g[b0:b1], None, wt, None, 0))
        else:  # rows r0-1..r1 of the input gradient: the piece with a zero row either side
            part = _conv3x3_op(F.pad(g[b0:b1, :, r0:r1], (0, 0, 1, 1)), None, wt, None, 0)
            acc[b0:b1, :, s0:s1].add_(part[:, :, top: part.shape[2] - bottom])
            del part
    if len(pieces) > 1 and a.numel() * a.element_size() >= _TRIM_BYTES * len(pieces):
        _give_back_freed_heap()
    return acc, gw, gb


def _take_acts(ctx) -> list:
    """The activations the forward kept, for the backward to free one by one; left on ctx as well when
    the graph is kept (``retain_graph=True``: a later backward needs them again)."""
    acts = ctx.acts
    if not torch._C._autograd._get_current_graph_task_keep_graph():
        del ctx.acts
    return list(acts)


def _backward(acts, grad_out, needs, n_params, part_backward, recompute):
    """The trunk's backward, shared by both models. acts: [x, a1..a6], None where the forward did not
    keep one (``recompute(i)`` makes a_i again); freed here as they are used. grad_out: the gradient
    of layer 7's output; needs: ctx.needs_input_grad; part_backward(k, j, g, a, need_in, acc) -> (grad
    of the part's input, added into acc when acc is not None, or None; {parameter index: (grad, cat dim
    or None)}) for part j of layer k (0-based) with output gradient g. Returns the gradients of
    (x, *params).

    Order, for the least memory at once: each layer's direct part first (it reads the previous layer's
    output a_k, whose other readers, the skips, are done by then); a_k's gradient is then complete, is
    masked by a_k in place into the next layer's output gradient, and a_k is freed; then the layer's
    skip part. The skip part of layer 7 (reading a1) waits until layer 2's: its output gradient is held
    by the autograd engine until this backward returns anyway, while the a1 gradient it makes would be
    held through the whole backward, and a1 (recomputed) is needed only then."""
    per = n_params // 7
    grad_act = [None] * 7
    pieces: dict[int, list] = {}

    def run(k, j, g):
        i = _INPUTS[k][j]
        if acts[i] is None:
            acts[i] = recompute(i)
        need_in = i > 0 or needs[0]
        grad_act[i], pgrads = part_backward(k, j, g, acts[i], need_in, grad_act[i])
        for idx, (grad, dim) in pgrads.items():
            pieces.setdefault(idx, []).append((j, grad, dim))

    g = grad_out
    for k in range(6, -1, -1):
        src = _INPUTS[k]
        run(k, len(src) - 1, g)  # the direct part: src[-1] == k
        if k == 1:
            run(6, 0, grad_out)  # layer 7's skip part
        g_next = None
        if k > 0:
            g_next = _relu_mask_(grad_act[k], acts[k])
            grad_act[k] = None
            acts[k] = None  # its last reader is done
        if k < 6:
            for j in range(len(src) - 2, -1, -1):
                run(k, j, g)
        g = g_next
    grads = [grad_act[0]] + [None] * n_params
    for idx, ps in pieces.items():
        ps.sort(key=lambda p: p[0])
        dim = ps[0][2]
        grads[1 + idx] = ps[0][1] if dim is None or len(ps) == 1 else torch.cat([p[1] for p in ps], dim)
    assert len(grads) == 1 + 7 * per
    return tuple(grads)


def _conv3x3_op(x, x2, w, b, activation):
    return torch.ops.lowlight_fast.conv3x3_nhwc(x, x2, w, b, activation)


def _winograd_ok(x, params) -> bool:
    """Whether Zero-DCE's node runs its layers and their input gradients on ``conv3x3_nhwc`` (the CPU,
    float32/float64, backend auto or cpp, :data:`WINOGRAD` true; else oneDNN's NCHW convolutions)."""
    if x.device.type != "cpu" or not WINOGRAD:
        return False
    from lowlight_fast.ops import conv3x3

    return conv3x3._compiled_ok(x, None, params[2], params[3])


def _first_layer(x, w, b, winograd):
    """Layer 1 with its ReLU: with the others on ``conv3x3_nhwc``, on it too (channels-last; for 3 input
    channels the op sums directly, and its output comes from the output pool), else oneDNN's."""
    if winograd:
        return _conv3x3_op(x.contiguous(memory_format=torch.channels_last), None, w, b, 1)
    return F.conv2d(x, w, b, 1, 1).relu_()


class ZeroDCETrunk(torch.autograd.Function):
    """``trunk(x)`` of Zero-DCE before tanh: x (B, 3, H, W) and the 14 parameters ``e_conv1.weight``,
    ``e_conv1.bias``, ..., ``e_conv7.bias`` in that order; returns conv7's output (B, 24, H, W).

    On the CPU (:func:`_winograd_ok`) the layers run on ``conv3x3_nhwc`` (Winograd F(4x4, 3x3), the
    skip layers' two inputs read in place, ReLU in the kernel) with channels-last activations, and so
    do their input gradients in the backward (the same op with flipped weights), the weight and bias
    gradients on ``conv3x3_nhwc_weight_grad``. The output is NCHW, as elsewhere."""

    @staticmethod
    def forward(ctx, x, *params):
        weights, biases = params[0::2], params[1::2]
        winograd = _winograd_ok(x, params)
        acts = [x, _first_layer(x, weights[0], biases[0], winograd)]
        for k in range(1, 7):
            src, w, b = _INPUTS[k], weights[k], biases[k]
            if winograd:
                y = _conv3x3_op(acts[src[0]], acts[src[1]] if len(src) > 1 else None, w, b, int(k < 6))
            else:
                y = _conv([acts[i] for i in src], w, b)
                y = y.relu_() if k < 6 else y
            acts.append(y)
        out = acts.pop()
        if winograd:
            out = out.contiguous()
        ctx.winograd = winograd
        ctx.save_for_backward(x, *params)
        # intermediates (neither inputs nor outputs), freed one by one in backward; a1 is not kept
        # (its 3-channel convolution is cheap to redo, and the backward needs it only at the end)
        ctx.acts = [None] + acts[2:]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        acts = [x] + _take_acts(ctx)
        needs = ctx.needs_input_grad
        winograd = ctx.winograd
        if winograd:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)

        def part_backward(k, j, g, a, need_in, acc):
            n = len(_INPUTS[k])
            w = _split(params[2 * k], n)[j]
            need_w = needs[1 + 2 * k]
            need_b = j == n - 1 and needs[2 + 2 * k]  # the bias once, with the direct part
            gin, gw, gb = _conv3x3_backward(g, a, w, need_in, need_w, need_b, acc, winograd)
            out = {}
            if need_w:
                out[2 * k] = (gw, 1)
            if need_b:
                out[2 * k + 1] = (gb, None)
            return gin, out

        def recompute(i):
            assert i == 1
            return _first_layer(x, params[0], params[1], winograd)

        return _backward(acts, grad_out, needs, len(params), part_backward, recompute)


# ---- Zero-DCE++: depthwise 3x3 + pointwise 1x1 ---------------------------------------------------


def _depthwise(a, w, b):
    return F.conv2d(a, w, b, 1, 1, 1, a.shape[1])


def _separable(inputs, wd, bd, wp, bp):
    """point_conv(depth_conv(cat(inputs))) as a sum over the parts (depthwise: per channel)."""
    n = len(inputs)
    wds, bds, wps = wd.chunk(n, 0), bd.chunk(n, 0), _split(wp, n)
    y = None
    for j, a in enumerate(inputs):
        t = F.conv2d(_depthwise(a, wds[j], bds[j]), wps[j], bp if j == 0 else None)
        y = t if y is None else y.add_(t)
    return y


class DepthwiseSeparableTrunk(torch.autograd.Function):
    """``trunk(x)`` of Zero-DCE++ before tanh: x (B, 3, h, w) and the 28 parameters
    ``e_conv1.depth_conv.weight``, ``.depth_conv.bias``, ``.point_conv.weight``, ``.point_conv.bias``,
    ..., layer by layer; returns conv7's output (B, 3, h, w)."""

    @staticmethod
    def forward(ctx, x, *params):
        acts = [x]
        for k, src in enumerate(_INPUTS):
            y = _separable([acts[i] for i in src], *params[4 * k: 4 * k + 4])
            acts.append(y.relu_() if k < 6 else y)
        out = acts.pop()
        ctx.save_for_backward(x, *params)
        ctx.acts = [None] + acts[2:]  # as ZeroDCETrunk: a1 is recomputed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        acts = [x] + _take_acts(ctx)
        needs = ctx.needs_input_grad

        def part_backward(k, j, g, a, need_in, acc):
            n = len(_INPUTS[k])
            wd, bd, wp = params[4 * k].chunk(n, 0)[j], params[4 * k + 1].chunk(n, 0)[j], _split(params[4 * k + 2], n)[j]
            nwd, nbd, nwp = needs[1 + 4 * k: 4 + 4 * k]
            nbp = j == n - 1 and needs[4 + 4 * k]
            d = _depthwise(a, wd, bd)  # recomputed: not kept from the forward
            gd, gwp, gbp = _conv_backward(g, d, wp, [wp.shape[0]] if nbp else None,
                                          [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, nwp, nbp])
            del d
            gin, gwd, gbd = _conv_backward(gd, a, wd, [wd.shape[0]] if nbd else None,
                                           [1, 1], [1, 1], [1, 1], False, [0, 0], a.shape[1], [need_in, nwd, nbd])
            if acc is not None and gin is not None:
                gin = acc.add_(gin)
            out = {}
            for idx, grad, need, dim in ((0, gwd, nwd, 0), (1, gbd, nbd, 0), (2, gwp, nwp, 1), (3, gbp, nbp, None)):
                if need:
                    out[4 * k + idx] = (grad, dim)
            return gin, out

        def recompute(i):
            assert i == 1
            return _separable([x], *params[0:4]).relu_()

        return _backward(acts, grad_out, needs, len(params), part_backward, recompute)


# ---- entry points for the models -----------------------------------------------------------------


def _layer_params(m, separable: bool) -> list[torch.Tensor]:
    params = []
    for k in range(1, 8):
        layer = getattr(m, f"e_conv{k}")
        convs = (layer.depth_conv, layer.point_conv) if separable else (layer,)
        for c in convs:
            params += [c.weight, c.bias]
    return params


def split_trunk(m, x: torch.Tensor, separable: bool = False) -> torch.Tensor:
    """The trunk (before tanh) as autograd over the split convolutions: no concatenations."""
    p = _layer_params(m, separable)
    per = 4 if separable else 2
    acts = [x]
    for k, src in enumerate(_INPUTS):
        inputs = [acts[i] for i in src]
        lp = p[per * k: per * k + per]
        y = _separable(inputs, *lp) if separable else _conv(inputs, *lp)
        acts.append(F.relu(y, inplace=True) if k < 6 else y)
    return acts[-1]


def zerodce_curve_maps(m, x: torch.Tensor) -> torch.Tensor:
    """Zero-DCE's tanh-bounded 24-channel map r for training (gradients recorded)."""
    if _is_plain(x):
        return ZeroDCETrunk.apply(x, *_layer_params(m, False)).tanh_()
    return torch.tanh(split_trunk(m, x))


def zerodcepp_trunk(m, x: torch.Tensor) -> torch.Tensor:
    """Zero-DCE++'s trunk output (before tanh) for training (gradients recorded)."""
    if _is_plain(x):
        return DepthwiseSeparableTrunk.apply(x, *_layer_params(m, True))
    return split_trunk(m, x, separable=True)
