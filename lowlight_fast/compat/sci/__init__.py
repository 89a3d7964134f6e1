"""SCI's ``model`` and ``loss`` modules: ``from lowlight_fast.compat.sci import model, loss``."""
from lowlight_fast.compat.sci import loss, model

__all__ = ["loss", "model"]
