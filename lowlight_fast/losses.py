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
