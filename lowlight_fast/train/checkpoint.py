"""Checkpoints: the file format, atomic writes, what a resumed run takes from one, the last good one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lowlight_fast.train.config import TrainConfig, TrainingError

if TYPE_CHECKING:
    from lowlight_fast.train.state import Run

CHECKPOINT_FORMAT = "lowlight_fast.train/1"
CHECKPOINT_NAME = "checkpoint.pt"
# settings that shape the optimisation: a resumed run keeps the checkpoint's values
RUN_KEYS = ("model", "size", "crop", "batch_size", "lr", "weight_decay", "grad_clip", "seed", "schedule",
            "stages", "sci_ycbcr", "amp", "epochs", "steps")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A state whose model weights hold NaN or inf is refused (TrainingError), so that the file on disk is
    always the last finite one; so is a write that fails (a full disk: the old file stays)."""
    path = Path(path)
    if isinstance(state.get("model"), dict):
        from lowlight_fast.models.checkpoint import check_finite

        try:
            check_finite(state["model"], f"the model at step {state.get('step')}")
        except ValueError as exc:
            raise TrainingError(f"{exc}; checkpoint {str(path)!r} not written") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise TrainingError(f"cannot write the checkpoint {str(path)!r}: {describe_os_error(exc)}; the previous "
                            "checkpoint, if any, is intact") from None
    except RuntimeError as exc:  # torch.save reports a failed write as "PytorchStreamWriter failed ..."
        raise TrainingError(f"cannot write the checkpoint {str(path)!r} ({exc}; is the disk full?); the "
                            "previous checkpoint, if any, is intact") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (weights_only: no code runs). Raises TrainingError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupted, or not a torch file
        raise TrainingError(
            f"checkpoint {str(path)!r} is corrupted or not a checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start over, or resume from "
            "another file with --resume PATH") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{str(path)!r} is not a lowlight-fast training checkpoint (weights-only files are loaded with "
            "`enhance --weights`, not resumed)")
    return state


def describe_os_error(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def resolve_config(cfg: TrainConfig, resume: str | os.PathLike | None,
                   given: frozenset[str] = frozenset()) -> dict | None:
    """Settle ``cfg`` for a new run (``resume`` None) or for continuing checkpoint ``resume``.

    A new run refuses an ``out`` folder that already holds a checkpoint. A resumed run takes the
    ``RUN_KEYS`` settings from the checkpoint (``cfg`` is updated in place), except that ``steps`` or
    ``epochs`` larger than the checkpoint's extend the run. ``given``: the settings the caller asked
    for explicitly (the command line's options); one of them that differs from the checkpoint's is
    refused, naming both values, rather than silently ignored. Returns the checkpoint's state, or None.
    """
    if resume is None:
        out = Path(cfg.out)
        if (out / CHECKPOINT_NAME).exists():
            raise TrainingError(
                f"{str(out)!r} already holds a training checkpoint; continue it with --resume, or delete "
                "it / choose another --out to start a new run")
        return None
    state = load_checkpoint(resume)
    saved = state["config"]
    if saved["model"] != cfg.model:
        raise TrainingError(f"checkpoint {str(resume)!r} trains {saved['model']}, not {cfg.model}")
    extend = {k: getattr(cfg, k) for k in ("steps", "epochs")}
    conflicts = [k for k in RUN_KEYS if k in given and k not in extend and k in saved
                 and getattr(cfg, k) != saved[k]]
    if conflicts:
        desc = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)} (the checkpoint has {saved[k]})"
                         for k in conflicts)
        raise TrainingError(
            f"a resumed run keeps the settings of its checkpoint, and these differ: {desc}; drop them to "
            "resume (only --steps and --epochs may extend the run), or start a new run in another --out")
    for k in RUN_KEYS:
        setattr(cfg, k, saved.get(k, getattr(cfg, k)))
    for k, v in extend.items():
        if v and v > saved[k]:
            setattr(cfg, k, v)
    return state


class Checkpointer:
    """Writes OUT/checkpoint.pt every ``checkpoint_every`` steps and at the last step, and remembers the
    step of the last one written (``last_good``: the checkpoint a stopped run resumes from)."""

    def __init__(self, cfg: TrainConfig, total: int, last_good: int | None):
        self.path = Path(cfg.out) / CHECKPOINT_NAME
        self.every = cfg.checkpoint_every
        self.total = total
        self.last_good = last_good

    def after_step(self, run: "Run") -> None:
        if run.step % self.every == 0 or run.step == self.total:
            save_checkpoint(self.path, run.state_dict())
            self.last_good = run.step

    def stopped(self, reason: object) -> TrainingError:
        """The error that ends a run whose step could not be applied, saying where to resume from."""
        if self.last_good is None:
            where = "no checkpoint was written yet"
        else:
            where = (f"the last good checkpoint (step {self.last_good}) is intact at {self.path}; lower --lr "
                     "or check the data, then resume with --resume")
        step = "its result was not saved" if getattr(reason, "applied", False) else "the step was not applied"
        return TrainingError(f"training stopped: {reason}; {step}; {where}")
