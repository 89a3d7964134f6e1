"""``lowlight-fast benchmark``: how fast the models run on this machine, fused against the reference.

For each model: inference (``enhance_image``, one batch of the given size; Zero-DCE++ at scale factor
12 by default, as ``enhance``; SCI's Finetunemodel) and/or one training step (the model as ``lowlight-fast train``
builds it and its paper's loss, forward + backward; the optimiser update is left out). Every case is timed
after warm-up calls (``--warmup``), as the median of ``--repeats`` calls; CUDA work is synchronised
before each clock read. ``--reference`` times the plain-PyTorch reference path (``fused=False`` models,
``LOWLIGHT_FAST_BACKEND=reference`` ops) on the same inputs and prints the speed-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

MODES = ("inference", "train", "both")
DEFAULT_SIZE = {"inference": (1920, 1080), "train": (256, 256)}
DEFAULT_BATCH = {"inference": 1, "train": 8}


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"the images must be at least 16x16 (Zero-DCE's exposure pool), got {text}")
    return w, h


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    from lowlight_fast.models import registry

    p.add_argument("--model", nargs="+", choices=registry.NAMES, default=list(registry.NAMES),
                   help="models (default: all)")
    p.add_argument("--mode", choices=MODES, default="both",
                   help="inference (enhance_image), train (one training step) or both (default)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="WIDTHxHEIGHT (default: 1920x1080 for inference, 256x256 for training)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 1 for inference, 8 for training)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case; the median is shown (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--reference", action="store_true", help="also time the plain-PyTorch reference path")
    p.add_argument("--scale-factor", type=int, default=12, metavar="S",
                   help="Zero-DCE++ inference scale factor, as for enhance (default 12; training uses 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _prepared(model, fused: bool, device):
    """``model`` on ``device`` with the fused or the reference curve, without its input-range check
    (as ``lowlight-fast enhance`` and ``train`` run it: their images are in range)."""
    if hasattr(model, "fused"):
        model.fused = fused
    model.check_range = False
    return model.to(device)


def _case(model_name: str, mode: str, x, fused: bool, scale_factor: int = 12):
    """A no-argument callable running one inference or one training step."""
    import torch

    from lowlight_fast.models import registry
    from lowlight_fast.train import Objective, TrainConfig, build_training_model

    cfg = TrainConfig.for_model(model_name, "", "")
    torch.manual_seed(0)
    if mode == "inference":
        spec = registry.get(model_name)
        model = spec.inference(**({"scale_factor": scale_factor} if spec.scale_factor is not None else {}))
        model = _prepared(model.eval(), fused, x.device)
        return lambda: model.enhance_image(x)
    model = _prepared(build_training_model(cfg), fused, x.device)
    objective = Objective(cfg)

    def step():
        model.zero_grad(set_to_none=True)
        total, _ = objective(model, x, None)
        total.backward()

    return step


def run_benchmark(models, modes, size, batch, device, repeats: int, warmup: int, reference: bool,
                  scale_factor: int = 12, out=sys.stdout):
    """Times every (model, mode); prints a Markdown table; returns its rows as dicts."""
    import torch

    from lowlight_fast import use_backend

    rows = []
    print("| model | mode | batch x size | fused (ms) | images/s" + (" | reference (ms) | speed-up |" if reference else " |"),
          file=out)
    print("|---|---|---|---:|---:" + ("|---:|---:|" if reference else "|"), file=out)
    for mode in modes:
        w, h = size or DEFAULT_SIZE[mode]
        n = batch or DEFAULT_BATCH[mode]
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(n, 3, h, w, generator=gen) * 0.3).to(device)
        for name in models:
            with use_backend("auto"):
                fused = _median_seconds(_case(name, mode, x, True, scale_factor), device, repeats, warmup)
            row = {"model": name, "mode": mode, "batch": n, "width": w, "height": h, "fused_s": fused}
            label = name + (f" (s={scale_factor if mode == 'inference' else 1})" if name == "zerodcepp" else "")
            line = f"| {label} | {mode} | {n} x {w}x{h} | {fused * 1e3:.1f} | {n / fused:.2f}"
            if reference:
                with use_backend("reference"):
                    ref = _median_seconds(_case(name, mode, x, False, scale_factor), device, repeats, warmup)
                row["reference_s"] = ref
                line += f" | {ref * 1e3:.1f} | {ref / fused:.2f}x"
            print(line + " |", file=out, flush=True)
            rows.append(row)
    return rows


def cmd_benchmark(args) -> int:
    import torch

    from lowlight_fast.device import DeviceError, pick_device

    if args.repeats < 1 or args.warmup < 0 or args.scale_factor < 1 or (args.batch is not None and args.batch < 1):
        print("error: --repeats, --batch and --scale-factor must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    modes = ["inference", "train"] if args.mode == "both" else [args.mode]
    print(f"device {device}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"median of {args.repeats} after {args.warmup} warm-up calls", flush=True)
    run_benchmark(args.model, modes, args.size, args.batch, device, args.repeats, args.warmup, args.reference,
                  args.scale_factor)
    return 0
