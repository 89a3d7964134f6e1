"""zerodce_pooled and the fused Zero-DCE loss terms: C++ and Triton (interpreted on CPU) against the
plain-PyTorch reference, including sizes not divisible by 4 or 16."""
import pytest
import torch

from lowlight_fast import _ext, use_backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops import zerodce_losses as zl
from lowlight_fast.reference import zerodce_losses as ref
from tests import parity

BACKENDS = ["cpp", "triton"]
# odd sizes, sizes not divisible by 4 or 16, the smallest images each pool accepts
POOL_SHAPES = [(2, 3, 4, 4), (3, 3, 7, 9), (2, 3, 17, 33), (1, 3, 4, 21), (2, 3, 23, 5)]
LOSS_SHAPES = [(2, 3, 16, 16), (3, 3, 19, 35), (2, 3, 37, 18)]


def _ops(backend):
    if backend == "cpp":
        if not _ext.has_op("zerodce_pooled"):
            pytest.fail("lowlight_fast._C was not built with zerodce_pooled")
        return torch.ops.lowlight_fast.zerodce_pooled, torch.ops.lowlight_fast.zerodce_pooled_backward
    _registry.use_triton("zerodce_losses")
    ops = torch.ops.lowlight_fast
    return ops.zerodce_pooled_triton, ops.zerodce_pooled_triton_backward


def _images(shape, device, dtype=torch.float64):
    return (
        torch.rand(shape, device=device, dtype=dtype).requires_grad_(),
        torch.rand(shape, device=device, dtype=dtype).requires_grad_(),
    )


def _curves(shape, channels, device, dtype=torch.float64):
    return (0.5 * torch.randn(shape[0], channels, *shape[2:], device=device, dtype=dtype)).requires_grad_()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("low_requires_grad", [True, False])
def test_pooled_matches_reference(backend, shape, low_requires_grad, device):
    enhanced, low = _images(shape, device)
    low.requires_grad_(low_requires_grad)
    with use_backend(backend):
        got = zl.pooled_stats(enhanced, low)
    want = zl._pooled_reference(enhanced, low)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    upstream = [torch.randn_like(w) for w in want]
    inputs = (enhanced, low) if low_requires_grad else (enhanced,)
    used = [0, 1, 2] if low_requires_grad else [0, 2]  # pooled_low needs no gradient when low needs none
    g_got = torch.autograd.grad([got[i] for i in used], inputs, [upstream[i] for i in used])
    g_want = torch.autograd.grad([want[i] for i in used], inputs, [upstream[i] for i in used])
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", LOSS_SHAPES)
@pytest.mark.parametrize("channels,tv_weight", [(24, ref.ZERODCE_TV_WEIGHT), (3, ref.ZERODCEPP_TV_WEIGHT)])
def test_loss_terms_match_reference(backend, shape, channels, tv_weight, device):
    enhanced, low = _images(shape, device)
    curves = _curves(shape, channels, device)
    with use_backend(backend):
        got = zl.zerodce_loss_terms(low, enhanced, curves, tv_weight)
    want = ref.zerodce_loss_terms(low, enhanced, curves, tv_weight)
    for k in ("tv", "spa", "col", "exp"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-14)
    total_got = sum(got.values())
    total_want = sum(want.values())
    g_got = torch.autograd.grad(total_got, (enhanced, low, curves))
    g_want = torch.autograd.grad(total_want, (enhanced, low, curves))
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_map_matches_reference(backend, device):
    org, enhance = _images((2, 3, 13, 22), device)
    with use_backend(backend):
        got = zl.spatial_consistency(org, enhance)
    want = ref.spatial_consistency(org, enhance)
    assert got.shape == (2, 1, 3, 5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)


def test_gradcheck_pooled_cpp():
    forward, _ = _ops("cpp")
    enhanced, low = _images((2, 3, 9, 6), "cpu")
    assert torch.autograd.gradcheck(forward, (enhanced, low))


def test_gradcheck_loss_cpp():
    # 18 x 21: not divisible by 4 or 16; 24 curve maps. The pooled op has the full gradcheck above and
    # test_loss_terms_match_reference compares every gradient; fast mode keeps this one quick.
    enhanced, low = _images((2, 3, 18, 21), "cpu")
    curves = _curves((2, 3, 5, 6), 24, "cpu")
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(
            lambda e, lo, c: zl.zerodce_loss(lo, e, c), (enhanced, low, curves), fast_mode=True
        )


def test_gradcheck_triton(device):
    forward, _ = _ops("triton")
    enhanced, low = _images((2, 3, 9, 6), device)
    assert torch.autograd.gradcheck(forward, (enhanced, low), fast_mode=True)
    enhanced, low = _images((1, 3, 17, 19), device)
    curves = _curves((1, 3, 17, 19), 3, device)
    with use_backend("triton"):
        assert torch.autograd.gradcheck(
            lambda e, lo, c: zl.zerodce_loss(lo, e, c, ref.ZERODCEPP_TV_WEIGHT),
            (enhanced, low, curves),
            fast_mode=True,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    forward, backward = _ops(backend)
    enhanced, low = _images((2, 3, 9, 14), device, torch.float32)
    torch.library.opcheck(forward, (enhanced, low))
    pooled = (2, 1, 2, 3)
    grads = (
        torch.randn(pooled, device=device),
        torch.randn(pooled, device=device),
        torch.randn(2, 3, device=device),
    )
    for low_requires_grad in (True, False):
        torch.library.opcheck(backward, (*grads, enhanced.detach(), low_requires_grad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiles_fullgraph(backend, device):
    torch._dynamo.reset()
    enhanced, low = _images((2, 3, 19, 17), device, torch.float32)
    curves = _curves((2, 3, 19, 17), 24, device, torch.float32)
    with use_backend(backend):
        compiled = torch.compile(zl.zerodce_loss, fullgraph=True)
        got = compiled(low, enhanced, curves)
        g_got = torch.autograd.grad(got, (enhanced, curves))
    want = ref.zerodce_loss(low, enhanced, curves)
    g_want = torch.autograd.grad(want, (enhanced, curves))
    torch.testing.assert_close(got, want)
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_dtypes(backend, dtype, tol, device):
    e32, l32 = torch.rand(2, 3, 21, 18, device=device), torch.rand(2, 3, 21, 18, device=device)
    enhanced, low = e32.to(dtype).requires_grad_(), l32.to(dtype)
    with use_backend(backend):
        got = zl.pooled_stats(enhanced, low)
    assert all(t.dtype == dtype for t in got)
    g_got, = torch.autograd.grad(sum(t.float().sum() for t in got), enhanced)
    assert g_got.dtype == dtype
    er = enhanced.detach().float().requires_grad_()
    want = zl._pooled_reference(er, low.float())
    g_want, = torch.autograd.grad(sum(t.sum() for t in want), er)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w, rtol=tol, atol=tol)
    torch.testing.assert_close(g_got.float(), g_want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    base = torch.rand(2, 6, 20, 26, device=device, dtype=torch.float64)
    enhanced = base[:, ::2, 1:, 3:].requires_grad_()
    low = base[:, 1::2, :-1, :-3].contiguous(memory_format=torch.channels_last)
    with use_backend(backend):
        got = zl.pooled_stats(enhanced, low)
    want = zl._pooled_reference(enhanced, low)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    "enhanced,low,exc,msg",
    [
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), ValueError, "enhanced: expected a 4-D tensor"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 4, 8, 8), ValueError, "low: expected 3 channels"),
        (torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.rand(1, 3, 8, 8), TypeError, "same dtype"),
        (torch.randint(0, 9, (1, 3, 8, 8)), torch.rand(1, 3, 8, 8), TypeError, "enhanced: expected dtype"),
        (torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8), ValueError, "enhanced: empty tensor"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 12), ValueError, "same shape"),
        (torch.rand(1, 3, 3, 8), torch.rand(1, 3, 3, 8), ValueError, "smaller than the 4x4"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8, device="meta"), ValueError, "same device"),
    ],
)
def test_pooled_bad_input_raises(enhanced, low, exc, msg):
    with pytest.raises(exc, match=msg):
        zl.pooled_stats(enhanced, low)


def test_loss_bad_input_raises():
    low, enhanced, curves = torch.rand(2, 3, 15, 40), torch.rand(2, 3, 15, 40), torch.rand(2, 24, 15, 40)
    with pytest.raises(ValueError, match=r"low: image of 15x40 pixels is smaller than the 16x16"):
        zl.zerodce_loss(low, enhanced, curves)
    low, enhanced = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="curve_maps: expected a 4-D tensor"):
        zl.zerodce_loss(low, enhanced, torch.rand(24, 16, 16))
    with pytest.raises(ValueError, match="curve_maps: image of 1x16 pixels"):
        zl.zerodce_loss(low, enhanced, torch.rand(2, 24, 1, 16))
    with pytest.raises(ValueError, match="exp_patch: the fused exposure pool needs a multiple of 4"):
        zl.zerodce_loss_terms(low, enhanced, torch.rand(2, 24, 16, 16), exp_patch=10)


def test_cpp_kernels_check_their_input():
    with pytest.raises(RuntimeError, match="enhanced and low must have the same shape"):
        torch.ops.lowlight_fast.zerodce_pooled(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(RuntimeError, match="at least 4x4 pixels"):
        torch.ops.lowlight_fast.zerodce_pooled(torch.rand(1, 3, 3, 8), torch.rand(1, 3, 3, 8))
    with pytest.raises(RuntimeError, match="grad_pooled_enhanced must have shape"):
        g = torch.rand(1, 1, 1, 1)
        torch.ops.lowlight_fast.zerodce_pooled_backward(g, g, torch.rand(1, 3), torch.rand(1, 3, 8, 8), False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_zerodce(backend):
    arrays = parity.load("zerodce")
    want = parity.expected()["zerodce"]
    low = arrays["input"]
    enhanced = arrays["enhance_image"].clone().requires_grad_()
    r = arrays["r"].clone().requires_grad_()
    with use_backend(backend):
        terms = zl.zerodce_loss_terms(low, enhanced, r)
        total = zl.zerodce_loss(low, enhanced, r)
        spa_map = zl.spatial_consistency(enhanced.detach(), low)
    for k, v in terms.items():
        assert v.item() == pytest.approx(want[k], rel=1e-5), k
    assert total.item() == pytest.approx(want["total"], rel=1e-5)
    torch.testing.assert_close(spa_map, arrays["L_spa_map"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(zl.color_from_means(enhanced.detach().mean(dim=(2, 3))), arrays["L_color_map"])
    g_enhanced, g_r = torch.autograd.grad(total, (enhanced, r))
    torch.testing.assert_close(g_enhanced, arrays["grad_total_wrt_enhance_image"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(g_r, arrays["grad_total_wrt_r"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sf", ["sf1", "sf4", "sf12"])
def test_parity_zerodcepp(backend, sf):
    arrays = parity.load("zerodcepp")
    want = parity.expected()["zerodcepp"][sf]
    with use_backend(backend):
        terms = zl.zerodce_loss_terms(
            arrays["input"], arrays[f"{sf}/enhance_image"], arrays[f"{sf}/x_r"], ref.ZERODCEPP_TV_WEIGHT
        )
    for k, v in terms.items():
        assert v.item() == pytest.approx(want[k], rel=1e-5), k
    assert sum(terms.values()).item() == pytest.approx(want["total"], rel=1e-5)


# --- zerodce_pooled_losses: the three losses from the pooled maps, one C++ op on the CPU ------------


def _pooled_inputs(shape):
    pe = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    pl = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    means = torch.rand(shape[0], 3, dtype=torch.float64, requires_grad=True)
    return pe, pl, means


@pytest.mark.parametrize(
    "shape,patch",
    [((2, 1, 5, 7), 16), ((3, 1, 9, 4), 8), ((1, 1, 4, 4), 16), ((2, 1, 13, 10), 4), ((2, 1, 1, 6), 4), ((1, 1, 5, 1), 4)],
)
def test_pooled_losses_cpp_match_torch(shape, patch):
    if not _ext.has_op("zerodce_pooled_losses"):
        pytest.fail("lowlight_fast._C was not built with zerodce_pooled_losses")
    pe, pl, means = _pooled_inputs(shape)
    got = zl.pooled_losses(pe, pl, means, patch, 0.55)
    want = zl.pooled_losses(pe, pl, means, patch, 0.55, use_cpp=False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)
    weights = (1.3, 0.7, 2.1)
    g_got = torch.autograd.grad(sum(w * t for w, t in zip(weights, got)), (pe, pl, means))
    g_want = torch.autograd.grad(sum(w * t for w, t in zip(weights, want)), (pe, pl, means))
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)


def test_pooled_losses_gradcheck_and_opcheck():
    op = torch.ops.lowlight_fast.zerodce_pooled_losses
    pe, pl, means = _pooled_inputs((2, 1, 9, 6))
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, b, c, 8, 0.6), (pe, pl, means))
    torch.library.opcheck(op, (pe, pl, means, 8, 0.6))
    g = [torch.tensor(v, dtype=torch.float64) for v in (0.3, 1.7, -0.4)]
    torch.library.opcheck(
        torch.ops.lowlight_fast.zerodce_pooled_losses_backward,
        (*g, pe.detach(), pl.detach(), means.detach(), 8, 0.6),
    )


def test_pooled_losses_check_their_input():
    op = torch.ops.lowlight_fast.zerodce_pooled_losses
    pe, pl, means = (t.detach() for t in _pooled_inputs((2, 1, 3, 6)))
    with pytest.raises(RuntimeError, match="at least 16x16 pixels for the exposure pool"):
        op(pe, pl, means, 16, 0.6)
    with pytest.raises(RuntimeError, match="exp_patch must be a multiple of 4"):
        op(pe, pl, means, 6, 0.6)
    with pytest.raises(RuntimeError, match="channel_means must be"):
        op(pe, pl, means[:1], 4, 0.6)


CPP_AUTOGRAD_OPS = ["zerodce_pooled", "zerodce_pooled_single", "zerodce_spatial_map", "zerodce_exposure",
                    "zerodce_color", "zerodce_saturation"]


def test_small_ops_have_cpp_autograd_nodes_with_the_python_formulas():
    """The drop-in classes' ops record C++ autograd nodes (csrc/cpu/zerodce_autograd.cpp), not Python
    ones, and their gradients are those of the Python formulas in zerodce_losses.py (called directly)."""
    from lowlight_fast.ops import _registry

    P = torch.ops.lowlight_fast
    for name in CPP_AUTOGRAD_OPS:
        assert _registry.has_cpp_autograd(name), name
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64, requires_grad=True)
    low = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64, requires_grad=True)
    pe, pl, means = P.zerodce_pooled(x, low)
    outs = {
        "pooled": (pe, pl, means),
        "spatial": (P.zerodce_spatial_map(pe, pl),),
        "exposure": (P.zerodce_exposure(pe, 8, 0.6),),
        "color": (P.zerodce_color(means),),
        "single": P.zerodce_pooled_single(x),
        "saturation": P.zerodce_saturation(x)[:1],
    }
    for name, ts in outs.items():
        assert type(ts[0].grad_fn).__name__ == "CppFunction", (name, type(ts[0].grad_fn).__name__)
    # each node's gradients against the Python formula run on the same saved values
    loss = outs["spatial"][0].sum() + outs["exposure"][0] + outs["color"][0].sum() + outs["saturation"][0]
    gx, gl = torch.autograd.grad(loss, [x, low])
    g_map, g_exp = torch.ones_like(pe), torch.ones(())
    g_o, g_e = P.zerodce_spatial_map_backward(g_map, pe.detach(), pl.detach())
    g_pe = g_o + P.zerodce_exposure_backward(g_exp, pe.detach(), 8, 0.6)
    g_means = P.zerodce_color_backward(torch.ones(2, 1, 1, 1, dtype=torch.float64), means.detach())
    want_x, want_l = P.zerodce_pooled_backward(g_pe, g_e, g_means, x.detach(), True)
    want_x = want_x + P.zerodce_saturation_backward(torch.ones((), dtype=torch.float64), x.detach(),
                                                    *P.zerodce_saturation(x.detach())[1:])
    torch.testing.assert_close(gx, want_x, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gl, want_l, rtol=1e-12, atol=1e-14)
    # L_color alone through the single op: the means' gradient broadcast, no image-sized write needed
    _, m1 = P.zerodce_pooled_single(x)
    (gx1,) = torch.autograd.grad(P.zerodce_color(m1).sum(), [x])
    gm = P.zerodce_color_backward(torch.ones(2, 1, 1, 1, dtype=torch.float64), m1.detach())
    torch.testing.assert_close(gx1, (gm / (20 * 24)).reshape(2, 3, 1, 1).expand_as(x))
    # the single op with both gradients
    p1, m1 = P.zerodce_pooled_single(x)
    (gx2,) = torch.autograd.grad(p1.sum() + m1.sum(), [x])
    want2, _ = P.zerodce_pooled_backward(torch.ones_like(p1), torch.zeros_like(p1), torch.ones_like(m1),
                                         x.detach(), False)
    torch.testing.assert_close(gx2, want2)


def test_pooled_node_backward_twice_and_low_without_grad():
    """The pair op's node saves no tensor: two losses sharing it can each run backward (the memo's
    case); d low is neither computed nor returned when low needs no gradient."""
    P = torch.ops.lowlight_fast
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    low = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    pe, pl, means = P.zerodce_pooled(x, low)
    a = P.zerodce_spatial_map(pe, pl).sum()
    b = P.zerodce_color(means).sum()
    (ga,) = torch.autograd.grad(a, [x])
    (gb,) = torch.autograd.grad(b, [x])
    (gab,) = torch.autograd.grad(P.zerodce_spatial_map(*P.zerodce_pooled(x, low)[:2]).sum()
                                 + P.zerodce_color(P.zerodce_pooled(x, low)[2]).sum(), [x])
    torch.testing.assert_close(ga + gb, gab)
    assert low.grad is None
