"""Training loops for Zero-DCE, Zero-DCE++ and SCI (``lowlight-fast train``).

Defaults are the originals' recipes (``RECIPES``, from lowlight_fast.models.registry): Adam; Zero-DCE
lr 1e-4, weight decay 1e-4, grad-norm clip 0.1, batch 8, 256x256, 200 epochs; Zero-DCE++ the same at
512x512 (scale factor 1), 100 epochs; SCI lr 3e-4, weight decay 3e-4, clip 5, batch 1, full-size
images, 1000 epochs, 3 stages.

Reproducible and resumable: the batch of step ``s`` is a function of (seed, s) alone (the image order
of each epoch and every random crop come from generators seeded by the seed and the epoch), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have. A checkpoint holds the
model, optimiser, scheduler, grad-scaler and RNG states and the step; it is written to a temporary file
and renamed, so a crash never leaves a half-written checkpoint. A non-finite loss or gradient stops the
run before the step is applied, leaving the last checkpoint as it was. Subnormal weights are flushed to
zero after every step (some x86 CPUs run convolutions much slower on them; benchmarks/RESULTS.md).

The pieces, one module each:

- ``config``: ``TrainConfig``, ``RECIPES``, ``validate_config``
- ``data``: ``list_images``, ``StepBatches`` (the batch of each step)
- ``objective``: ``build_training_model``, ``Objective`` (the model and its paper's loss)
- ``state``: ``Run`` (model, optimiser, scheduler, scaler, step), ``build_run``, ``restore``
- ``step``: ``train_step`` = ``compute_gradients`` (forward, loss, backward) + ``apply_update``
  (clip, optimiser, scheduler, subnormal flush)
- ``checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``resolve_config`` (which settings a
  resumed run takes from its checkpoint), ``Checkpointer``
- ``log``: ``RunLog`` (train_log.csv and the progress bar)
- ``loop``: ``train``, the loop over them; ``command``: ``add_train_arguments``, ``cmd_train``
"""
from __future__ import annotations

from lowlight_fast.train.config import RECIPES, TrainConfig, TrainingError, validate_config
from lowlight_fast.train.data import StepBatches, list_images
from lowlight_fast.train.objective import Objective, build_training_model
from lowlight_fast.train.checkpoint import (
    CHECKPOINT_FORMAT, CHECKPOINT_NAME, RUN_KEYS, Checkpointer, load_checkpoint, resolve_config,
    save_checkpoint,
)
from lowlight_fast.train.step import (
    Diverged, apply_update, compute_gradients, flush_subnormal_params_, train_step,
)
from lowlight_fast.train.state import Run, build_run, restore
from lowlight_fast.train.log import RunLog
from lowlight_fast.train.loop import train
from lowlight_fast.train.command import add_train_arguments, cmd_train

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "Checkpointer", "Diverged", "Objective", "RECIPES", "RUN_KEYS",
    "Run", "RunLog", "StepBatches", "TrainConfig", "TrainingError", "add_train_arguments", "apply_update",
    "build_run", "build_training_model", "cmd_train", "compute_gradients", "flush_subnormal_params_",
    "list_images", "load_checkpoint", "resolve_config", "restore", "save_checkpoint", "train", "train_step",
    "validate_config",
]
