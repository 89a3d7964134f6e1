"""Fuzzing the fused ops against the reference (hypothesis, bounded in examples and time).

Random shapes (down to each op's minimum size), batch sizes, dtypes, memory layouts (contiguous,
channels-last, transposed, strided slices) and values, including NaN, inf and values far outside the
images' [0, 1]: the C++ op must never crash, and where the reference's result is finite the fused
result equals it (to the dtype's tolerance); where the reference is NaN or inf, nothing is asserted but
that the call returns a tensor of the right shape. The fused ops compute in float32 (float64 for
float64), so they are compared with the reference run in float64 on the same values and rounded to the
result's dtype (eager half-precision arithmetic rounds at every step and drifts far from both on
out-of-range values). Gradients are compared on finite inputs.
"""
from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lowlight_fast  # noqa: E402
from lowlight_fast import _ext  # noqa: E402
from lowlight_fast.ops import le_curve as curve_ops  # noqa: E402
from lowlight_fast.ops import smooth_loss as smooth_ops  # noqa: E402
from lowlight_fast.ops import tv_loss as tv_ops  # noqa: E402
from lowlight_fast.ops import zerodce_losses as pooled_ops  # noqa: E402
from lowlight_fast.reference import curve as curve_ref  # noqa: E402
from lowlight_fast.reference import sci_losses as sci_ref  # noqa: E402
from lowlight_fast.reference import zerodce_losses as zerodce_ref  # noqa: E402

pytestmark = pytest.mark.skipif(not _ext.available(), reason="needs the compiled extension (scripts/setup.sh)")

FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-2, 1e-2),
       torch.float16: (3e-3, 2e-3)}
LAYOUTS = ("contiguous", "channels_last", "transposed", "strided")
SPECIALS = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30, -3.0, 7.0)


def _huge(*tensors: torch.Tensor) -> bool:
    """Whether a sum over these could cancel catastrophically (huge finite values of both signs or
    beside ordinary ones): its result is then rounding noise that depends on the order of the additions,
    the float64 reference's included, so the losses are only required not to crash there."""
    return any(bool((torch.isfinite(t) & (t.abs() > 1e20)).any()) for t in tensors)


@st.composite
def images(draw, *, channels: int = 3, min_size: int = 1, max_size: int = 19, shape=None, dtype=None,
           specials: bool = True):
    """A (B, C, H, W) tensor with a random layout; values mostly in [0, 1], some special."""
    if shape is None:
        b = draw(st.integers(1, 3))
        h = draw(st.integers(min_size, max_size))
        w = draw(st.integers(min_size, max_size))
        shape = (b, channels, h, w)
    dtype = dtype or draw(st.sampled_from(list(TOL)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    if specials and draw(st.booleans()):
        flat = x.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    return _layout(x.to(dtype), draw(st.sampled_from(LAYOUTS)))


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W swapped in memory
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # every other element of a twice-as-wide buffer
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _assert_close_where_defined(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    rtol, atol = TOL.get(want.dtype, TOL[torch.float32])
    finite = torch.isfinite(want)
    g, w = got.double()[finite], want.double()[finite]
    # float16/bfloat16 results are rounded from float32 arithmetic; scale the tolerance with the values
    torch.testing.assert_close(g, w, rtol=rtol, atol=atol * max(1.0, float(w.abs().max()) if w.numel() else 1.0))


def _both(fn_fused, fn_ref, *tensors):
    """(fused result, float64 reference result rounded to the fused result's dtypes)."""
    with lowlight_fast.use_backend("cpp"):
        got = fn_fused(*tensors)
    with lowlight_fast.use_backend("reference"):
        want = fn_ref(*(t.double() for t in tensors))
    like = lambda w, g: w.to(g.dtype)  # noqa: E731
    if isinstance(got, dict):
        return got, {k: like(want[k], got[k]) for k in want}
    if isinstance(got, tuple):
        return got, tuple(like(w, g) for w, g in zip(want, got))
    return got, like(want, got)


@FUZZ
@given(data=st.data())
def test_le_curve_fuzz(data):
    x = data.draw(images())
    r = data.draw(images(channels=24, shape=(x.shape[0], 24, *x.shape[-2:]), dtype=x.dtype)) * 2 - 1
    got, want = _both(curve_ops.le_curve, curve_ref.le_curve, x, r)
    for g, w in zip(got, want):
        _assert_close_where_defined(g, w)


@FUZZ
@given(data=st.data())
def test_le_curve_shared_fuzz(data):
    x = data.draw(images())
    h, w = x.shape[-2:]
    mh, mw = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    a = data.draw(images(shape=(x.shape[0], 3, mh, mw), dtype=x.dtype)) * 2 - 1
    got, want = _both(curve_ops.le_curve_shared, curve_ref.le_curve_shared, x, a)
    _assert_close_where_defined(got, want)


@FUZZ
@given(data=st.data())
def test_tv_loss_fuzz(data):
    x = data.draw(images(channels=data.draw(st.sampled_from([3, 24])), min_size=2))
    weight = data.draw(st.sampled_from([1.0, 200.0, 1600.0]))
    got, want = _both(lambda m: tv_ops.tv_loss(m, weight),
                      lambda m: zerodce_ref.illumination_smoothness(m, weight), x)
    if not _huge(x):
        _assert_close_where_defined(got, want)
    assert got.shape == ()


@FUZZ
@given(data=st.data())
def test_smooth_loss_fuzz(data):
    a = data.draw(images(min_size=3, dtype=data.draw(st.sampled_from([torch.float32, torch.float64]))))
    b = data.draw(images(shape=tuple(a.shape), dtype=a.dtype))
    ycbcr = data.draw(st.sampled_from(smooth_ops.YCBCR_MODES))
    if ycbcr == "faithful":  # an infinite input meets zero filter taps there: NaN (ops/smooth_loss.py)
        a = torch.where(torch.isinf(a), torch.full_like(a, 7.0), a)
    got, want = _both(lambda i, o: smooth_ops.smooth_loss(i, o, 10.0, ycbcr),
                      lambda i, o: sci_ref.smooth_loss(i, o, sigma=10.0, ycbcr=ycbcr), a, b)
    if not _huge(a, b):
        _assert_close_where_defined(got, want)
    assert got.shape == ()


@FUZZ
@given(data=st.data())
def test_zerodce_loss_terms_fuzz(data):
    low = data.draw(images(min_size=16, max_size=37, dtype=data.draw(st.sampled_from([torch.float32, torch.float64]))))
    enhanced = data.draw(images(shape=tuple(low.shape), dtype=low.dtype))
    maps = data.draw(images(channels=24, shape=(low.shape[0], 24, *low.shape[-2:]), dtype=low.dtype))
    got, want = _both(pooled_ops.zerodce_loss_terms, zerodce_ref.zerodce_loss_terms, low, enhanced, maps)
    for k in want:
        assert got[k].numel() == want[k].numel(), k
        if not _huge(low, enhanced, maps):
            _assert_close_where_defined(got[k].reshape(want[k].shape).to(want[k].dtype), want[k])


@FUZZ
@given(data=st.data())
def test_gradients_fuzz(data):
    """Gradients of every op through autograd equal the reference's on finite float64 inputs."""
    x = data.draw(images(min_size=16, max_size=23, dtype=torch.float64, specials=False)).requires_grad_()
    e = data.draw(images(shape=tuple(x.shape), dtype=torch.float64, specials=False)).requires_grad_()
    r = (data.draw(images(channels=24, shape=(x.shape[0], 24, *x.shape[-2:]), dtype=torch.float64,
                          specials=False)) * 2 - 1).requires_grad_()

    def total(curve, tv, smooth, terms):
        out = curve(x, r)[1].sum() + tv(r) + smooth(x, e)
        t = terms(x, e, r)
        return out + sum(v.sum() for v in t.values())

    grads = {}
    for name, fns in {
        "cpp": (curve_ops.le_curve, lambda m: tv_ops.tv_loss(m, 200.0), smooth_ops.smooth_loss,
                pooled_ops.zerodce_loss_terms),
        "reference": (curve_ref.le_curve, lambda m: zerodce_ref.illumination_smoothness(m, 200.0),
                      sci_ref.smooth_loss, zerodce_ref.zerodce_loss_terms),
    }.items():
        with lowlight_fast.use_backend(name):
            grads[name] = torch.autograd.grad(total(*fns), (x, e, r))
    for g, w in zip(grads["cpp"], grads["reference"]):
        if bool(torch.isfinite(w).all()):  # L_color's sqrt(0) gradient is NaN in the reference
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)
        assert math.isfinite(float(g.abs().sum())) or not bool(torch.isfinite(w).all())
