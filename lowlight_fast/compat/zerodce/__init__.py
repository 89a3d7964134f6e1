"""Zero-DCE's ``model`` and ``Myloss`` modules: ``from lowlight_fast.compat.zerodce import model, Myloss``."""
from lowlight_fast.compat.zerodce import Myloss, model

__all__ = ["Myloss", "model"]
