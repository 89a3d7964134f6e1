"""The training forward of the Zero-DCE / Zero-DCE++ trunk with less memory (and fresh memory) than
autograd over the plain trunk (``_common.dce_trunk``), and the same values and gradients.

- No concatenations: layers 5-7 read ``cat([a, b])``; a convolution over a concatenation is the sum of
  convolutions over its parts with the weight split along the input channels. The split is a slice of
  the parameter at run time (``e_conv5.weight[:, :32]``), so parameter names and shapes stay those of
  the original checkpoints.
- :class:`ZeroDCETrunk` (Zero-DCE): one autograd node for the seven convolutions, the ReLUs and tanh.
  It keeps for backward only the image, the six ReLU outputs (each is the input of a later convolution,
  and its sign is the ReLU's mask) and the tanh output r (which the curve and L_TV hold anyway); the
  backward frees each activation as soon as it is used, applies the ReLU masks in place and computes
  each convolution's input and weight gradients in one call.
- :class:`DepthwiseSeparableTrunk` (Zero-DCE++): the same for depthwise + pointwise layers; the
  depthwise outputs are not kept but recomputed in the backward (a depthwise 3x3 convolution costs 9
  multiply-adds per value, the pointwise one 32 or 64).

Used by the models' ``forward`` when ``fused=True`` and gradients are recorded; ``fused=False`` keeps
the plain trunk, the reference these are tested against. Under autocast or torch.compile the models
use :func:`split_trunk` (autograd over the split convolutions: no concatenations, autocast's casts
and the compiler's own memory planning apply).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_conv_backward = torch.ops.aten.convolution_backward
_relu_backward_ = torch.ops.aten.threshold_backward.grad_input  # out= the gradient itself: in place

# (layer, the earlier layers whose outputs it reads; 0 = the image). Layers 5-7 read two.
_INPUTS = ((0,), (1,), (2,), (3,), (3, 4), (2, 5), (1, 6))


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


def _backward(acts, grad_out, needs, n_params, part_backward):
    """The trunk's backward, shared by both models. acts: [x, x1..x6] (freed here as they are used);
    grad_out: the gradient of layer 7's output; needs: ctx.needs_input_grad; part_backward(k, j, g, a,
    need_in) -> (grad of the part's input or None, {parameter index: (grad, cat dim or None)}) for
    part j of layer k (0-based) with output gradient g. Returns the gradients of (x, *params).

    Order, for the least memory at once: each layer's parts from the last (the previous layer's output)
    to the first; an activation is masked into its layer's output gradient, and freed, as soon as its
    last consumer is done. The skip part of layer 7 (reading x1) waits until x1's gradient is needed:
    its output gradient is held by the autograd engine until this backward returns anyway, while the
    x1 gradient it makes would be held through the whole backward."""
    per = n_params // 7
    grad_act = [None] * 7
    pieces: dict[int, list] = {}
    deferred = {}

    def run(k, j, g):
        i = _INPUTS[k][j]
        need_in = i > 0 or needs[0]
        gin, pgrads = part_backward(k, j, g, acts[i], need_in)
        for idx, (grad, dim) in pgrads.items():
            pieces.setdefault(idx, []).append((j, grad, dim))
        if gin is not None:
            grad_act[i] = gin if grad_act[i] is None else grad_act[i].add_(gin)

    g = grad_out
    for k in range(6, -1, -1):
        src = _INPUTS[k]
        for j in range(len(src) - 1, -1, -1):
            if k == 6 and j < len(src) - 1:
                deferred[src[j]] = (k, j)
                continue
            run(k, j, g)
        g = None
        if k in deferred:
            kk, jj = deferred.pop(k)
            run(kk, jj, grad_out)
        if k == 0:
            break
        g = _relu_mask_(grad_act[k], acts[k])
        grad_act[k] = None
        acts[k] = None  # its last consumer is done
    grads = [grad_act[0]] + [None] * n_params
    for idx, ps in pieces.items():
        ps.sort(key=lambda p: p[0])
        dim = ps[0][2]
        grads[1 + idx] = ps[0][1] if dim is None or len(ps) == 1 else torch.cat([p[1] for p in ps], dim)
    assert len(grads) == 1 + 7 * per
    return tuple(grads)


class ZeroDCETrunk(torch.autograd.Function):
    """``trunk(x)`` of Zero-DCE before tanh: x (B, 3, H, W) and the 14 parameters ``e_conv1.weight``,
    ``e_conv1.bias``, ..., ``e_conv7.bias`` in that order; returns conv7's output (B, 24, H, W)."""

    @staticmethod
    def forward(ctx, x, *params):
        weights, biases = params[0::2], params[1::2]
        acts = [x]
        for k, (src, w, b) in enumerate(zip(_INPUTS, weights, biases)):
            y = _conv([acts[i] for i in src], w, b)
            acts.append(y.relu_() if k < 6 else y)
        out = acts.pop()
        ctx.save_for_backward(x, *params)
        ctx.acts = acts[1:]  # intermediates (neither inputs nor outputs): freed one by one in backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        acts = [x] + ctx.acts
        del ctx.acts
        needs = ctx.needs_input_grad

        def part_backward(k, j, g, a, need_in):
            n = len(_INPUTS[k])
            w = _split(params[2 * k], n)[j]
            need_w = needs[1 + 2 * k]
            need_b = j == n - 1 and needs[2 + 2 * k]  # the bias once, with the part done first
            gin, gw, gb = _conv_backward(g, a, w, [w.shape[0]] if need_b else None,
                                         [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_in, need_w, need_b])
            out = {}
            if need_w:
                out[2 * k] = (gw, 1)
            if need_b:
                out[2 * k + 1] = (gb, None)
            return gin, out

        return _backward(acts, grad_out, needs, len(params), part_backward)


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
        ctx.acts = acts[1:]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        acts = [x] + ctx.acts
        del ctx.acts
        needs = ctx.needs_input_grad

        def part_backward(k, j, g, a, need_in):
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
            out = {}
            for idx, grad, need, dim in ((0, gwd, nwd, 0), (1, gbd, nbd, 0), (2, gwp, nwp, 1), (3, gbp, nbp, None)):
                if need:
                    out[4 * k + idx] = (grad, dim)
            return gin, out

        return _backward(acts, grad_out, needs, len(params), part_backward)


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
