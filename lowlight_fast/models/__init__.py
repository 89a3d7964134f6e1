"""Zero-DCE, Zero-DCE++ and SCI with the original parameter names.

Every model has ``enhance_image(x)``: (B,3,H,W) in [0,1] -> the enhanced image, without gradients
(Zero-DCE: after 8 curve steps; Zero-DCE++: the enhanced image at any size; SCI: the reflectance).
``forward`` returns what the original returns. Subnormal weights are flushed to zero on every
``load_state_dict`` (see :func:`flush_subnormal_`). The list of models, their bundled weights and
defaults: :mod:`lowlight_fast.models.registry`.
"""
from __future__ import annotations


from lowlight_fast.models._common import EnhancementModel, flush_subnormal_
from lowlight_fast.models.checkpoint import detect_architecture, load_weights, read_state_dict, save_weights
from lowlight_fast.models.sci import CalibrateNetwork, EnhanceNetwork, SCIFinetune, SCINetwork
from lowlight_fast.models.zerodce import ZeroDCE
from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus
from lowlight_fast.models import registry

MODEL_NAMES = registry.NAMES


def build_model(name: str, **kwargs) -> EnhancementModel:
    """An inference model by name: "zerodce", "zerodcepp" (``scale_factor=``) or "sci" (SCIFinetune)."""
    return registry.get(name).inference(**kwargs)


__all__ = [
    "MODEL_NAMES", "CalibrateNetwork", "EnhanceNetwork", "EnhancementModel", "SCIFinetune", "SCINetwork",
    "ZeroDCE", "ZeroDCEPlusPlus", "build_model", "detect_architecture", "flush_subnormal_", "load_weights",
    "read_state_dict", "registry", "save_weights",
]
