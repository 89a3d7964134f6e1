"""Zero-DCE's ``Myloss.py``: ``L_color()``, ``L_spa()``, ``L_exp(patch_size, mean_val)``,
``L_TV(TVLoss_weight=1)``, ``Sa_Loss()``, called as in the original training script."""
from lowlight_fast.losses import L_TV, L_color, L_exp, L_spa, Sa_Loss

__all__ = ["L_TV", "L_color", "L_exp", "L_spa", "Sa_Loss"]
