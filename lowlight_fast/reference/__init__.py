"""Plain-PyTorch versions of every computation in the originals, device- and dtype-agnostic, written
from the papers' formulas and the observed behaviour of the authors' code (not copied from it). The
fused ops are tested against these; ``LOWLIGHT_FAST_BACKEND=reference`` runs them.

- :mod:`.curve`: Zero-DCE's 8-step curve (``le_curve``), Zero-DCE++'s shared-map curve
  (``le_curve_shared``, ``upsample_map``)
- :mod:`.zerodce_losses`: L_color, L_spa, L_exp, L_TV, Sa_Loss and the weighted training terms
- :mod:`.sci_losses`: SCI's YCbCr conversion (faithful memory-layout quirk or per pixel),
  SmoothLoss and LossFunction
The models run on the reference path with ``fused=False``.
"""
from lowlight_fast.reference import curve, sci_losses, zerodce_losses
from lowlight_fast.reference.curve import le_curve, le_curve_shared, upsample_map
from lowlight_fast.reference.sci_losses import rgb_to_ycbcr, sci_loss, smooth_loss
from lowlight_fast.reference.zerodce_losses import (
    color_constancy,
    exposure,
    illumination_smoothness,
    saturation,
    spatial_consistency,
    zerodce_loss,
    zerodce_loss_terms,
)

__all__ = [
    "color_constancy", "curve", "exposure", "illumination_smoothness", "le_curve", "le_curve_shared",
    "rgb_to_ycbcr", "saturation", "sci_loss", "sci_losses", "smooth_loss", "spatial_consistency",
    "upsample_map", "zerodce_loss", "zerodce_loss_terms", "zerodce_losses",
]
