"""nn.Module losses of Zero-DCE, Zero-DCE++ and SCI, with the original class names and call signatures
(plus descriptive names), on top of the fused ops. Device-agnostic: nothing here calls ``.cuda()``."""
from __future__ import annotations

import torch
from torch import nn

# ======================================================================================
# Zero-DCE / Zero-DCE++ losses: L_color, L_spa, L_exp, L_TV, Sa_Loss, ZeroDCELoss, ZeroDCEPPLoss
# ======================================================================================

from lowlight_fast.ops import zerodce_losses as _zerodce_ops  # noqa: E402
from lowlight_fast.ops.tv_loss import tv_loss as _tv_loss  # noqa: E402
from lowlight_fast.reference import zerodce_losses as _zerodce_ref  # noqa: E402


class ColorConstancyLoss(nn.Module):
    """Zero-DCE colour constancy ``L_color()(x)``: (B, 1, 1, 1), x (B, 3, H, W) in [0, 1]; fused (the
    channel means of one read of x, or of the pass that ``L_spa`` just made over the same image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _zerodce_ops.color_constancy(x)


class SpatialConsistencyLoss(nn.Module):
    """Zero-DCE spatial consistency ``L_spa()(org, enhance)``: (B, 1, H//4, W//4), fused. ``L_color`` and
    ``L_exp`` called next on ``org`` (the enhanced image, in the original script) reuse its pooled pass.

    Mind the original training script's order: it calls ``L_spa(enhanced_image, low_image)``.
    """

    def forward(self, org: torch.Tensor, enhance: torch.Tensor) -> torch.Tensor:
        return _zerodce_ops.spatial_consistency(org, enhance)


class ExposureLoss(nn.Module):
    """Zero-DCE exposure control ``L_exp(patch_size, mean_val)(x)``: a scalar; fused for patch sizes that
    are multiples of 4 (the original's 16), the reference otherwise.

    ``mean_val`` may also be given at call time (the Zero-DCE++ form ``L_exp(16)(x, 0.6)``).
    """

    def __init__(
        self, patch_size: int = _zerodce_ref.EXP_PATCH, mean_val: float | None = _zerodce_ref.EXP_MEAN
    ):
        super().__init__()
        self.patch_size = int(patch_size)
        self.mean_val = mean_val

    def forward(self, x: torch.Tensor, mean_val: float | None = None) -> torch.Tensor:
        mean_val = self.mean_val if mean_val is None else mean_val
        if mean_val is None:
            raise ValueError(
                "mean_val: give the target exposure (0.6 in Zero-DCE) at construction or call time"
            )
        return _zerodce_ops.exposure(x, self.patch_size, mean_val)


class IlluminationSmoothnessLoss(nn.Module):
    """Zero-DCE illumination smoothness ``L_TV(TVLoss_weight=1)(x)`` on curve maps: a scalar, fused."""

    def __init__(self, TVLoss_weight: float = 1.0):  # noqa: N803 (original name)
        super().__init__()
        self.TVLoss_weight = TVLoss_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _tv_loss(x, self.TVLoss_weight)


class SaturationLoss(nn.Module):
    """``Sa_Loss()(x)`` (defined but unused in Zero-DCE training): mean distance of each pixel from its
    image's channel means; a scalar; fused on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _zerodce_ops.saturation(x)


class ZeroDCELoss(nn.Module):
    """Zero-DCE training loss: 200 L_TV(A) + mean L_spa(enhanced, low) + 5 mean L_color(enhanced)
    + 10 L_exp(enhanced) with L_exp(16, 0.6).

    ``forward(low, enhanced, curve_maps)`` -> scalar total; with ``return_terms=True`` ->
    (total, {"tv", "spa", "col", "exp"}: the weighted terms, detached). ``fused=False`` runs the
    plain-PyTorch reference instead of the fused ops.
    """

    tv_weight = _zerodce_ref.ZERODCE_TV_WEIGHT

    def __init__(self, fused: bool = True):
        super().__init__()
        self.fused = fused

    def forward(
        self, low: torch.Tensor, enhanced: torch.Tensor, curve_maps: torch.Tensor, return_terms: bool = False
    ):
        if self.fused:
            terms = _zerodce_ops.zerodce_loss_terms(low, enhanced, curve_maps, self.tv_weight)
        else:
            _zerodce_ops.check_loss_inputs(low, enhanced, curve_maps, _zerodce_ref.EXP_PATCH)
            terms = _zerodce_ref.zerodce_loss_terms(low, enhanced, curve_maps, self.tv_weight)
        total = terms["tv"] + terms["spa"] + terms["col"] + terms["exp"]
        if return_terms:
            return total, {k: v.detach() for k, v in terms.items()}
        return total


class ZeroDCEPPLoss(ZeroDCELoss):
    """Zero-DCE++ training loss: as :class:`ZeroDCELoss` with 1600 L_TV on the 3-channel curve map."""

    tv_weight = _zerodce_ref.ZERODCEPP_TV_WEIGHT


# the original class names
L_color = ColorConstancyLoss
L_spa = SpatialConsistencyLoss
L_exp = ExposureLoss
L_TV = IlluminationSmoothnessLoss
Sa_Loss = SaturationLoss



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
