"""What is optimised: the model a run trains and its paper's loss (from lowlight_fast.models.registry)."""
from __future__ import annotations

import torch
from torch import nn

from lowlight_fast.models import registry
from lowlight_fast.train.config import TrainConfig


def build_training_model(cfg: TrainConfig) -> nn.Module:
    """The model ``cfg`` trains, freshly initialised from torch's global generator."""
    return registry.get(cfg.model).training(**cfg.sci_only(stages=cfg.stages))


class Objective:
    """model, batch -> (total loss, {term: value}) in float32."""

    def __init__(self, cfg: TrainConfig):
        self.name = cfg.model
        self.loss = registry.get(cfg.model).loss(**cfg.sci_only(ycbcr=cfg.sci_ycbcr))

    def __call__(self, model: nn.Module, x: torch.Tensor, amp_dtype) -> tuple[torch.Tensor, dict]:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if self.name == "sci":
                model._criterion = self.loss  # SCINetwork._loss sums it over the stages
                total = model._loss(x)
                return total.float(), {}
            # under autocast: low-precision curve maps, the curve itself promotes to float32
            enhanced, r = model(x)[-2:]  # Zero-DCE returns the image after 4 curve steps first
        total, terms = self.loss(x, enhanced.float(), r.float(), return_terms=True)
        return total, terms
