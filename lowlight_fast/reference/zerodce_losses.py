"""Plain-PyTorch Zero-DCE / Zero-DCE++ losses, written from the papers' formulas.

These reproduce the original losses value for value (same pooling, same zero padding, same scale
factors); the fused ops in :mod:`lowlight_fast.ops` are tested against them. No input checks here:
the modules in :mod:`lowlight_fast.losses` and the ops validate their arguments.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SPA_POOL = 4
EXP_PATCH = 16
EXP_MEAN = 0.6
ZERODCE_TV_WEIGHT = 200.0
ZERODCEPP_TV_WEIGHT = 1600.0
COLOR_WEIGHT = 5.0
EXP_WEIGHT = 10.0


def color_constancy(x: torch.Tensor) -> torch.Tensor:
    """L_color: sqrt(d_rg^2 + d_rb^2 + d_gb^2) of the squared channel-mean differences, (B, 1, 1, 1)."""
    mean_rgb = x.mean(dim=(2, 3), keepdim=True)
    mr, mg, mb = torch.split(mean_rgb, 1, dim=1)
    d_rg = (mr - mg) ** 2
    d_rb = (mr - mb) ** 2
    d_gb = (mb - mg) ** 2
    return torch.sqrt(d_rg**2 + d_rb**2 + d_gb**2)


def _neighbour_differences(p: torch.Tensor) -> list[torch.Tensor]:
    """p minus its left, right, up and down neighbour; outside the map a neighbour is 0."""
    padded = F.pad(p, (1, 1, 1, 1))
    centre = padded[..., 1:-1, 1:-1]
    return [
        centre - padded[..., 1:-1, :-2],
        centre - padded[..., 1:-1, 2:],
        centre - padded[..., :-2, 1:-1],
        centre - padded[..., 2:, 1:-1],
    ]


def spatial_consistency(org: torch.Tensor, enhance: torch.Tensor) -> torch.Tensor:
    """L_spa(org, enhance): channel mean, 4x4 average pool (floor), squared differences of the
    4-neighbour differences (zero padding at the border), summed over the 4 directions: (B, 1, H//4, W//4)."""
    org_pool = F.avg_pool2d(org.mean(dim=1, keepdim=True), SPA_POOL)
    enhance_pool = F.avg_pool2d(enhance.mean(dim=1, keepdim=True), SPA_POOL)
    d_org = _neighbour_differences(org_pool)
    d_enhance = _neighbour_differences(enhance_pool)
    return sum((a - b) ** 2 for a, b in zip(d_org, d_enhance))


def exposure(x: torch.Tensor, patch_size: int = EXP_PATCH, mean_val: float = EXP_MEAN) -> torch.Tensor:
    """L_exp: channel mean, patch_size average pool (floor), mean of (pool - mean_val)^2; a scalar."""
    pooled = F.avg_pool2d(x.mean(dim=1, keepdim=True), patch_size)
    return torch.mean((pooled - mean_val) ** 2)


def illumination_smoothness(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """L_TV on curve maps (B, C, H, W): weight * 2 * (h / ((H-1) W) + w / (H (W-1))) / B."""
    batch, _, height, width = x.shape
    count_h = (height - 1) * width
    count_w = height * (width - 1)
    h_tv = ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum()
    w_tv = ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum()
    return weight * 2 * (h_tv / count_h + w_tv / count_w) / batch


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Sa_Loss: mean over pixels of the Euclidean distance of each pixel from its image's channel means."""
    d = x - x.mean(dim=(2, 3), keepdim=True)
    return torch.sqrt((d**2).sum(dim=1)).mean()


def zerodce_loss_terms(
    low: torch.Tensor, enhanced: torch.Tensor, curve_maps: torch.Tensor, tv_weight: float = ZERODCE_TV_WEIGHT
) -> dict[str, torch.Tensor]:
    """The weighted terms of the Zero-DCE training loss (Zero-DCE++ with tv_weight=1600):
    tv = tv_weight L_TV(A), spa = mean L_spa(enhanced, low), col = 5 mean L_color(enhanced),
    exp = 10 L_exp(enhanced) with patch 16 and E = 0.6."""
    return {
        "tv": tv_weight * illumination_smoothness(curve_maps),
        "spa": torch.mean(spatial_consistency(enhanced, low)),
        "col": COLOR_WEIGHT * torch.mean(color_constancy(enhanced)),
        "exp": EXP_WEIGHT * torch.mean(exposure(enhanced, EXP_PATCH, EXP_MEAN)),
    }


def zerodce_loss(
    low: torch.Tensor, enhanced: torch.Tensor, curve_maps: torch.Tensor, tv_weight: float = ZERODCE_TV_WEIGHT
) -> torch.Tensor:
    """The Zero-DCE total training loss (Zero-DCE++ with tv_weight=1600)."""
    t = zerodce_loss_terms(low, enhanced, curve_maps, tv_weight)
    return t["tv"] + t["spa"] + t["col"] + t["exp"]
