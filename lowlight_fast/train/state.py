"""The state of a run: ``Run`` (model, optimiser, scheduler, grad scaler, step), built fresh by
``build_run`` and brought back from a checkpoint by ``restore``; ``Run.state_dict`` is what a
checkpoint holds."""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowlight_fast.device import DeviceError, pick_device
from lowlight_fast.train.checkpoint import CHECKPOINT_FORMAT
from lowlight_fast.train.config import TrainConfig, TrainingError
from lowlight_fast.train.data import StepBatches, list_images
from lowlight_fast.train.objective import Objective, build_training_model
from lowlight_fast.train.step import flush_subnormal_params_


@dataclass
class Run:
    """Everything a training run needs to take its next step, and everything a step changes."""

    cfg: TrainConfig
    device: torch.device
    files: list[str]           # the images under cfg.data_dir, relative to it
    data: StepBatches
    total: int                 # the step the run ends at
    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # the autocast dtype, None without --amp
    step: int = 0              # optimiser steps applied so far

    def state_dict(self) -> dict:
        """What a checkpoint holds: enough to continue exactly as an uninterrupted run would."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": asdict(self.cfg), "files": self.files,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
        }


def _schedule(name: str, total: int):
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    raise ValueError(f"schedule: expected constant or cosine, got {name!r}")


def build_run(cfg: TrainConfig, objective: Objective | None = None) -> Run:
    """A run at step 0: the model initialised from ``cfg.seed``, Adam, the schedule, the grad scaler."""
    try:
        device = pick_device(cfg.device)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from None
    files = list_images(cfg.data_dir)
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_training_model(cfg).to(device)
    model.check_range = False  # StepBatches come from lowlight_fast.io, in [0, 1]: no extra pass per step
    flush_subnormal_params_(model)
    data = StepBatches(cfg, files)
    total = cfg.steps or cfg.epochs * data.steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.schedule, total))
    amp_dtype = None
    if cfg.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    return Run(cfg=cfg, device=device, files=files, data=data, total=total, model=model,
               objective=objective or Objective(cfg), optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               amp_dtype=amp_dtype)


def restore(run: Run, state: dict) -> None:
    """Put ``run`` where checkpoint ``state`` left off: weights, optimiser, schedule, scaler, RNG, step."""
    if state["files"] != run.files:
        print(f"warning: the images under {run.cfg.data_dir!r} changed since the checkpoint; the batches "
              "differ from those of an uninterrupted run", file=sys.stderr)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if run.device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
    run.step = int(state["step"])
    flush_subnormal_params_(run.model)
