"""What every model shares: subnormal flushing, input checks, the fused/reference curve choice."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_fast import _validate


@torch.no_grad()
def flush_subnormal_(module: nn.Module) -> int:
    """Set every subnormal floating parameter and buffer of ``module`` to zero, in place.

    Some x86 CPUs run convolutions many times slower on subnormal operands (benchmarks/RESULTS.md says
    what we measured); a subnormal weight contributes below float32's resolution, so flushing does not
    change the output in practice. Returns how many values were flushed.
    """
    flushed = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if not t.is_floating_point():
            continue
        tiny = torch.finfo(t.dtype).tiny
        mask = (t.abs() < tiny) & (t != 0)
        n = int(mask.sum())
        if n:
            t.masked_fill_(mask, 0)
            flushed += n
    return flushed


def _flush_after_load(module: nn.Module, incompatible_keys) -> None:
    flush_subnormal_(module)


class EnhancementModel(nn.Module):
    """Base of the models: flushes subnormal weights whenever a state_dict is loaded, checks inputs.

    ``check_range``: whether ``forward`` and ``enhance_image`` check that the input lies in [0, 1]. The
    check costs an extra read of the input and, on a GPU, a device synchronisation, so the loops that
    know their data is in range turn it off: ``lowlight_fast.train`` and the benchmarks (images from
    ``lowlight_fast.io``), ``lowlight_fast.enhance`` (it checks each whole image once, not each tile)
    and the compat classes (the originals do not check). The shape, dtype and device checks always run.
    """

    check_range: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_flush_after_load)

    def _check_input(self, x: torch.Tensor, name: str = "x") -> None:
        _validate.check_image(x, name, channels=3)
        if self.check_range:
            _validate.check_unit_range(x, name)
        for p in self.parameters():
            if p.device != x.device:
                raise ValueError(f"{name} is on {x.device} but the model's weights are on {p.device}; "
                                 f"move one of them (model.to({str(x.device)!r}) or {name}.to({str(p.device)!r}))")
            if p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
                raise TypeError(f"{name} has dtype {x.dtype} but the model's weights are {p.dtype}; "
                                f"convert one of them (model.to({x.dtype}) or {name}.to({p.dtype}))")
            break

    def enhance_image(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


def init_conv_normal_(module: nn.Module, std: float = 0.02) -> None:
    """Conv weights ~ N(0, std), as the originals initialise them (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)


def curve_ops(fused: bool):
    """The module providing ``le_curve`` / ``le_curve_shared``: the fused op or the reference."""
    if fused:
        from lowlight_fast.ops import le_curve as ops
    else:
        from lowlight_fast.reference import curve as ops
    return ops


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """The memory layout the convolutions of an inference run fastest in: channels-last on the CPU
    (oneDNN's NHWC kernels: 1.1-2.5x faster inference, benchmarks/RESULTS.md); elsewhere as it is.
    Only the layout changes; the values, and the curve ops, which take any strides, do not."""
    if x.device.type != "cpu" or x.dim() != 4:  # other ranks: left to the model's input check to name
        return x
    return x.contiguous(memory_format=torch.channels_last)


def dce_trunk_winograd(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`dce_trunk` for inference without gradients, on the CPU: layers 2-7 (32 and 64 input
    channels) by :func:`lowlight_fast.ops.conv3x3.conv3x3` (Winograd F(4x4, 3x3); the skip layers'
    concatenations read in place; ReLU, and layer 7's tanh, applied as each result is written);
    layer 1 by the same op, which sums directly for its 3 input channels (Winograd does not pay
    there; as fast as oneDNN's, and its output, like every big output of the op, comes from the
    output pool). Returns the curve maps, tanh(:func:`dce_trunk`), up to float32 rounding
    (benchmarks/RESULTS.md)."""
    from lowlight_fast.ops.conv3x3 import conv3x3

    def layer(conv, a, b=None, activation="relu"):
        return conv3x3(a, conv.weight, conv.bias, x2=b, activation=activation)

    x1 = layer(m.e_conv1, inference_layout(x))
    x2 = layer(m.e_conv2, x1)
    x3 = layer(m.e_conv3, x2)
    x4 = layer(m.e_conv4, x3)
    x5 = layer(m.e_conv5, x3, x4)
    del x4
    x6 = layer(m.e_conv6, x2, x5)
    del x2, x5
    return layer(m.e_conv7, x1, x6, activation="tanh")


def dce_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trunk shared by Zero-DCE and Zero-DCE++: ``m.e_conv1`` .. ``m.e_conv7`` with ReLU after 1..6
    and the skips conv5(cat(x3, x4)), conv6(cat(x2, x5)), conv7(cat(x1, x6)); returns conv7's output
    (before tanh)."""
    x1 = F.relu(m.e_conv1(x), inplace=True)  # in place, as the original's ReLU(inplace=True)
    x2 = F.relu(m.e_conv2(x1), inplace=True)
    x3 = F.relu(m.e_conv3(x2), inplace=True)
    x4 = F.relu(m.e_conv4(x3), inplace=True)
    x5 = F.relu(m.e_conv5(torch.cat([x3, x4], 1)), inplace=True)
    x6 = F.relu(m.e_conv6(torch.cat([x2, x5], 1)), inplace=True)
    return m.e_conv7(torch.cat([x1, x6], 1))
