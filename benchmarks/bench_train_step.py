"""One Zero-DCE training step (model + losses, forward + backward): eager against fused.

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_train_step.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds
Where the time goes (torch.profiler, self time per kind of op, mean over 3 steps after a warm-up):
    PYTHONPATH=$PWD python benchmarks/bench_train_step.py --where [--keep-freed-memory]

- ``eager``: ZeroDCE(fused=False) (reference curve) + ZeroDCELoss(fused=False) (reference losses).
- ``fused``: ZeroDCE(fused=True) + ZeroDCELoss() (zerodce_pooled, tv_loss, the fused curve).
The step is the original's: enhanced_4, enhanced_8, r = model(low); loss = ZeroDCELoss(low, enhanced_8, r);
loss.backward() (the optimiser update is the same for both and left out). Subnormal weights are not an
issue here (fresh N(0, 0.02) weights). The model comes from lowlight_fast.models.zerodce.
"""
from __future__ import annotations

import sys
from collections import defaultdict

import pytest
import torch

from lowlight_fast import use_backend
from lowlight_fast.losses import ZeroDCELoss

zerodce = pytest.importorskip("lowlight_fast.models.zerodce", reason="the Zero-DCE model is not in this tree")

SHAPES = [(8, 3, 256, 256)]
IMPLS = ["eager", "fused"]


def _setup(impl: str, shape):
    torch.manual_seed(0)
    fused = impl == "fused"
    model = zerodce.ZeroDCE(fused=fused)
    loss = ZeroDCELoss(fused=fused)
    low = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 0.4
    return model, loss, low


def _step(model, loss, low):
    model.zero_grad(set_to_none=True)
    _, enhanced, r = model(low)
    loss(low, enhanced, r).backward()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_train_step(benchmark, shape, impl):
    benchmark.group = "Zero-DCE train step fwd+bwd " + "x".join(map(str, shape))
    model, loss, low = _setup(impl, shape)
    with use_backend("auto" if impl == "fused" else "reference"):
        _step(model, loss, low)  # warm-up
        benchmark.pedantic(_step, args=(model, loss, low), rounds=3, iterations=1)


# --- where the time goes ---------------------------------------------------------------------------

_KINDS = [  # (kind, substrings of profiler op names), first match wins
    ("convolutions, backward", ("convolution_backward",)),
    ("convolutions, forward", ("convolution", "conv2d")),
    ("curve (8 steps), fwd+bwd", ("le_curve", "LeCurve")),
    ("L_TV, fwd+bwd", ("tv_loss", "illumination")),
    ("L_spa + L_col + L_exp, fwd+bwd", ("zerodce_pooled", "avg_pool", "pow", "sqrt", "mean")),
    ("ReLU, tanh, concat, fwd+bwd", ("relu", "threshold", "tanh", "cat", "split", "slice")),
]


def _kind(name: str) -> str:
    for kind, keys in _KINDS:
        if any(k in name for k in keys):
            return kind
    return "other (autograd engine, gradient accumulation, small ops)"


def where_the_time_goes(shape=SHAPES[0], steps: int = 3) -> None:
    for impl in IMPLS:
        model, loss, low = _setup(impl, shape)
        with use_backend("auto" if impl == "fused" else "reference"):
            _step(model, loss, low)  # warm-up
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    _step(model, loss, low)
        per_kind: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            per_kind[_kind(event.key)] += event.self_cpu_time_total / 1e3 / steps
        total = sum(per_kind.values())
        print(f"\n{impl}: {'x'.join(map(str, shape))}, {total:.0f} ms of op time per step")
        print("| kind of op | ms per step | share |\n|---|---:|---:|")
        for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% |")


if __name__ == "__main__":
    if "--keep-freed-memory" in sys.argv:
        from lowlight_fast import keep_freed_memory

        keep_freed_memory()
    if "--where" in sys.argv:
        where_the_time_goes()
    else:
        print(__doc__)
