"""Zero-DCE++'s ``Myloss.py``: as Zero-DCE's, with ``L_exp(patch_size)`` taking ``mean_val`` at call
time (``L_exp(16)(x, 0.6)``). The VGG ``perception_loss`` of that file (unused in training) is not
provided: it needs torchvision's pretrained weights."""
from lowlight_fast.losses import L_TV, L_color, L_exp, L_spa, Sa_Loss

__all__ = ["L_TV", "L_color", "L_exp", "L_spa", "Sa_Loss"]
