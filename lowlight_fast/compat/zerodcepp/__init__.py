"""Zero-DCE++'s ``model`` and ``Myloss`` modules: ``from lowlight_fast.compat.zerodcepp import model, Myloss``."""
from lowlight_fast.compat.zerodcepp import Myloss, model

__all__ = ["Myloss", "model"]
