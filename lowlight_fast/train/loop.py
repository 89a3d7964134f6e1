"""``train``: the loop over the pieces (configuration and resume, state, step, log, checkpoints)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from lowlight_fast.train.checkpoint import Checkpointer, describe_os_error, resolve_config
from lowlight_fast.train.config import TrainConfig, TrainingError
from lowlight_fast.train.log import RunLog
from lowlight_fast.train.objective import Objective
from lowlight_fast.train.state import Run, build_run, restore
from lowlight_fast.train.step import Diverged, train_step


def _batches(run: Run) -> torch.utils.data.DataLoader:
    """The batches of the steps still to run, in order (loaded in ``cfg.workers`` processes)."""
    return torch.utils.data.DataLoader(
        run.data, sampler=range(run.step, run.total), batch_size=None, num_workers=run.cfg.workers,
        pin_memory=run.device.type == "cuda", persistent_workers=False)


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None,
          objective: Objective | None = None, given: frozenset[str] = frozenset()) -> dict:
    """Run (or continue) a training run; returns {"step", "weights", "checkpoint"}.

    ``resume``: a checkpoint path; the run's settings (``RUN_KEYS``) are taken from it, except that
    ``steps``/``epochs`` given here may extend the run; ``given`` names settings asked for explicitly,
    which must then agree with the checkpoint (:func:`resolve_config`).
    """
    state = resolve_config(cfg, resume, given)
    run = build_run(cfg, objective)
    if state is not None:
        restore(run, state)
    checkpoints = Checkpointer(cfg, run.total, last_good=run.step if state is not None else None)
    if run.step >= run.total:
        print(f"nothing to do: the checkpoint is at step {run.step} of {run.total}", file=sys.stderr)
    t0 = time.perf_counter()
    with RunLog(cfg, run.step, run.total) as log:
        for batch in _batches(run):
            try:
                values = train_step(run, batch)
            except Diverged as exc:
                raise checkpoints.stopped(exc) from None
            log.record(run.step, values)
            checkpoints.after_step(run)
    from lowlight_fast.models import save_weights

    weights = Path(cfg.out) / f"{cfg.model}.safetensors"
    run.model.eval()
    try:
        save_weights(run.model, weights)
    except ValueError as exc:  # non-finite weights (the step checks make this unreachable in practice)
        raise TrainingError(str(exc)) from None
    except OSError as exc:
        raise TrainingError(f"cannot write the weights {str(weights)!r}: {describe_os_error(exc)}") from None
    if cfg.progress:
        print(f"trained {cfg.model} to step {run.step} in {time.perf_counter() - t0:.1f} s; "
              f"weights {weights}, checkpoint {checkpoints.path}", file=sys.stderr)
    return {"step": run.step, "weights": str(weights), "checkpoint": str(checkpoints.path)}
