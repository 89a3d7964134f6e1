"""A whole training step of the authors' scripts, original-style code against the compat drop-ins
(the same script with its imports switched to ``lowlight_fast.compat``): forward, loss, backward,
gradient clipping and the optimiser update.

Timing (pytest-benchmark, one group per model and shape):
    PYTHONPATH=$PWD python -m pytest benchmarks/bench_train_dropin.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-sort=name
Interleaved ratios (one process, the implementations alternating round by round after a warm-up step
each; the median of each step's time over the original-style step's in the same round):
    PYTHONPATH=$PWD python benchmarks/bench_train_dropin.py --ratios [--models sci zerodce]
        [--impls original compiled compat] [--rounds 5] [--sci-shapes 1x3x400x600 ...]
What each change inside the compat SCI step gives (interleaved the same way, base = none of them):
    PYTHONPATH=$PWD python benchmarks/bench_train_dropin.py --sci-changes [--rounds 9]

Implementations:
- ``original``: the computation the authors' script runs, under use_backend("reference"). SCI:
  SCINetwork(stage=3) + LossFunction summed over the stages of ``forward``'s lists; Zero-DCE:
  ZeroDCE(fused=False) with the concatenating trunk + the Myloss classes as the script calls them.
- ``compiled``: ``original`` with its forward + loss under torch.compile (backward, clipping and the
  optimiser eager).
- ``compat``: ``lowlight_fast.compat.sci.model.Network(stage=3)`` + ``model._loss(input)``;
  ``lowlight_fast.compat.zerodce.model.enhance_net_nopool`` + ``compat.zerodce.Myloss``.
Optimisers as the scripts: SCI Adam(lr 3e-4, betas (0.9, 0.999), weight decay 3e-4) and
clip_grad_norm_(5); Zero-DCE Adam(lr 1e-4, weight decay 1e-4) and clip_grad_norm_(0.1).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager

import pytest
import torch
from torch import nn

from lowlight_fast import use_backend
from lowlight_fast.compat.sci import model as sci_model
from lowlight_fast.compat.zerodce import Myloss
from lowlight_fast.compat.zerodce import model as zerodce_model
from lowlight_fast.losses import LossFunction
from lowlight_fast.models import sci
from lowlight_fast.models.sci import SCINetwork
from lowlight_fast.models.zerodce import ZeroDCE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_memory import _sci_forward_loss, _trunk  # noqa: E402

IMPLS = ["original", "compiled", "compat"]
CASES = [("sci", (1, 3, 400, 600)), ("zerodce", (8, 3, 256, 256))]


def _input(shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 0.4


def _zerodce_loss(losses, model, img_lowlight):
    """The Zero-DCE script's loss, term by term as it writes it."""
    L_color, L_spa, L_exp, L_TV = losses  # noqa: N806 (the script's names)
    enhanced_image_1, enhanced_image, A = model(img_lowlight)
    loss_TV = 200 * L_TV(A)  # noqa: N806
    loss_spa = torch.mean(L_spa(enhanced_image, img_lowlight))
    loss_col = 5 * torch.mean(L_color(enhanced_image))
    loss_exp = 10 * torch.mean(L_exp(enhanced_image))
    return loss_TV + loss_spa + loss_col + loss_exp


def setup(model_name: str, impl: str, shape):
    """(step, context factory): step() runs one whole training step under context()."""
    torch.manual_seed(0)
    x = _input(shape)
    if model_name == "sci":
        if impl == "compat":
            model = sci_model.Network(stage=3)

            def forward_loss(v):
                return model._loss(v)
        else:
            model = SCINetwork(stage=3)
            model.check_range = False
            criterion = LossFunction()

            def forward_loss(v):
                return _sci_forward_loss(model, criterion, v)
        opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=3e-4)
        clip = 5.0
    else:
        model = zerodce_model.enhance_net_nopool() if impl == "compat" else ZeroDCE(fused=False)
        model.check_range = False
        losses = (Myloss.L_color(), Myloss.L_spa(), Myloss.L_exp(16, 0.6), Myloss.L_TV())

        def forward_loss(v):
            return _zerodce_loss(losses, model, v)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
        clip = 0.1
    if impl == "compiled":
        forward_loss = torch.compile(forward_loss, dynamic=False)

    def step():
        opt.zero_grad()
        loss = forward_loss(x)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    def context():
        stack = ExitStack()
        if impl != "compat":
            stack.enter_context(use_backend("reference"))
            if model_name == "zerodce":
                stack.enter_context(_trunk("plain"))
        return stack

    return step, context


def _label(model_name, shape):
    return f"{'SCI' if model_name == 'sci' else 'Zero-DCE'} train step " + "x".join(map(str, shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model_name, shape", CASES, ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_train_step_dropin(benchmark, model_name, shape, impl):
    benchmark.group = _label(model_name, shape)
    step, context = setup(model_name, impl, shape)
    with context():
        step()  # warm-up (compiles torch.compile's graph)
        benchmark.pedantic(step, rounds=3, iterations=1)


def time_ratios(model_name: str, impls, shape, rounds: int) -> dict:
    runs = {impl: setup(model_name, impl, shape) for impl in impls}
    times = {impl: [] for impl in impls}
    for step, context in runs.values():
        with context():
            step()  # warm-up
    for rnd in range(rounds):
        for impl in impls if rnd % 2 == 0 else impls[::-1]:
            step, context = runs[impl]
            with context():
                t = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - t)
    base = times[impls[0]]
    return {impl: (statistics.median(ts), statistics.median(b / t for t, b in zip(ts, base)))
            for impl, ts in times.items()}


SCI_CHANGES = ["none", "channels-last", "channels-last+in-place"]


@contextmanager
def _sci_changes(which: str):
    """The compat SCI step with some of its changes undone: "none" = NCHW and the modules' own
    activations; "channels-last" = channels-last convolutions, the activations not in place."""
    saved = sci._training_layout, sci._run
    if which == "none":
        sci._training_layout = lambda x: x
    if which in ("none", "channels-last"):
        sci._run = lambda seq, fea: seq(fea)
    try:
        yield
    finally:
        sci._training_layout, sci._run = saved


def sci_change_ratios(shape, rounds: int) -> dict:
    runs = {}
    for which in SCI_CHANGES:
        step, _ = setup("sci", "compat", shape)
        runs[which] = (step, lambda which=which: _sci_changes(which))
    times = {which: [] for which in SCI_CHANGES}
    for step, context in runs.values():
        with context():
            step()
    for rnd in range(rounds):
        for which in SCI_CHANGES if rnd % 2 == 0 else SCI_CHANGES[::-1]:
            step, context = runs[which]
            with context():
                t = time.perf_counter()
                step()
                times[which].append(time.perf_counter() - t)
    base = times[SCI_CHANGES[0]]
    return {w: (statistics.median(ts), statistics.median(b / t for t, b in zip(ts, base)))
            for w, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", action="store_true")
    p.add_argument("--sci-changes", action="store_true")
    p.add_argument("--models", nargs="+", default=["sci", "zerodce"], choices=["sci", "zerodce"])
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS, help="the first is the base")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sci-shapes", nargs="+", default=["1x3x400x600"])
    args = p.parse_args()
    if not (args.ratios or args.sci_changes):
        print(__doc__)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.sci_changes:
        for s in args.sci_shapes:
            shape = tuple(int(v) for v in s.split("x"))
            res = sci_change_ratios(shape, args.rounds)
            print(f"\ncompat {_label('sci', shape)}, changes ({args.rounds} rounds, load average "
                  f"{os.getloadavg()[0]:.1f} after)")
            print("| changes applied | step time (s, median) | speed-up over none (median ratio) |")
            print("|---|---:|---:|")
            for which, (sec, ratio) in res.items():
                print(f"| {which} | {sec:.2f} | {ratio:.2f} |", flush=True)
        return
    for model_name in args.models:
        shapes = ([tuple(int(v) for v in s.split("x")) for s in args.sci_shapes] if model_name == "sci"
                  else [dict(CASES)["zerodce"]])
        for shape in shapes:
            res = time_ratios(model_name, args.impls, shape, args.rounds)
            print(f"\n{_label(model_name, shape)} ({args.rounds} rounds, load average "
                  f"{os.getloadavg()[0]:.1f} after)")
            print(f"| implementation | step time (s, median) | speed-up over {args.impls[0]} (median ratio) |")
            print("|---|---:|---:|")
            for impl, (sec, ratio) in res.items():
                print(f"| {impl} | {sec:.2f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
