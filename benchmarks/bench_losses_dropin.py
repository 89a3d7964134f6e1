"""The drop-in path: the original-named Zero-DCE loss classes called one by one, as the authors' training
script calls them, forward + backward, against the eager reference and torch.compile(reference).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_losses_dropin.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-sort=name
    ATEN_CPU_CAPABILITY=default ...   (the baseline instruction-set path of our kernels)
    LOWLIGHT_FAST_HUGE_PAGES=0 ...    (without our huge-page advice on the kernels' outputs)

Groups (one per case and shape):
- ``script``: ``torch.mean(L_spa(e, low)) + 5 * torch.mean(L_color(e)) + 10 * torch.mean(L_exp(e))``, the
  three classes of ``lowlight_fast.compat.zerodce.Myloss`` (ours) or the reference functions (eager,
  compiled); gradient to ``e``. ``e`` is a non-leaf, as the network's output is in training (a free view of
  the leaf that gets the gradient: the classes share their pooled pass only for tensors autograd made).
- ``L_color``, ``L_exp``, ``L_spa``, ``Sa_Loss``: one class alone, its output summed.
PyTorch's default CPU allocator throughout (the caching allocator of lowlight_fast.memory stays off).
"""
from __future__ import annotations

import pytest
import torch

from lowlight_fast import use_backend
from lowlight_fast.compat.zerodce import Myloss
from lowlight_fast.reference import zerodce_losses as ref

SHAPES = [(8, 3, 256, 256), (1, 3, 1080, 1920)]
IMPLS = ["eager_reference", "compiled_reference", "ours"]


def _ours_script(e, low):
    return (
        torch.mean(Myloss.L_spa()(e, low))
        + 5 * torch.mean(Myloss.L_color()(e))
        + 10 * torch.mean(Myloss.L_exp(16, 0.6)(e))
    )


def _ref_script(e, low):
    return (
        torch.mean(ref.spatial_consistency(e, low))
        + 5 * torch.mean(ref.color_constancy(e))
        + 10 * torch.mean(ref.exposure(e, 16, 0.6))
    )


CASES = {
    "script": (_ours_script, _ref_script),
    "L_color": (lambda e, low: Myloss.L_color()(e).sum(), lambda e, low: ref.color_constancy(e).sum()),
    "L_exp": (lambda e, low: Myloss.L_exp(16, 0.6)(e), lambda e, low: ref.exposure(e, 16, 0.6)),
    "L_spa": (lambda e, low: Myloss.L_spa()(e, low).sum(), lambda e, low: ref.spatial_consistency(e, low).sum()),
    "Sa_Loss": (lambda e, low: Myloss.Sa_Loss()(e), lambda e, low: ref.saturation(e)),
}
_COMPILED = {name: torch.compile(pair[1], dynamic=False) for name, pair in CASES.items()}


def _fn(impl: str, case: str):
    if impl == "ours":
        return CASES[case][0]
    return _COMPILED[case] if impl == "compiled_reference" else CASES[case][1]


def _inputs(shape):
    g = torch.Generator().manual_seed(0)
    low = torch.rand(shape, generator=g) * 0.3
    base = torch.rand(shape, generator=g).requires_grad_()
    return base, low


def _step(fn, base, low):
    base.grad = None
    fn(base.view_as(base), low).backward()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dropin_losses_fwd_bwd(benchmark, shape, case, impl):
    if case != "script" and shape != SHAPES[0]:
        pytest.skip("single classes at the training batch only")
    benchmark.group = f"{case} fwd+bwd " + "x".join(map(str, shape))
    base, low = _inputs(shape)
    fn = _fn(impl, case)
    with use_backend("auto" if impl == "ours" else "reference"):
        _step(fn, base, low)  # compiles torch.compile's graph
        rounds = 5 if impl == "eager_reference" else 20
        benchmark.pedantic(_step, args=(fn, base, low), rounds=rounds, iterations=1, warmup_rounds=3)
