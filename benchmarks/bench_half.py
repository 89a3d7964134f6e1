"""float16 inference (``Enhancer(half=True)``, ``enhance --half``) against float32: error and time.

    PYTHONPATH=$PWD python benchmarks/bench_half.py [--device cpu|cuda] [--size 1920x1080] [--repeats 5]

Error: every model with its bundled weights on every bundled sample photo at its own size: the largest
and mean absolute difference of the enhanced float images, and of the 8-bit results (the share of samples
that differ and the largest difference in levels). It does not depend on the machine's load.
Time: one ``--size`` frame through each model in float32 and float16, mean of ``--repeats`` calls after
two warm-ups (on CUDA synchronised, copies included, as ``Enhancer`` returns the image on the CPU).
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lowlight_fast.enhance import Enhancer  # noqa: E402
from lowlight_fast.models import registry  # noqa: E402

MODELS = [("zerodce", {}), ("zerodcepp", {"scale_factor": 12}), ("zerodcepp", {"scale_factor": 1}), ("sci", {})]


def _label(name, kwargs):
    return name + (f" (scale factor {kwargs['scale_factor']})" if kwargs else "")


def _photo(path) -> torch.Tensor:
    a = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    photos = registry.bundled_samples()
    print(f"torch {torch.__version__}, device {a.device} ({name}), {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; {len(photos)} bundled photos\n")
    print("| model | max abs error | mean abs error | 8-bit samples that differ | largest 8-bit difference |")
    print("|---|---:|---:|---:|---:|")
    for model, kwargs in MODELS:
        full, half = Enhancer(model, device=a.device, **kwargs), Enhancer(model, device=a.device, half=True, **kwargs)
        worst = mean = differ = total = big = 0.0
        for path in photos:
            x = _photo(path)
            y32, y16 = full(x), half(x)
            d = (y16 - y32).abs()
            worst, mean = max(worst, d.max().item()), mean + d.sum().item()
            q = (y16 * 255 + 0.5).floor().clamp(0, 255) - (y32 * 255 + 0.5).floor().clamp(0, 255)
            differ, big, total = differ + (q != 0).sum().item(), max(big, q.abs().max().item()), total + d.numel()
        print(f"| {_label(model, kwargs)} | {worst:.2e} | {mean / total:.2e} | {differ / total:.2%} | {big:.0f} |")
    print(f"\n{w}x{h}, one frame, mean of {a.repeats} calls after 2 warm-ups:\n")
    print("| model | float32 ms | float16 ms | float32 / float16 |\n|---|---:|---:|---:|")
    x = torch.rand(1, 3, h, w) * 0.5
    for model, kwargs in MODELS:
        times = []
        for half in (False, True):
            e = Enhancer(model, device=a.device, half=half, **kwargs)
            for _ in range(2):
                e(x)
            t = time.perf_counter()
            for _ in range(a.repeats):
                e(x)
            times.append((time.perf_counter() - t) / a.repeats * 1e3)
        print(f"| {_label(model, kwargs)} | {times[0]:.1f} | {times[1]:.1f} | {times[0] / times[1]:.2f}x |")
    print(f"\n(load average after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
