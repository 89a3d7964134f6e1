"""One Zero-DCE training step (model + losses, forward + backward): eager against fused.

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_train_step.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds

- ``eager``: ZeroDCE(fused=False) (reference curve) + ZeroDCELoss(fused=False) (reference losses).
- ``fused``: ZeroDCE(fused=True) + ZeroDCELoss() (zerodce_pooled, tv_loss, the fused curve).
The step is the original's: enhanced_4, enhanced_8, r = model(low); loss = ZeroDCELoss(low, enhanced_8, r);
loss.backward() (the optimiser update is the same for both and left out). Subnormal weights are not an
issue here (fresh N(0, 0.02) weights). The model comes from lowlight_fast.models.zerodce.
"""
from __future__ import annotations

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
