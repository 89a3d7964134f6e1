"""Memory and time of one untiled training step (model + loss, forward + backward), original-style
code against ours.

    PYTHONPATH=$PWD python benchmarks/bench_train_memory.py [--shapes 8x3x256x256 ...] [--models zerodce sci]
        [--impls original previous ours ...] [--rounds 3] [--no-time] [--no-memory]

Memory: each (model, implementation, shape) runs one step in a fresh subprocess; the figure is the
step's peak resident memory above what the process held before it (VmHWM after resetting it through
/proc/self/clear_refs, minus VmRSS before the step), in bytes per pixel of the batch and in GiB. It does
not depend on the machine's load. Time: one process, the implementations interleaved round by round
after a warm-up step each; the median over the rounds of each implementation's time divided by the
original's (ratios hold up under load better than seconds).

Implementations (Zero-DCE, ``zerodce``; Zero-DCE++ at scale factor 1, ``zerodcepp``):
- ``original``: the original computation: ZeroDCE(fused=False) + ZeroDCELoss(fused=False) under
  use_backend("reference") (plain curve, concatenating trunk, plain losses).
- ``previous``: the fused curve and losses over the plain (concatenating) trunk: the code before the
  lean trunk.
- ``split``: as ``previous`` with the trunk as autograd over split convolutions (no concatenations):
  what the models run under autocast and torch.compile.
- ``ours``: the model as it is (fused=True): the lean trunk node (lowlight_fast.models.lean_trunk).
- ``ours-cl``: ``ours`` with a channels-last input (the convolutions then run channels-last).
SCI (``sci``, SCINetwork(stage=3) + LossFunction): ``original`` = the loss summed over the stages of
``forward`` (every stage's graph kept) under use_backend("reference"); ``previous`` = the same with the
fused SmoothLoss; ``ours`` = ``model._loss(x)`` as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager

import torch

from lowlight_fast import use_backend
from lowlight_fast.losses import LossFunction, ZeroDCELoss, ZeroDCEPPLoss
from lowlight_fast.models import lean_trunk
from lowlight_fast.models._common import dce_trunk
from lowlight_fast.models.sci import SCINetwork
from lowlight_fast.models.zerodce import ZeroDCE
from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

SHAPES = ["8x3x256x256", "8x3x512x512", "1x3x1080x1920"]
IMPLS = {
    "zerodce": ["original", "previous", "split", "ours", "ours-cl"],
    "zerodcepp": ["original", "previous", "split", "ours"],
    "sci": ["original", "previous", "ours"],
}


@contextmanager
def _trunk(kind: str):
    """Patch the models' training trunk: "plain" (concatenating), "split" (autograd, split) or as is."""
    saved = lean_trunk.zerodce_curve_maps, lean_trunk.zerodcepp_trunk
    if kind == "plain":
        lean_trunk.zerodce_curve_maps = lambda m, x: torch.tanh(dce_trunk(m, x))
        lean_trunk.zerodcepp_trunk = dce_trunk
    elif kind == "split":
        lean_trunk.zerodce_curve_maps = lambda m, x: torch.tanh(lean_trunk.split_trunk(m, x))
        lean_trunk.zerodcepp_trunk = lambda m, x: lean_trunk.split_trunk(m, x, separable=True)
    try:
        yield
    finally:
        lean_trunk.zerodce_curve_maps, lean_trunk.zerodcepp_trunk = saved


def _sci_forward_loss(model, criterion, x):
    """The original's ``_loss``: the criterion summed over the stages of ``forward``."""
    i_list, _, in_list, _ = model(x)
    return sum(criterion(in_list[k], i_list[k]) for k in range(model.stage))


def setup(model_name: str, impl: str, shape):
    """(model, step function, context manager factory) for one implementation; step() runs one step."""
    torch.manual_seed(0)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 0.4
    if impl == "ours-cl":
        x = x.contiguous(memory_format=torch.channels_last)
    fused = impl != "original"
    if model_name == "sci":
        model = SCINetwork(stage=3)
        model.check_range = False
        criterion = LossFunction()

        def loss():
            if impl == "ours":
                model._criterion = criterion
                return model._loss(x)
            return _sci_forward_loss(model, criterion, x)
    else:
        if model_name == "zerodce":
            model, criterion = ZeroDCE(fused=fused), ZeroDCELoss(fused=fused)
        else:
            model, criterion = ZeroDCEPlusPlus(scale_factor=1, fused=fused), ZeroDCEPPLoss(fused=fused)
        model.check_range = False

        def loss():
            out = model(x)
            return criterion(x, out[-2], out[-1])

    def step():
        model.zero_grad(set_to_none=True)
        loss().backward()

    def context():
        stack = ExitStack()
        if impl == "original":
            stack.enter_context(use_backend("reference"))
        if impl in ("original", "previous") and model_name != "sci":
            stack.enter_context(_trunk("plain"))
        if impl == "split":
            stack.enter_context(_trunk("split"))
        return stack

    return step, context


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(model_name: str, impl: str, shape) -> None:
    step, context = setup(model_name, impl, shape)
    with context():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS")
        step()
        peak = _status("VmHWM")
    print(json.dumps({"base": base, "peak": peak}))


def memory_row(model_name: str, impl: str, shape_s: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", model_name, impl, shape_s],
                         capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _shape(s: str):
    return tuple(int(v) for v in s.split("x"))


def time_ratios(model_name: str, impls, shape, rounds: int) -> dict:
    runs = {impl: setup(model_name, impl, shape) for impl in impls}
    times = {impl: [] for impl in impls}
    for impl, (step, context) in runs.items():
        with context():
            step()  # warm-up
    for rnd in range(rounds):
        order = impls if rnd % 2 == 0 else impls[::-1]
        for impl in order:
            step, context = runs[impl]
            with context():
                t = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - t)
    base = impls[0]
    return {impl: (statistics.median(ts), statistics.median(t / b for t, b in zip(ts, times[base])))
            for impl, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES)
    p.add_argument("--models", nargs="+", default=["zerodce", "sci"], choices=sorted(IMPLS))
    p.add_argument("--impls", nargs="+", default=None, help="default: all of the model's, original first")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-time", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], _shape(args.child[2]))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for model_name in args.models:
        impls = [i for i in (args.impls or IMPLS[model_name]) if i in IMPLS[model_name]]
        for shape_s in args.shapes:
            shape = _shape(shape_s)
            pixels = shape[0] * shape[2] * shape[3]
            print(f"\n{model_name} {shape_s}", flush=True)
            mem = {} if args.no_memory else {impl: memory_row(model_name, impl, shape_s) for impl in impls}
            tim = {} if args.no_time else time_ratios(model_name, impls, shape, args.rounds)
            print("| implementation | step peak RSS above start (GiB) | bytes per pixel | vs original "
                  "| step time (s, median) | time vs original (median ratio) |")
            print("|---|---:|---:|---:|---:|---:|")
            ref_extra = None
            for impl in impls:
                cells = [impl]
                m = mem.get(impl)
                if m is None:
                    cells += ["", "", ""]
                elif "error" in m:
                    cells += [m["error"], "", ""]
                else:
                    extra = m["peak"] - m["base"]
                    ref_extra = extra if ref_extra is None else ref_extra
                    cells += [f"{extra / 2**30:.2f}", f"{extra / pixels:.0f}", f"{extra / ref_extra:.2f}"]
                if impl in tim:
                    cells += [f"{tim[impl][0]:.2f}", f"{tim[impl][1]:.2f}"]
                else:
                    cells += ["", ""]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
