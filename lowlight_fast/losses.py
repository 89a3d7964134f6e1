"""nn.Module losses of Zero-DCE, Zero-DCE++ and SCI, with the original class names and call signatures
(plus descriptive names), on top of the fused ops. Device-agnostic: nothing here calls ``.cuda()``."""
from __future__ import annotations

import torch
from torch import nn

# ======================================================================================
# Zero-DCE / Zero-DCE++ losses: L_color, L_spa, L_exp, L_TV, Sa_Loss, ZeroDCELoss, ZeroDCEPPLoss
# ======================================================================================


# ======================================================================================
# SCI losses: SmoothLoss, LossFunction, SCILoss
# ======================================================================================
from lowlight_fast.ops.smooth_loss import smooth_loss as _smooth_loss  # noqa: E402


class SmoothLoss(nn.Module):
    """SCI's 24-direction edge-aware smoothness loss; ``forward(input, output)`` with ``input`` the image
    and ``output`` the illumination, both (B, 3, H, W). Runs the fused ``smooth_loss`` op.

    ``sigma`` (10 in the original) scales the edge weights; ``ycbcr="faithful"`` (default) keeps the
    original's memory-layout YCbCr conversion, ``"per_pixel"`` converts each pixel properly.
    """

    def __init__(self, sigma: float = 10.0, ycbcr: str = "faithful"):
        super().__init__()
        self.sigma = sigma
        self.ycbcr = ycbcr

    def forward(self, input: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return _smooth_loss(input, output, sigma=self.sigma, ycbcr=self.ycbcr)


class LossFunction(nn.Module):
    """SCI's training loss of one stage: ``forward(input, illu) = 1.5 * MSE(illu, input) +
    SmoothLoss(input, illu)``."""

    def __init__(self, sigma: float = 10.0, ycbcr: str = "faithful"):
        super().__init__()
        self.l2_loss = nn.MSELoss()
        self.smooth_loss = SmoothLoss(sigma=sigma, ycbcr=ycbcr)

    def forward(self, input: torch.Tensor, illu: torch.Tensor) -> torch.Tensor:
        fidelity_loss = self.l2_loss(illu, input)
        smooth_loss = self.smooth_loss(input, illu)
        return 1.5 * fidelity_loss + smooth_loss


EdgeAwareSmoothLoss = SmoothLoss
SCILoss = LossFunction
