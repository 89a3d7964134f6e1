"""SCI's ``loss.py``: ``LossFunction()`` (forward(input, illu)) and ``SmoothLoss()`` (forward(input, output)),
on the fused smooth_loss op."""
from lowlight_fast.losses import LossFunction, SmoothLoss

__all__ = ["LossFunction", "SmoothLoss"]
