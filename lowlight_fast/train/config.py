"""What a training run is asked to do: ``TrainConfig``, the original recipes, the checks of the values."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lowlight_fast.models import registry

# the originals' recipes, by model (registry.ModelSpec.recipe): the TrainConfig defaults of each model
RECIPES: dict[str, dict] = {name: dict(spec.recipe) for name, spec in registry.MODELS.items()}


class TrainingError(RuntimeError):
    """A training run that cannot go on (diverged, bad checkpoint, unusable data); the message says why."""


@dataclass
class TrainConfig:
    model: str
    data_dir: str
    out: str
    size: int = 0              # resize every image to size x size (0: keep the full size)
    crop: int = 0              # random crop x crop patches of the (full-size) images (0: no crop)
    batch_size: int = 8
    epochs: int = 1
    steps: int = 0             # total optimiser steps (0: epochs x steps per epoch)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    seed: int = 0
    schedule: str = "constant"  # constant | cosine
    stages: int = 3            # SCI only
    sci_ycbcr: str = "faithful"  # SCI only: the SmoothLoss colour conversion, "faithful" or "per_pixel"
    amp: bool = False
    # Zero-DCE/++: forward and backward in N x N tiles (0: whole images; "auto"). Not one of RUN_KEYS:
    # the gradients are those of whole images, so a resumed run may use another tile size, or none.
    tile: int | str = 0
    device: str = "auto"
    checkpoint_every: int = 200
    workers: int = 0
    log_every: int = 10
    progress: bool = True

    @classmethod
    def for_model(cls, model: str, data_dir: str, out: str, **overrides) -> "TrainConfig":
        """The recipe of ``model``, with the ``overrides`` that are not None."""
        values = dict(registry.get(model).recipe)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, data_dir=data_dir, out=out, **values)

    def sci_only(self, **options) -> dict:
        """``options`` when this run trains SCI, else nothing: the fields marked "SCI only" above."""
        return options if self.model == "sci" else {}


def validate_config(cfg: TrainConfig) -> None:
    """Raise TrainingError naming the command-line option whose value cannot work."""
    for name in ("batch_size", "checkpoint_every", "log_every", "stages"):
        if getattr(cfg, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("size", "crop", "steps", "epochs", "workers"):
        if getattr(cfg, name) < 0:
            raise TrainingError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")
    for name, low, strict in (("lr", 0.0, True), ("weight_decay", 0.0, False), ("grad_clip", 0.0, True)):
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > low if strict else v >= low)
        if not ok:
            bound = "a positive" if strict else "a non-negative"
            raise TrainingError(f"--{name.replace('_', '-')} must be {bound} finite number, got {v}")
    _validate_tile(cfg)
    if cfg.size and cfg.crop:
        raise TrainingError("--size and --crop exclude each other (crops are taken from full-size images)")


def _validate_tile(cfg: TrainConfig) -> None:
    from lowlight_fast.reference.zerodce_losses import EXP_PATCH

    tile = cfg.tile
    if tile in (0, None):
        return
    if cfg.model == "sci":
        raise TrainingError(
            "--tile: SCI cannot be trained in tiles (its BatchNorm layers normalise with the statistics of "
            "the whole batch, so no pixel's gradient is local); train SCI on whole images, or on --crop N "
            "crops to bound the memory")
    if tile == "auto":
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < EXP_PATCH or tile % EXP_PATCH:
        raise TrainingError(f"--tile must be a multiple of {EXP_PATCH} (the exposure loss's patch), or auto; "
                            f"got {tile!r}")
