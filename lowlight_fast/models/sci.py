"""SCI (Self-Calibrated Illumination, Ma et al., CVPR 2022; the authors' code is MIT-licensed).

``SCINetwork`` is the training ``Network`` (illumination estimator + self-calibration module, weights
shared across stages); ``SCIFinetune`` is the inference ``Finetunemodel`` (the estimator only).

State-dict aliases: a block module appended ``layers`` times to ``blocks`` appears under two names
(``enhance.conv.*`` == ``enhance.blocks.0.*``, ``calibrate.convs.*`` == ``calibrate.blocks.{0,1,2}.*``).
``state_dict()`` writes both sets, as the original does; loading accepts either set (the missing
aliases are filled from the present ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_fast.models._common import EnhancementModel, inference_layout


def _alias_pre_hook(shared: str, layers: int):
    """A load_state_dict pre-hook filling ``<shared>.*`` and ``blocks.<i>.*`` from whichever is present."""

    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        names = [f"{prefix}{shared}."] + [f"{prefix}blocks.{i}." for i in range(layers)]
        for src in names:
            for key in [k for k in state_dict if k.startswith(src)]:
                suffix = key[len(src):]
                for dst in names:
                    state_dict.setdefault(dst + suffix, state_dict[key])

    return hook


class EnhanceNetwork(nn.Module):
    """Illumination estimator: in_conv + ReLU, one conv-BN-ReLU block applied ``layers`` times
    residually (shared weights), out_conv + Sigmoid; illumination = clamp(out + input, 1e-4, 1)."""

    def __init__(self, layers: int = 1, channels: int = 3) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList([self.conv for _ in range(layers)])
        self.out_conv = nn.Sequential(nn.Conv2d(channels, 3, 3, 1, 1), nn.Sigmoid())
        self._register_load_state_dict_pre_hook(_alias_pre_hook("conv", layers))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fea = self.in_conv(input)
        for block in self.blocks:
            fea = fea + block(fea)
        return torch.clamp(self.out_conv(fea) + input, 0.0001, 1)


class CalibrateNetwork(nn.Module):
    """Self-calibration: in_conv + BN + ReLU, a shared [conv, BN, ReLU] x 2 block applied ``layers``
    times residually, out_conv + Sigmoid; returns input - out."""

    def __init__(self, layers: int = 3, channels: int = 16) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU())
        self.convs = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(),
        )
        self.blocks = nn.ModuleList([self.convs for _ in range(layers)])
        self.out_conv = nn.Sequential(nn.Conv2d(channels, 3, 3, 1, 1), nn.Sigmoid())
        self._register_load_state_dict_pre_hook(_alias_pre_hook("convs", layers))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fea = self.in_conv(input)
        for block in self.blocks:
            fea = fea + block(fea)
        return input - self.out_conv(fea)


def weights_init_(module: nn.Module) -> None:
    """SCI's init: conv weights N(0, 0.02), conv bias 0, BatchNorm weight N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)


class SCINetwork(EnhancementModel):
    """SCI's training ``Network(stage)``. ``forward(x)`` returns (illuminations, reflectances,
    stage inputs, |attention|), one entry per stage; ``_loss(x)`` the training loss."""

    def __init__(self, stage: int = 3) -> None:
        super().__init__()
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 1:
            raise ValueError(f"stage: expected a positive integer, got {stage!r}")
        self.stage = stage
        self.enhance = EnhanceNetwork(layers=1, channels=3)
        self.calibrate = CalibrateNetwork(layers=3, channels=16)
        self._criterion = None
        weights_init_(self)

    def weights_init(self, m: nn.Module) -> None:
        """The original's per-module init, for ``module.apply(model.weights_init)``."""
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            weights_init_(m)

    def forward(self, input: torch.Tensor):
        self._check_input(input, "input")
        ilist, rlist, inlist, attlist = [], [], [], []
        input_op = input
        for _ in range(self.stage):
            inlist.append(input_op)
            i = self.enhance(input_op)
            r = torch.clamp(input / i, 0, 1)
            att = self.calibrate(r)
            input_op = input + att
            ilist.append(i)
            rlist.append(r)
            attlist.append(torch.abs(att))
        return ilist, rlist, inlist, attlist

    def _loss(self, input: torch.Tensor) -> torch.Tensor:
        """Sum over stages of LossFunction(stage input, illumination) (1.5 MSE + SmoothLoss).

        The same value, gradients and BatchNorm statistics as the criterion over ``forward``'s lists,
        faster and with less memory: on the CPU the convolutions and BatchNorms run channels-last (the
        input converted once; the illumination and stage input handed to the loss in NCHW, the layout
        its ops read); each BatchNorm + ReLU runs as one op in training on the CPU
        (``lowlight_fast.ops.batch_norm_relu``: float64 sums, closer to a float64 run than ATen's
        channels-last batch norm), the 16-to-16 and the 3-output-channel convolutions take their
        weight gradients from ``conv3x3_nhwc_weight_grad``; other ReLUs and Sigmoids run in place on
        the convolution or BatchNorm output they follow (whose backward does not read it), and each
        residual sum in place on its block's fused BatchNorm + ReLU output; the last stage's
        self-calibration (whose output no loss term reads) runs without recording gradients and without its out_conv, for its BatchNorm running
        statistics only; nothing is kept for the reflectances and attention maps that the loss does
        not use. Forward hooks on the ReLU, Sigmoid and fused BatchNorm modules are not called on this path."""
        if self._criterion is None:
            from lowlight_fast.losses import LossFunction

            self._criterion = LossFunction()
        self._check_input(input, "input")
        x = _training_layout(input)
        loss = 0
        input_op = x
        for k in range(self.stage):
            i = _enhance_forward(self.enhance, input_op)
            loss = loss + self._criterion(input if k == 0 else input_op.contiguous(), i.contiguous())
            last = k == self.stage - 1
            if last:
                if any(m.training for m in self.calibrate.modules()):
                    with torch.no_grad():  # only the BatchNorm running statistics are left to update
                        _calibrate_features(self.calibrate, torch.clamp(x / i, 0, 1))
                break
            input_op = x + _calibrate_forward(self.calibrate, torch.clamp(x / i, 0, 1))
        return loss

    @torch.no_grad()
    def enhance_image(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 0's reflectance, without gradients (convolutions channels-last on the CPU)."""
        return self.forward(inference_layout(x))[1][0].contiguous()


class SCIFinetune(EnhancementModel):
    """SCI's inference ``Finetunemodel``: the illumination estimator; ``forward(x)`` returns
    ``(illumination, reflectance)`` with reflectance = clamp(x / illumination, 0, 1), the enhanced
    image. Equals stage 0 of :class:`SCINetwork`. ``weights`` (optional): a checkpoint path or
    state_dict, of this model or of a whole SCINetwork (its ``calibrate.*`` keys are ignored, as the
    original does)."""

    def __init__(self, weights=None) -> None:
        super().__init__()
        self.enhance = EnhanceNetwork(layers=1, channels=3)
        weights_init_(self)
        self._register_load_state_dict_pre_hook(_drop_calibrate)
        if weights is not None:
            from lowlight_fast.models.checkpoint import load_weights

            load_weights(self, weights)

    def forward(self, input: torch.Tensor):
        self._check_input(input, "input")
        i = self.enhance(input)
        return i, torch.clamp(input / i, 0, 1)

    @torch.no_grad()
    def enhance_image(self, x: torch.Tensor) -> torch.Tensor:
        """The reflectance (the enhanced image), without gradients (convolutions channels-last on the
        CPU: 1.3-2x faster at 1080p)."""
        return self.forward(inference_layout(x))[1].contiguous()


def _drop_calibrate(state_dict, prefix, *args):
    for key in [k for k in state_dict if k.startswith(prefix + "calibrate.")]:
        del state_dict[key]


def _training_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last on the CPU (oneDNN's NHWC convolutions, forward and backward, skip the reorders
    to and from its blocked layout that NCHW costs per convolution); elsewhere as it is."""
    return inference_layout(x)


class _ConvWeightGradNHWC(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` (oneDNN, channels-last) whose backward takes the weight
    and bias gradients from ``conv3x3_nhwc_weight_grad`` (direct channels-last sums) and only the input
    gradient from oneDNN: oneDNN's channels-last weight gradient is the slowest part of the backward of
    SCI's 16-to-16 and 16- or 3-to-3 channel layers, most of all on AVX2 (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_w, grad_b = torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad(grad, x, None)
        return grad_x, grad_w, grad_b if ctx.has_bias else None


def _conv(m: nn.Conv2d, fea: torch.Tensor) -> torch.Tensor:
    """``m(fea)``; in training on the CPU, for a 3x3 layer of at least 16 input and 16 output channels,
    or of at most 4 output channels, on a channels-last input, through :class:`_ConvWeightGradNHWC`
    (for 3 input and 16 output channels oneDNN's weight gradient is faster: benchmarks/RESULTS.md)."""
    from lowlight_fast.ops import conv3x3

    plain = (m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) and m.dilation == (1, 1)
             and m.groups == 1 and m.padding_mode == "zeros")
    ours_faster = (m.in_channels >= 16 and m.out_channels >= 16) or m.out_channels <= 4
    if (plain and ours_faster and torch.is_grad_enabled()
            and fea.is_contiguous(memory_format=torch.channels_last)
            and conv3x3._compiled_ok(fea, None, m.weight, m.bias)):
        return _ConvWeightGradNHWC.apply(fea, m.weight, m.bias)
    return m(fea)


def _run(seq: nn.Sequential, fea: torch.Tensor) -> torch.Tensor:
    """``seq(fea)`` with each BatchNorm2d followed by a ReLU as one fused op where it runs
    (:func:`lowlight_fast.ops.batch_norm_relu.batch_norm_relu_module`: batch statistics on the CPU; it
    keeps the module's running statistics and counter), and each other ReLU / Sigmoid that follows a
    Conv2d or BatchNorm2d applied in place: their backward reads only their output, so overwriting
    their input is safe for autograd (one full-size buffer fewer per activation)."""
    from lowlight_fast.ops.batch_norm_relu import batch_norm_relu_module

    modules = list(seq)
    prev, fused = None, False
    for k, m in enumerate(modules):
        if fused:  # this ReLU ran with the BatchNorm before it
            prev, fused = m, False
            continue
        if type(m) is nn.BatchNorm2d and k + 1 < len(modules) and type(modules[k + 1]) is nn.ReLU:
            fea, fused = batch_norm_relu_module(m, fea), True
        elif type(m) is nn.Conv2d:
            fea = _conv(m, fea)
        elif type(m) is nn.ReLU and isinstance(prev, (nn.Conv2d, nn.BatchNorm2d)):
            fea = torch.relu_(fea)
        elif type(m) is nn.Sigmoid and isinstance(prev, (nn.Conv2d, nn.BatchNorm2d)):
            fea = torch.sigmoid_(fea)
        else:
            fea = m(fea)
        prev = m
    return fea


def _residual(block: nn.Sequential, fea: torch.Tensor) -> torch.Tensor:
    """``fea + block(fea)`` through :func:`_run`; the sum written over the block's output when that
    output came from the fused BatchNorm + ReLU (which no autograd node keeps) or gradients are off:
    one image-sized buffer fewer per residual."""
    from lowlight_fast.ops.batch_norm_relu import fuses

    modules = list(block)
    owned = not torch.is_grad_enabled()
    if not owned and len(modules) >= 2 and type(modules[-2]) is nn.BatchNorm2d and type(modules[-1]) is nn.ReLU:
        owned = fuses(modules[-2], fea)  # the BatchNorm's input has fea's layout, dtype and device
    out = _run(block, fea)
    owned = (owned and out.shape == fea.shape and out.dtype == fea.dtype and not out._is_view()
             and out.untyped_storage().data_ptr() != fea.untyped_storage().data_ptr())
    return out.add_(fea) if owned else fea + out


def _enhance_forward(m: EnhanceNetwork, input: torch.Tensor) -> torch.Tensor:
    """``EnhanceNetwork.forward`` through :func:`_run`."""
    fea = _run(m.in_conv, input)
    for block in m.blocks:
        fea = _residual(block, fea)
    return torch.clamp(_run(m.out_conv, fea) + input, 0.0001, 1)


def _calibrate_features(m: CalibrateNetwork, input: torch.Tensor) -> torch.Tensor:
    """``CalibrateNetwork``'s features before out_conv, through :func:`_run`."""
    fea = _run(m.in_conv, input)
    for block in m.blocks:
        fea = _residual(block, fea)
    return fea


def _calibrate_forward(m: CalibrateNetwork, input: torch.Tensor) -> torch.Tensor:
    """``CalibrateNetwork.forward`` through :func:`_run`."""
    return input - _run(m.out_conv, _calibrate_features(m, input))
