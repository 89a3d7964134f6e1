"""CPU inference (``enhance_image``) with the convolutions in NCHW against channels-last (what
``enhance_image`` does on the CPU since 2026-11-25): mean seconds per image over 5 calls after 2 warm-ups.

    PYTHONPATH=$PWD python benchmarks/bench_inference_layout.py [--keep-freed-memory]

The NCHW rows patch ``lowlight_fast.models._common.inference_layout`` (and the models' imports of it)
to leave the input as it is. Outputs of the two layouts are compared (largest difference).
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import torch

from lowlight_fast.models import SCIFinetune, ZeroDCE, ZeroDCEPlusPlus
from lowlight_fast.models import _common, sci, zerodce, zerodcepp

CASES = [
    ("Zero-DCE", lambda: ZeroDCE(), (680, 720)),
    ("Zero-DCE", lambda: ZeroDCE(), (1080, 1920)),
    ("Zero-DCE++ s=1", lambda: ZeroDCEPlusPlus(scale_factor=1), (1080, 1920)),
    ("Zero-DCE++ s=12", lambda: ZeroDCEPlusPlus(scale_factor=12), (1080, 1920)),
    ("SCI (Finetunemodel)", lambda: SCIFinetune(), (1080, 1920)),
]


@contextmanager
def nchw_convolutions():
    modules = (_common, zerodce, zerodcepp, sci)
    saved = [m.inference_layout for m in modules]
    for m in modules:
        m.inference_layout = lambda x: x
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m.inference_layout = f


def seconds_per_image(model, x, calls: int = 5) -> tuple[float, torch.Tensor]:
    for _ in range(2):
        y = model.enhance_image(x)
    t = time.perf_counter()
    for _ in range(calls):
        y = model.enhance_image(x)
    return (time.perf_counter() - t) / calls, y


def main() -> None:
    if "--keep-freed-memory" in sys.argv:
        from lowlight_fast import keep_freed_memory

        keep_freed_memory()
    print("| model | size | NCHW (s) | channels-last (s) | speed-up | largest difference |")
    print("|---|---|---:|---:|---:|---:|")
    for name, make, (h, w) in CASES:
        torch.manual_seed(0)
        model = make().eval()
        x = torch.rand(1, 3, h, w) * 0.3
        with nchw_convolutions():
            t_nchw, y_nchw = seconds_per_image(model, x)
        t_cl, y_cl = seconds_per_image(model, x)
        diff = (y_cl - y_nchw).abs().max().item()
        print(f"| {name} | {w}x{h} | {t_nchw:.4f} | {t_cl:.4f} | {t_nchw / t_cl:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
