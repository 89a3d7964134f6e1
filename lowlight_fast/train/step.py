"""One optimiser step, in two parts: ``compute_gradients`` (forward, loss, checks, backward) and
``apply_update`` (clip, optimiser, scheduler, subnormal flush).

A step that splits its batch (forward and backward per tile, the gradients accumulated in ``.grad``)
replaces ``compute_gradients`` alone; ``apply_update`` works on whatever gradients are there.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowlight_fast.train.config import TrainingError

if TYPE_CHECKING:
    from lowlight_fast.train.state import Run


class Diverged(TrainingError):
    """The loss, the gradient norm or the updated weights are not finite; nothing of the step is saved."""

    def __init__(self, what: str, values: dict[str, float], *, applied: bool = False):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        super().__init__(f"{what} ({terms})")
        self.applied = applied  # the optimiser step ran (its result is in memory only, never saved)


@torch.no_grad()
def flush_subnormal_params_(model: nn.Module) -> None:
    """Zero the subnormal parameters in place, without a host sync (cheap enough for every step).

    Some x86 CPUs run convolutions much slower on subnormal weights (benchmarks/RESULTS.md); such a
    weight contributes below float32's resolution, so zeroing it does not change the outputs in practice.
    """
    for p in model.parameters():
        if p.is_floating_point():
            tiny = torch.finfo(p.dtype).tiny
            p.masked_fill_(p.abs() < tiny, 0.0)


@torch.no_grad()
def _finite(model: nn.Module) -> bool:
    """Every floating parameter finite (one reduction per tensor and a single host sync)."""
    checks = [torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def compute_gradients(run: "Run", batch: torch.Tensor) -> dict[str, float]:
    """Forward and backward of ``batch`` into fresh gradients; returns the loss and its terms (float).

    Raises Diverged, before the backward, when the loss is not finite.
    """
    run.model.train()
    x = batch.to(run.device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    loss, terms = run.objective(run.model, x, run.amp_dtype)
    values = {"loss": float(loss.detach())}
    values.update({k: float(v.detach().mean()) for k, v in terms.items()})
    if not math.isfinite(values["loss"]):
        raise Diverged(f"the loss became {values['loss']} at step {run.step + 1}", values)
    run.scaler.scale(loss).backward()
    return values


def apply_update(run: "Run", values: dict[str, float]) -> None:
    """Clip the gradients, step the optimiser and the schedule, flush subnormal weights; ``run.step`` + 1.

    Raises Diverged, before the optimiser step, when the gradient norm is not finite (``values``: the
    step's loss terms, for the message). With grad scaling (float16 on CUDA) an overflow is expected
    now and then: the scaler skips that step and lowers its scale instead.
    """
    run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip))
    if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
        raise Diverged(f"the gradient norm became {grad_norm} at step {run.step + 1}", values)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    flush_subnormal_params_(run.model)
    if not _finite(run.model):  # finite loss and gradient, but an update too large (e.g. --lr inf)
        raise Diverged(f"the weights became non-finite in the update of step {run.step + 1}", values,
                       applied=True)
    run.step += 1


def train_step(run: "Run", batch: torch.Tensor) -> dict[str, float]:
    """One optimiser step on ``batch``; returns the loss and its terms. With ``cfg.tile`` the gradients
    are computed in tiles (lowlight_fast.train.tiled), exactly."""
    if run.cfg.tile:
        from lowlight_fast.train.tiled import compute_run_gradients_tiled

        values = compute_run_gradients_tiled(run, batch)
    else:
        values = compute_gradients(run, batch)
    apply_update(run, values)
    return values
