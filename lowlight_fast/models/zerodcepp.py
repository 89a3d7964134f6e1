"""Zero-DCE++ (``enhance_net_nopool(scale_factor)``): depthwise-separable convs on a downscaled image
predict one 3-channel curve map shared by the 8 steps; 10,561 parameters, original key names
(``e_convN.depth_conv`` / ``e_convN.point_conv``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowlight_fast.models import lean_trunk
from lowlight_fast.models._common import EnhancementModel, curve_ops, dce_trunk, inference_layout


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv then 1x1 pointwise conv, no activation between (the original ``CSDN_Tem``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depth_conv = nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch)
        self.point_conv = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


CSDN_Tem = DepthwiseSeparableConv  # the original class name


class ZeroDCEPlusPlus(EnhancementModel):
    """Zero-DCE++. ``forward(x)`` returns ``(enhanced_image, curve_map)`` like the original.

    ``scale_factor`` s: the map is predicted on the image downscaled by s (bilinear,
    align_corners=False) and upscaled back (bilinear, align_corners=True). The original needs H and W
    to be multiples of s; here any size works: the image is padded at the bottom and right by
    edge replication to the next multiple of s, enhanced, and cropped back (identical to the original
    when H and W are multiples of s).
    """

    def __init__(self, scale_factor: int = 1, fused: bool = True) -> None:
        super().__init__()
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
            raise ValueError(f"scale_factor: expected a positive integer, got {scale_factor!r}")
        nf = 32
        self.scale_factor = scale_factor
        self.fused = fused
        self.e_conv1 = DepthwiseSeparableConv(3, nf)
        self.e_conv2 = DepthwiseSeparableConv(nf, nf)
        self.e_conv3 = DepthwiseSeparableConv(nf, nf)
        self.e_conv4 = DepthwiseSeparableConv(nf, nf)
        self.e_conv5 = DepthwiseSeparableConv(nf * 2, nf)
        self.e_conv6 = DepthwiseSeparableConv(nf * 2, nf)
        self.e_conv7 = DepthwiseSeparableConv(nf * 2, 3)

    def curve_map(self, x: torch.Tensor, *, inference: bool = False) -> torch.Tensor:
        """The 3-channel curve map at the working resolution (H/s, W/s), tanh-bounded. ``inference``:
        the convolutions run channels-last on the CPU (2x faster at 1080p, scale factor 1). Training
        (``fused=True``, gradients recorded) runs the trunk as one lean autograd node
        (:mod:`lowlight_fast.models.lean_trunk`)."""
        s = self.scale_factor
        x_down = x if s == 1 else F.interpolate(x, scale_factor=1 / s, mode="bilinear")
        if inference:
            return torch.tanh(dce_trunk(self, inference_layout(x_down)))
        if getattr(self, "fused", False) and torch.is_grad_enabled():  # compat's originals have no ``fused``
            return torch.tanh(lean_trunk.zerodcepp_trunk(self, x_down))
        return torch.tanh(dce_trunk(self, x_down))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_factor
        h, w = x.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def forward(self, x: torch.Tensor):
        self._check_input(x)
        h, w = x.shape[-2:]
        xp = self._pad(x)
        a = self.curve_map(xp)
        full = a if self.scale_factor == 1 else F.interpolate(
            a, size=xp.shape[-2:], mode="bilinear", align_corners=True)
        enhanced = curve_ops(self.fused).le_curve_shared(xp, a)
        return enhanced[..., :h, :w], full[..., :h, :w]

    def _downscale_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``F.interpolate(self._pad(x), scale_factor=1/s, mode="bilinear")`` without the padded copy, to
        within one rounding.

        Downscaling by an integer s (align_corners=False) reads, per output pixel and axis, the source
        position s*j + (s-1)/2: one pixel for odd s (weights 1 and 0), the two pixels around it with
        weights 1/2 for even s; the padding replicates the last row and column, i.e. clamps the indices
        (only the last cell's can pass the edge). Those pixels are strided views of x, so only they are
        read. For even s the four are averaged as ((v00 + v01) + (v10 + v11)) / 4, which is aten's
        (v00/2 + v01/2)/2 + (v10/2 + v11/2)/2 (every product exact); aten sums them in another order
        for some sizes (one rounding apart)."""
        s = self.scale_factor
        h, w = x.shape[-2:]
        hp, wp = -(-h // s), -(-w // s)

        def pixels(row: int, col: int) -> torch.Tensor:  # x at (s*i + row, s*j + col), clamped
            v = x[..., row::s, col::s]
            if v.shape[-2] < hp:
                v = torch.cat([v, x[..., h - 1:, col::s]], dim=-2)
            if v.shape[-1] < wp:
                last = x[..., row::s, w - 1:]
                if last.shape[-2] < hp:
                    last = torch.cat([last, x[..., h - 1:, w - 1:]], dim=-2)
                v = torch.cat([v, last], dim=-1)
            return v

        c = (s - 1) // 2
        if s % 2:
            return pixels(c, c)
        return ((pixels(c, c) + pixels(c, c + 1)) + (pixels(c + 1, c) + pixels(c + 1, c + 1))) * 0.25

    def inference_map(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The curve map of an inference run and the pixel grid it covers (None: x's own size), for
        ``le_curve_shared(x, map, grid=grid)``. For sizes that are not multiples of the scale factor the
        padded image is never made: the map is predicted from its downscaled version gathered from x
        (:meth:`_downscale_padded`) and the curve kernel upsamples it onto the padded grid, of which it
        computes x's part."""
        s = self.scale_factor
        h, w = x.shape[-2:]
        if s == 1 or (h % s == 0 and w % s == 0):
            return self.curve_map(x, inference=True), None
        a = torch.tanh(dce_trunk(self, inference_layout(self._downscale_padded(x))))
        return a, (-(-h // s) * s, -(-w // s) * s)

    @torch.no_grad()
    def enhance_image(self, x: torch.Tensor) -> torch.Tensor:
        """The enhanced image, without gradients; the full-resolution map is never materialised
        on the fused path (the upsampling happens inside the curve kernel), nor the padded image
        (:meth:`inference_map`)."""
        self._check_input(x)
        a, grid = self.inference_map(x)
        return curve_ops(self.fused).le_curve_shared(x, a, grid=grid)
