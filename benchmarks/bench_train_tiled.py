"""One Zero-DCE training step at photo sizes: time and peak memory, each in a fresh subprocess.

    PYTHONPATH=$PWD python benchmarks/bench_train_tiled.py [--model zerodce] [--tile 256] [--sizes HxW ...]
    PYTHONPATH=$PWD python benchmarks/bench_train_tiled.py --bytes-per-pixel   # tiled.TRAIN_BYTES_PER_PIXEL

- ``original``: the original-style eager step (model with the reference curve, reference losses,
  ``LOWLIGHT_FAST_BACKEND=reference``), untiled: what the authors' code computes, as it computes it.
- ``untiled``: ours, the fused ops, the whole image at once (what ``train.compute_gradients`` runs).
- ``tiled``: ours in tiles (``lowlight_fast.train.tiled.compute_gradients_tiled``), the same gradients.

A step is forward, loss and backward of one 1 x 3 x H x W image (the optimiser update, the same for all
three and small, is left out), after one warm-up step (``--steps 0``: the warm-up step alone, for
the large sizes on a slow machine). Peak memory is the child's peak RSS (VmHWM): the
whole process, the interpreter and torch included. The 4K image is run tiled only (the untiled steps
would need several times the memory and are not the point). Each child is a new process, so no
allocation of one implementation is reused by another.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = [(1080, 1920), (2160, 3840)]
IMPLS = ["original", "untiled", "tiled"]


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(model_name: str, impl: str, h: int, w: int, tile: int, steps: int) -> dict:
    import torch

    from lowlight_fast import use_backend
    from lowlight_fast.models import registry
    from lowlight_fast.train.tiled import compute_gradients_tiled

    class _Objective:  # what compute_gradients_tiled reads of an Objective
        loss = registry.get(model_name).loss(fused=impl != "original")

    torch.manual_seed(0)
    model = registry.get(model_name).training(fused=impl != "original")
    model.check_range = False
    x = torch.rand((1, 3, h, w), generator=torch.Generator().manual_seed(0)) * 0.4
    base = _peak_rss()

    def step():
        model.zero_grad(set_to_none=True)
        if impl == "tiled":
            compute_gradients_tiled(model, _Objective, x, tile)
        else:
            enhanced, maps = model(x)[-2:]
            _Objective.loss(x, enhanced, maps).backward()

    times = []
    with use_backend("reference" if impl == "original" else "auto"):
        for i in range(steps + 1):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)  # times[0]: the warm-up
    return {"impl": impl, "h": h, "w": w, "tile": tile if impl == "tiled" else None, "times": times,
            "peak_rss": _peak_rss(), "rss_before_step": base, "threads": torch.get_num_threads()}


def _run_child(*args, keep_freed: bool) -> dict:
    env = dict(os.environ, LOWLIGHT_FAST_KEEP_FREED_MEMORY="1" if keep_freed else "0")
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bytes_per_pixel(keep_freed: bool) -> None:
    """The training working set per pixel of the untiled fused step: the slope of the peak RSS between
    two sizes (so the interpreter and torch cancel out)."""
    for name in ("zerodce", "zerodcepp"):
        small, large = (_run_child(name, "untiled", s, s, 0, 1, keep_freed=keep_freed) for s in (384, 768))
        slope = (large["peak_rss"] - small["peak_rss"]) / (768 * 768 - 384 * 384)
        print(f"{name}: {slope:.0f} bytes per pixel (peak RSS {small['peak_rss'] / 2**20:.0f} MiB at "
              "384x384, "
              f"{large['peak_rss'] / 2**20:.0f} MiB at 768x768)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zerodce", choices=("zerodce", "zerodcepp"))
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--steps", type=int, default=2,
                   help="timed steps after the warm-up (default 2; 0: the warm-up step alone)")
    p.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SHAPES], metavar="HxW",
                   help="image sizes (default 1080x1920 2160x3840); all three implementations at the first")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="the caching CPU allocator on in the children (the lowlight-fast command's default)")
    p.add_argument("--bytes-per-pixel", action="store_true")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if os.environ.get("LOWLIGHT_FAST_KEEP_FREED_MEMORY") == "1":
            from lowlight_fast import keep_freed_memory

            keep_freed_memory()
        name, impl, h, w, tile, steps = args.child
        print(json.dumps(_child(name, impl, int(h), int(w), int(tile), int(steps))))
        return
    if args.bytes_per_pixel:
        _bytes_per_pixel(args.keep_freed_memory)
        return
    print(f"{args.model}, tile {args.tile}, caching allocator {'on' if args.keep_freed_memory else 'off'}, "
          f"{args.steps} timed step(s) after a warm-up; times in s (each step), peak RSS of the process")
    print("| image | implementation | step time (s) | peak RSS (MiB) |\n|---|---|---|---:|")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    for h, w in sizes:
        for impl in IMPLS if (h, w) == SHAPES[0] else ["tiled"]:
            r = _run_child(args.model, impl, h, w, args.tile, args.steps, keep_freed=args.keep_freed_memory)
            label = f"tiled {args.tile}" if impl == "tiled" else impl
            timed = r["times"][1:]
            times = ", ".join(f"{t:.1f}" for t in timed) if timed else f"{r['times'][0]:.1f} (the warm-up)"
            print(f"| 1x3x{h}x{w} | {label} | {times} | {r['peak_rss'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
