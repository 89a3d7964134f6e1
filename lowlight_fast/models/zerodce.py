"""Zero-DCE (``enhance_net_nopool``): seven 3x3 convs predict 8 curve maps; 79,416 parameters.

Parameter names are those of the original checkpoints (``e_conv1`` .. ``e_conv7``), so the authors'
``.pth`` files load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from lowlight_fast.models._common import (
    EnhancementModel,
    curve_ops,
    dce_trunk,
    dce_trunk_winograd,
    inference_layout,
    init_conv_normal_,
)
from lowlight_fast.models import lean_trunk


class ZeroDCE(EnhancementModel):
    """Zero-DCE. ``forward(x)`` returns ``(image_after_4_steps, image_after_8_steps, r)`` like the original.

    ``fused=True`` applies the 8 curve steps with the fused op (one pass, recomputing backward) and,
    when gradients are recorded, runs the trunk as one lean autograd node
    (:mod:`lowlight_fast.models.lean_trunk`: no concatenations, five ReLU outputs kept);
    ``fused=False`` runs the plain-PyTorch reference (curve and trunk).
    """

    # tiles of enhance_tiled start at multiples of this: the Winograd trunk's 4x4 output tiles then
    # fall on the same pixels as in the whole image (lowlight_fast.tiling)
    tile_alignment = 4

    def __init__(self, fused: bool = True) -> None:
        super().__init__()
        nf = 32
        self.fused = fused
        self.e_conv1 = nn.Conv2d(3, nf, 3, 1, 1, bias=True)
        self.e_conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.e_conv3 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.e_conv4 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.e_conv5 = nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=True)
        self.e_conv6 = nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=True)
        self.e_conv7 = nn.Conv2d(nf * 2, 24, 3, 1, 1, bias=True)
        init_conv_normal_(self)

    def curve_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The 24-channel curve-parameter map r (8 maps of 3 channels), tanh-bounded."""
        return torch.tanh(dce_trunk(self, x))

    def forward(self, x: torch.Tensor):
        self._check_input(x)
        if self.fused and torch.is_grad_enabled():
            r = lean_trunk.zerodce_curve_maps(self, x)
        else:
            r = self.curve_maps(x)
        enhanced_4, enhanced_8 = curve_ops(self.fused).le_curve(x, r)
        return enhanced_4, enhanced_8, r

    @torch.no_grad()
    def inference_curve_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``curve_maps(x)`` without gradients, as ``enhance_image`` computes it: on the CPU (float32 or
        float64, ``fused``) by the Winograd trunk (``dce_trunk_winograd``), else convolutions
        channels-last on the CPU."""
        if self.fused and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            return dce_trunk_winograd(self, x)
        return dce_trunk(self, inference_layout(x)).tanh_()  # no_grad: conv7's output is ours

    @torch.no_grad()
    def enhance_image(self, x: torch.Tensor) -> torch.Tensor:
        """The enhanced image (after 8 steps), without gradients (curve maps: ``inference_curve_maps``)."""
        self._check_input(x)
        return curve_ops(self.fused).le_curve(x, self.inference_curve_maps(x))[1]
