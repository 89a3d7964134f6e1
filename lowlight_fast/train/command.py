"""``lowlight-fast train``: its options and the command (parse, call ``train``, one-line errors)."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import torch

from lowlight_fast.train.checkpoint import CHECKPOINT_NAME
from lowlight_fast.train.config import RECIPES, TrainConfig, TrainingError, validate_config
from lowlight_fast.train.loop import train


def _defaults(key: str, show=lambda v: f"{v:g}") -> str:
    """The recipes' values of ``key`` for the help, e.g. "8 zerodce/zerodcepp, 1 sci"."""
    models: dict = {}
    for name, recipe in RECIPES.items():
        models.setdefault(recipe[key], []).append(name)
    return ", ".join(f"{show(v)} {'/'.join(names)}" for v, names in models.items())


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from lowlight_fast.cli import int_at_least

    p.add_argument("model", choices=tuple(RECIPES), help="network to train")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of training images (searched recursively)")
    p.add_argument("-o", "--out", default=None, metavar="DIR", help=(
        "folder for checkpoint.pt, <model>.safetensors and train_log.csv (default runs/<model>)"))
    p.add_argument("--size", type=int, default=None, metavar="N", help=(
        f"resize images to N x N (default: {_defaults('size', lambda v: str(v) if v else 'full size')}); "
        "0 keeps full size"))
    p.add_argument("--crop", type=int, default=None, metavar="N",
                   help="train on random N x N crops of the full-size images (implies --size 0)")
    p.add_argument("--batch-size", type=int, default=None, help=f"default: {_defaults('batch_size')}")
    p.add_argument("--epochs", type=int, default=None, help=f"default: {_defaults('epochs')}")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None, help=f"default: {_defaults('lr')}")
    p.add_argument("--weight-decay", type=float, default=None, help=f"default: {_defaults('weight_decay')}")
    p.add_argument("--grad-clip", type=float, default=None,
                   help=f"grad-norm clip; default {_defaults('grad_clip')}")
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help="learning-rate schedule (default constant, as the originals)")
    p.add_argument("--stages", type=int, default=None, help="SCI stages (default 3)")
    p.add_argument("--sci-ycbcr", choices=("faithful", "per_pixel"), default=None, help=(
        "SCI's SmoothLoss colour conversion: faithful (default: the original's memory-layout quirk, which "
        "mixes neighbouring pixels) or per_pixel (a proper per-pixel YCbCr)"))
    p.add_argument("--seed", type=int, default=None,
                   help="seed for initialisation, order and crops (default 0)")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (float16 + grad scaling on CUDA, bfloat16 on CPU)")
    p.add_argument("--tile", type=_tile, default=None, metavar="N|auto", help=(
        "Zero-DCE/Zero-DCE++: forward and backward in N x N tiles (N a multiple of 16) with the exact "
        "gradients of whole images, in memory bounded by N; auto: the largest tile that fits in the free "
        "memory (whole images when they fit). Default: whole images"))
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="default 200 steps")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: OUT/checkpoint.pt) exactly where it stopped")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default 0: in the main one)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads for torch (default: torch's default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _tile(text: str) -> int | str:
    """--tile's argparse type: a positive integer or "auto" (validate_config checks the multiple of 16)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a tile size in pixels or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


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
        validate_config(cfg)
        resume = None
        if args.resume is not None:
            resume = os.path.join(out, CHECKPOINT_NAME) if args.resume == "auto" else args.resume
        given = frozenset(k for k, v in overrides.items() if v is not None and k != "progress"
                          and getattr(args, k, None) is not None)
        train(cfg, resume=resume, given=given)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
