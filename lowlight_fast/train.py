"""Training loops for Zero-DCE, Zero-DCE++ and SCI (``lowlight-fast train``).

Defaults are the originals' recipes (REFERENCE.md): Adam; Zero-DCE lr 1e-4, weight decay 1e-4,
grad-norm clip 0.1, batch 8, 256x256, 200 epochs; Zero-DCE++ the same at 512x512 (scale factor 1),
100 epochs; SCI lr 3e-4, weight decay 3e-4, clip 5, batch 1, full-size images, 1000 epochs, 3 stages.

Reproducible and resumable: the batch of step ``s`` is a function of (seed, s) alone (the image order
of each epoch and every random crop come from generators seeded by the seed and the epoch), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have. A checkpoint holds the
model, optimiser, scheduler, grad-scaler and RNG states and the step; it is written to a temporary file
and renamed, so a crash never leaves a half-written checkpoint. A non-finite loss or gradient stops the
run before the step is applied, leaving the last checkpoint as it was.

Subnormal weights (which make x86 convolutions 30-70x slower) are flushed to zero after every step.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FORMAT = "lowlight_fast.train/1"
CHECKPOINT_NAME = "checkpoint.pt"

RECIPES = {
    "zerodce": dict(lr=1e-4, weight_decay=1e-4, grad_clip=0.1, batch_size=8, size=256, epochs=200),
    "zerodcepp": dict(lr=1e-4, weight_decay=1e-4, grad_clip=0.1, batch_size=8, size=512, epochs=100),
    "sci": dict(lr=3e-4, weight_decay=3e-4, grad_clip=5.0, batch_size=1, size=0, epochs=1000),
}
# settings that shape the optimisation: a resumed run keeps the checkpoint's values
RUN_KEYS = ("model", "size", "crop", "batch_size", "lr", "weight_decay", "grad_clip", "seed", "schedule",
            "stages", "sci_ycbcr", "amp", "epochs", "steps")


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
    device: str = "auto"
    checkpoint_every: int = 200
    workers: int = 0
    log_every: int = 10
    progress: bool = True

    @classmethod
    def for_model(cls, model: str, data_dir: str, out: str, **overrides) -> "TrainConfig":
        if model not in RECIPES:
            raise ValueError(f"model: expected one of {', '.join(RECIPES)}, got {model!r}")
        values = dict(RECIPES[model])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, data_dir=data_dir, out=out, **values)


# ------------------------------------------------------------------------------------------------ data
def list_images(data_dir: str) -> list[str]:
    """Image files under ``data_dir`` (recursively, sorted, hidden entries skipped)."""
    from lowlight_fast.io import image_extensions

    exts = image_extensions()
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"data folder {data_dir!r} does not exist or is not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for n in sorted(filenames):
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in exts:
                files.append(os.path.relpath(os.path.join(dirpath, n), root))
    if not files:
        raise TrainingError(f"no images found under {data_dir!r}")
    return files


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` is the batch of optimiser step ``s`` (B x 3 x H x W float32 in [0, 1])."""

    def __init__(self, cfg: TrainConfig, files: list[str]):
        self.cfg = cfg
        self.files = files
        self.batch = min(cfg.batch_size, len(files))
        self.steps_per_epoch = max(1, len(files) // self.batch)
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:  # unbounded in epochs; the sampler says which steps run
        return 1 << 62

    def indices(self, step: int) -> tuple[int, list[int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(_mix(self.cfg.seed, epoch, "order"))
        perm = torch.randperm(len(self.files), generator=g).tolist()
        return epoch, perm[pos * self.batch:(pos + 1) * self.batch]

    def _load(self, i: int) -> torch.Tensor:
        """Image i as 3 x H x W float32, resized when ``size`` is set (cached within a byte budget)."""
        if i in self._cache:
            return self._cache[i]
        from lowlight_fast.io import ImageReadError, read_image

        path = os.path.join(self.cfg.data_dir, self.files[i])
        try:
            x = read_image(path).to_tensor()
        except ImageReadError as exc:
            raise TrainingError(str(exc)) from None
        if self.cfg.size:
            x = F.interpolate(x, size=(self.cfg.size, self.cfg.size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0, 1)
        x = x[0]
        nbytes = x.numel() * 4
        if self._cache_bytes + nbytes <= (1 << 30):
            self._cache[i] = x
            self._cache_bytes += nbytes
        return x

    def _crop(self, x: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
        c = self.cfg.crop
        h, w = x.shape[-2:]
        if min(h, w) < c:  # upscale small images so that a crop fits
            s = c / min(h, w)
            x = F.interpolate(x[None], size=(max(c, round(h * s)), max(c, round(w * s))), mode="bilinear",
                              align_corners=False)[0].clamp_(0, 1)
            h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(_mix(self.cfg.seed, epoch, i, "crop"))
        top = int(torch.randint(0, h - c + 1, (1,), generator=g))
        left = int(torch.randint(0, w - c + 1, (1,), generator=g))
        return x[:, top:top + c, left:left + c]

    def __getitem__(self, step: int) -> torch.Tensor:
        epoch, idx = self.indices(step)
        imgs = []
        for i in idx:
            x = self._load(i)
            if self.cfg.crop:
                x = self._crop(x, epoch, i)
            imgs.append(x)
        shapes = {tuple(t.shape) for t in imgs}
        if len(shapes) > 1:
            raise TrainingError(
                f"the images of one batch differ in size ({sorted(shapes)}); use --batch-size 1, "
                "--size N (resize) or --crop N (random crops)")
        return torch.stack(imgs).contiguous()


# ------------------------------------------------------------------------------------------------ model
def build_training_model(cfg: TrainConfig) -> nn.Module:
    from lowlight_fast.models import SCINetwork, ZeroDCE, ZeroDCEPlusPlus

    if cfg.model == "zerodce":
        return ZeroDCE()
    if cfg.model == "zerodcepp":
        return ZeroDCEPlusPlus(scale_factor=1)
    return SCINetwork(stage=cfg.stages)


class Objective:
    """model, batch -> (total loss, {term: value}) in float32."""

    def __init__(self, cfg: TrainConfig):
        self.name = cfg.model
        if cfg.model == "zerodce":
            from lowlight_fast.losses import ZeroDCELoss

            self.loss = ZeroDCELoss()
        elif cfg.model == "zerodcepp":
            from lowlight_fast.losses import ZeroDCEPPLoss

            self.loss = ZeroDCEPPLoss()
        else:
            from lowlight_fast.losses import LossFunction

            self.loss = LossFunction(ycbcr=cfg.sci_ycbcr)

    def __call__(self, model: nn.Module, x: torch.Tensor, amp_dtype) -> tuple[torch.Tensor, dict]:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if self.name == "sci":
                model._criterion = self.loss  # SCINetwork._loss sums it over the stages
                total = model._loss(x)
                return total.float(), {}
            out = model(x)  # under autocast: low-precision curve maps, the curve itself promotes to float32
        if self.name == "zerodce":
            _, enhanced, r = out
        else:
            enhanced, r = out
        total, terms = self.loss(x, enhanced.float(), r.float(), return_terms=True)
        return total, terms


@torch.no_grad()
def flush_subnormal_params_(model: nn.Module) -> None:
    """Zero the subnormal parameters in place, without a host sync (cheap enough for every step)."""
    for p in model.parameters():
        if p.is_floating_point():
            tiny = torch.finfo(p.dtype).tiny
            p.masked_fill_(p.abs() < tiny, 0.0)


def _schedule(name: str, total: int):
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    raise ValueError(f"schedule: expected constant or cosine, got {name!r}")


# ------------------------------------------------------------------------------------------------ checkpoints
def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start over, or resume from another "
            "file with --resume PATH") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{str(path)!r} is not a lowlight-fast training checkpoint (weights-only files are loaded with "
            "`enhance --weights`, not resumed)")
    return state


# ------------------------------------------------------------------------------------------------ loop
def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device (try --device cpu)")
    return dev


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None, objective: Objective | None = None) -> dict:
    """Run (or continue) a training run; returns {"step", "weights", "checkpoint"}.

    ``resume``: a checkpoint path; the run's settings (``RUN_KEYS``) are taken from it, except that
    ``steps``/``epochs`` given here may extend the run.
    """
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    state = None
    if resume is None and ckpt_path.exists():
        raise TrainingError(
            f"{str(out)!r} already holds a training checkpoint; continue it with --resume, or delete it / "
            "choose another --out to start a new run")
    if resume is not None:
        state = load_checkpoint(resume)
        saved = state["config"]
        if saved["model"] != cfg.model:
            raise TrainingError(f"checkpoint {str(resume)!r} trains {saved['model']}, not {cfg.model}")
        extend = {k: getattr(cfg, k) for k in ("steps", "epochs")}
        for k in RUN_KEYS:
            setattr(cfg, k, saved.get(k, getattr(cfg, k)))
        for k, v in extend.items():
            if v and v > saved[k]:
                setattr(cfg, k, v)
    device = _pick_device(cfg.device)
    files = list_images(cfg.data_dir)
    if state is not None and state["files"] != files:
        print(f"warning: the images under {cfg.data_dir!r} changed since the checkpoint; the batches differ "
              "from those of an uninterrupted run", file=sys.stderr)

    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_training_model(cfg).to(device)
    data = StepBatches(cfg, files)
    total = cfg.steps or cfg.epochs * data.steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.schedule, total))
    amp_dtype = None
    if cfg.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    objective = objective or Objective(cfg)

    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step = int(state["step"])
    flush_subnormal_params_(model)

    log_path = out / "train_log.csv"
    out.mkdir(parents=True, exist_ok=True)
    _truncate_log(log_path, step)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "step": step, "config": asdict(cfg), "files": files,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(device),
        })

    if step >= total:
        print(f"nothing to do: the checkpoint is at step {step} of {total}", file=sys.stderr)
    loader = torch.utils.data.DataLoader(
        data, sampler=range(step, total), batch_size=None, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", persistent_workers=False)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, unit="step", desc=f"train {cfg.model}", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    last_ckpt = step if state is not None else None
    t0 = time.perf_counter()
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        try:
            for batch in loader:
                model.train()
                x = batch.to(device, non_blocking=True)
                loss, terms = objective(model, x, amp_dtype)
                values = {"loss": float(loss.detach())}
                values.update({k: float(v.detach().mean()) for k, v in terms.items()})
                if not math.isfinite(values["loss"]):
                    _diverged(f"the loss became {values['loss']} at step {step + 1}", values, last_ckpt, ckpt_path)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    _diverged(f"the gradient norm became {grad_norm} at step {step + 1}", values, last_ckpt,
                              ckpt_path)
                scaler.step(opt)
                scaler.update()
                sched.step()
                flush_subnormal_params_(model)
                step += 1
                bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    if log_file.tell() == 0:
                        log.writerow(["step"] + sorted(values))
                    log.writerow([step] + [f"{values[k]:.6g}" for k in sorted(values)])
                    log_file.flush()
                if step % cfg.checkpoint_every == 0 or step == total:
                    checkpoint()
                    last_ckpt = step
        finally:
            bar.close()
    weights = out / f"{cfg.model}.safetensors"
    from lowlight_fast.models import save_weights

    model.eval()
    save_weights(model, weights)
    if cfg.progress:
        print(f"trained {cfg.model} to step {step} in {time.perf_counter() - t0:.1f} s; weights {weights}, "
              f"checkpoint {ckpt_path}", file=sys.stderr)
    return {"step": step, "weights": str(weights), "checkpoint": str(ckpt_path)}


def _diverged(what: str, values: dict, last_ckpt: int | None, ckpt_path: Path):
    terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    where = (f"the last good checkpoint (step {last_ckpt}) is intact at {ckpt_path}; lower --lr or check the "
             "data, then resume with --resume" if last_ckpt is not None else "no checkpoint was written yet")
    raise TrainingError(f"training stopped: {what} ({terms}); the step was not applied; {where}")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and (not r[0].isdigit() or int(r[0]) <= step)]
    if len(rows) == 1:  # the header alone
        rows = []
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


# ------------------------------------------------------------------------------------------------ command line
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=tuple(RECIPES), help="network to train")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of training images (searched recursively)")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="folder for checkpoint.pt, <model>.safetensors and train_log.csv (default runs/<model>)")
    p.add_argument("--size", type=int, default=None, metavar="N", help=(
        "resize images to N x N (default: 256 zerodce, 512 zerodcepp, full size sci); 0 keeps full size"))
    p.add_argument("--crop", type=int, default=None, metavar="N",
                   help="train on random N x N crops of the full-size images (implies --size 0)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 zerodce/zerodcepp, 1 sci")
    p.add_argument("--epochs", type=int, default=None, help="default: 200 zerodce, 100 zerodcepp, 1000 sci")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-4 (zerodce, zerodcepp), 3e-4 (sci)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 1e-4 / 3e-4 (sci)")
    p.add_argument("--grad-clip", type=float, default=None, help="grad-norm clip; default 0.1 / 5 (sci)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="learning-rate schedule (default constant, as the originals)")
    p.add_argument("--stages", type=int, default=None, help="SCI stages (default 3)")
    p.add_argument("--sci-ycbcr", choices=("faithful", "per_pixel"), default=None, help=(
        "SCI's SmoothLoss colour conversion: faithful (default: the original's memory-layout quirk, which "
        "mixes neighbouring pixels) or per_pixel (a proper per-pixel YCbCr)"))
    p.add_argument("--seed", type=int, default=None, help="seed for initialisation, order and crops (default 0)")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (float16 + grad scaling on CUDA, bfloat16 on CPU)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="default 200 steps")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: OUT/checkpoint.pt) exactly where it stopped")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default 0: in the main one)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    out = args.out or os.path.join("runs", args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)
                 if f.name not in ("model", "data_dir", "out", "progress")}
    if args.crop and args.size is None:
        overrides["size"] = 0
    overrides["progress"] = not args.quiet
    try:
        cfg = TrainConfig.for_model(args.model, args.data_dir, out, **overrides)
        _validate_config(cfg)
        resume = None
        if args.resume is not None:
            resume = os.path.join(out, CHECKPOINT_NAME) if args.resume == "auto" else args.resume
        train(cfg, resume=resume)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _validate_config(cfg: TrainConfig) -> None:
    for name in ("batch_size", "checkpoint_every", "log_every", "stages"):
        if getattr(cfg, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("size", "crop", "steps", "epochs", "workers"):
        if getattr(cfg, name) < 0:
            raise TrainingError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")
    if cfg.size and cfg.crop:
        raise TrainingError("--size and --crop exclude each other (crops are taken from full-size images)")
