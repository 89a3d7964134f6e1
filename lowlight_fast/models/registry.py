"""The one list of models: names, classes, bundled weights and defaults.

The command line (enhance, demo, train, benchmark) and the library (``lowlight_fast.enhance``,
``lowlight_fast.train``) read every per-model fact from here, so that adding a model is one entry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class ModelSpec:
    """What the library needs to know about one model.

    ``inference(**kwargs)`` builds the model that ``enhance_image`` runs (the weights a user loads);
    ``training(**kwargs)`` the model a training run optimises; ``loss(**kwargs)`` its paper's loss.
    ``recipe``: the original training recipe (``lowlight_fast.train.TrainConfig`` fields).
    ``bytes_per_pixel``: a generous bound on the inference working set, for the tiling policy.
    ``scale_factor``: Zero-DCE++'s default inference scale factor (None: the model has none).
    ``classes``: the model classes of this entry ("module:Class"), by which :func:`spec_for` recognises
    a module (imported only when asked).
    :meth:`is_local`: whether inference is local (each output pixel depends on a bounded window), so
    that it can be tiled; Zero-DCE++ is local only at scale factor 1 (see lowlight_fast.tiling).
    """

    name: str
    title: str
    inference: Callable[..., nn.Module]
    training: Callable[..., nn.Module]
    loss: Callable[..., nn.Module]
    recipe: dict = field(default_factory=dict)
    bytes_per_pixel: int = 1200
    scale_factor: int | None = None
    classes: tuple[str, ...] = ()

    @property
    def bundled_weights(self) -> Path:
        return DATA_DIR / "weights" / f"{self.name}.safetensors"

    def is_local(self, scale_factor: int | None = None) -> bool:
        return self.scale_factor is None or (scale_factor or self.scale_factor) == 1


def _zerodce(**kwargs):
    from lowlight_fast.models.zerodce import ZeroDCE

    return ZeroDCE(**kwargs)


def _zerodcepp(**kwargs):
    from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

    return ZeroDCEPlusPlus(**kwargs)


def _zerodcepp_training(**kwargs):
    kwargs.setdefault("scale_factor", 1)  # the original trains at full resolution
    return _zerodcepp(**kwargs)


def _sci_inference(**kwargs):
    from lowlight_fast.models.sci import SCIFinetune

    return SCIFinetune(**kwargs)


def _sci_training(stages: int = 3, **kwargs):
    from lowlight_fast.models.sci import SCINetwork

    return SCINetwork(stage=stages, **kwargs)


def _zerodce_loss(**kwargs):
    from lowlight_fast.losses import ZeroDCELoss

    return ZeroDCELoss(**kwargs)


def _zerodcepp_loss(**kwargs):
    from lowlight_fast.losses import ZeroDCEPPLoss

    return ZeroDCEPPLoss(**kwargs)


def _sci_loss(**kwargs):
    from lowlight_fast.losses import LossFunction

    return LossFunction(**kwargs)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "zerodce", "Zero-DCE", _zerodce, _zerodce, _zerodce_loss,
            recipe=dict(lr=1e-4, weight_decay=1e-4, grad_clip=0.1, batch_size=8, size=256, epochs=200),
            bytes_per_pixel=1200, classes=("lowlight_fast.models.zerodce:ZeroDCE",),
        ),
        ModelSpec(
            "zerodcepp", "Zero-DCE++", _zerodcepp, _zerodcepp_training, _zerodcepp_loss,
            recipe=dict(lr=1e-4, weight_decay=1e-4, grad_clip=0.1, batch_size=8, size=512, epochs=100),
            bytes_per_pixel=1200, scale_factor=12, classes=("lowlight_fast.models.zerodcepp:ZeroDCEPlusPlus",),
        ),
        ModelSpec(
            "sci", "SCI", _sci_inference, _sci_training, _sci_loss,
            recipe=dict(lr=3e-4, weight_decay=3e-4, grad_clip=5.0, batch_size=1, size=0, epochs=1000),
            bytes_per_pixel=160,
            classes=("lowlight_fast.models.sci:SCIFinetune", "lowlight_fast.models.sci:SCINetwork"),
        ),
    )
}
NAMES: tuple[str, ...] = tuple(MODELS)
DEFAULT = "zerodce"


def get(name: str) -> ModelSpec:
    """The spec of model ``name``; a ValueError naming the choices otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"model: expected one of {', '.join(NAMES)}, got {name!r}") from None


def _load_class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def spec_for(model: nn.Module) -> ModelSpec | None:
    """The entry whose classes ``model`` is an instance of (subclasses included), or None."""
    for spec in MODELS.values():
        if any(isinstance(model, _load_class(c)) for c in spec.classes):
            return spec
    return None


def bundled_weights(name: str) -> Path:
    return get(name).bundled_weights


def bundled_samples() -> list[Path]:
    return sorted((DATA_DIR / "samples").glob("*.png"))
