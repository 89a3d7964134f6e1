"""conv3x3 (Winograd F(2x2, 3x3), channels-last, CPU) against F.conv2d of the concatenation."""
import pytest
import torch
import torch.nn.functional as F

from lowlight_fast import _ext, use_backend
from lowlight_fast.models import registry
from lowlight_fast.models.zerodce import ZeroDCE
from lowlight_fast.ops import conv3x3 as conv_op

OP = "conv3x3_nhwc"
# (batch, channels of x, channels of x2 (0: none), output channels, height, width): 1- and 2-pixel
# edges, odd sizes (half tiles), channel counts with and without a 16-channel tail, Zero-DCE's layers
CASES = [(2, 32, 0, 32, 7, 9), (1, 32, 32, 24, 10, 5), (1, 5, 3, 7, 1, 1), (3, 3, 0, 4, 2, 3),
         (1, 17, 0, 33, 1, 6), (2, 16, 16, 8, 6, 1), (1, 1, 1, 1, 3, 3),
         (1, 16, 8, 24, 9, 45)]  # 24 outputs over runs of 12 tiles: blocks of rows and a tail
# up to 4 input channels from one tensor: direct sums (Zero-DCE's 3-to-32 first layer, SCI's 3-to-16
# and 3-to-3; output-channel blocks of 32/16, then of 8, then the last 1-7; pixel runs with a tail,
# 1x1 images)
CASES += [(2, 3, 0, 32, 7, 9), (1, 3, 0, 16, 5, 13), (1, 1, 0, 3, 1, 1), (1, 4, 0, 24, 6, 7), (1, 2, 0, 40, 3, 8),
          (1, 3, 0, 13, 4, 7), (2, 4, 0, 21, 3, 13)]


def _op():
    if not _ext.has_op(OP):
        pytest.fail("lowlight_fast._C was not built with conv3x3_nhwc (scripts/setup.sh builds it)")
    return torch.ops.lowlight_fast.conv3x3_nhwc


def _inputs(case, dtype, requires_grad=False):
    n, c1, c2, co, h, w = case
    x = torch.randn(n, c1, h, w, dtype=dtype, requires_grad=requires_grad)
    x2 = torch.randn(n, c2, h, w, dtype=dtype, requires_grad=requires_grad) if c2 else None
    weight = (torch.randn(co, c1 + c2, 3, 3, dtype=dtype) / (3 * (c1 + c2) ** 0.5)).requires_grad_(requires_grad)
    bias = torch.randn(co, dtype=dtype, requires_grad=requires_grad)
    return x, x2, weight, bias


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("activation", ["none", "relu", "tanh"])
def test_forward_matches_conv2d(case, activation):
    op = _op()
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-4)]:
        x, x2, weight, bias = _inputs(case, dtype)
        code = conv_op.ACTIVATIONS[activation]
        got = op(x, x2, weight, bias, code)
        want = conv_op.reference(x, weight, bias, x2=x2, activation=activation)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        # without a bias, and from inputs in either layout
        got = op(x.contiguous(memory_format=torch.channels_last), x2, weight, None, code)
        want = conv_op.reference(x, weight, None, x2=x2, activation=activation)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_large_image_spans_several_tile_runs():
    """Wider than one task's run of tiles (a partial last run), with Zero-DCE's 64-to-32 layer."""
    x, x2, weight, bias = _inputs((1, 32, 32, 32, 5, 1203), torch.float32)
    got = _op()(x, x2, weight, bias, 1)
    want = conv_op.reference(x, weight, bias, x2=x2, activation="relu")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [(2, 3, 2, 4, 5, 4), (1, 4, 0, 3, 3, 2)])
@pytest.mark.parametrize("activation", ["none", "relu", "tanh"])
def test_gradcheck_float64(case, activation):
    _op()
    x, x2, weight, bias = _inputs(case, torch.float64, requires_grad=True)
    if activation == "relu":  # outputs away from the kink, where finite differences mislead
        with torch.no_grad():
            bias += 0.05 * torch.sign(conv_op.reference(x, weight, bias, x2=x2).mean(dim=(0, 2, 3)))
    args = (x, weight, bias) if x2 is None else (x, weight, bias, x2)

    def f(x, weight, bias, x2=None):
        return conv_op.conv3x3(x, weight, bias, x2=x2, activation=activation)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("activation", ["none", "relu", "tanh"])
def test_gradients_match_reference(activation):
    x, x2, weight, bias = _inputs((2, 6, 3, 5, 7, 8), torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    got = conv_op.conv3x3(x, weight, bias, x2=x2, activation=activation)
    want = conv_op.reference(x, weight, bias, x2=x2, activation=activation)
    got = torch.autograd.grad(got, (x, x2, weight, bias), g)
    want = torch.autograd.grad(want, (x, x2, weight, bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_opcheck():
    x, x2, weight, bias = _inputs((2, 4, 3, 5, 5, 6), torch.float32, requires_grad=True)
    torch.library.opcheck(_op(), (x, x2, weight, bias, 1))
    torch.library.opcheck(_op(), (x, None, weight[:, :4].detach().requires_grad_(), None, 0))
    torch.library.opcheck(_op(), (x, x2, weight, bias, 2))


def test_reference_backend_and_other_dtypes_use_conv2d():
    x, x2, weight, bias = _inputs((1, 3, 2, 4, 5, 5), torch.float32)
    for name in ("reference", "triton"):  # triton: no kernel of this op, ATen's convolution
        with use_backend(name):
            got = conv_op.conv3x3(x, weight, bias, x2=x2, activation="relu")
        assert got.is_contiguous()  # F.conv2d's NCHW result: the op did not run
        torch.testing.assert_close(got, conv_op.reference(x, weight, bias, x2=x2, activation="relu"))
    got = conv_op.conv3x3(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), x2=x2.bfloat16())
    assert got.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3, 5, 5), None, torch.zeros(2, 3, 3, 3), None), "must be"),
        ((torch.zeros(1, 3, 5, 5), torch.zeros(1, 2, 4, 5), torch.zeros(2, 5, 3, 3), None), "x2 must"),
        ((torch.zeros(1, 3, 5, 5), None, torch.zeros(2, 4, 3, 3), None), "weight must"),
        ((torch.zeros(1, 3, 5, 5), None, torch.zeros(2, 3, 5, 5), None), "weight must"),
        ((torch.zeros(1, 3, 5, 5), None, torch.zeros(2, 3, 3, 3), torch.zeros(3)), "bias must"),
    ],
)
def test_bad_input_is_named(args, match):
    x, x2, weight, bias = args
    with pytest.raises(ValueError, match=match):
        conv_op.conv3x3(x, weight, bias, x2=x2)
    with pytest.raises(RuntimeError, match=match):
        _op()(x, x2, weight, bias, 0)


def test_bad_activation_is_named():
    x, x2, weight, bias = _inputs((1, 3, 0, 4, 5, 5), torch.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        conv_op.conv3x3(x, weight, bias, activation="gelu")
    with pytest.raises(RuntimeError, match="activation must be 0"):
        _op()(x, None, weight, bias, 3)


def test_tanh_is_the_same_for_every_element():
    """One value placed at every pixel and channel position (vector bodies and tails alike) gives one
    result, within 1e-7 of torch.tanh (which can differ by an ulp between its vector and scalar code)."""
    v = torch.linspace(-9, 9, 2001, dtype=torch.float32)
    for cout in (24, 7):
        # a 1x1 "convolution" through the centre tap: output = bias = v at every position
        x = torch.zeros(1, 1, 3, 5)
        weight = torch.zeros(cout, 1, 3, 3)
        outs = torch.stack([_op()(x, None, weight, b.expand(cout).contiguous(), 2) for b in v[:, None]])
        assert (outs == outs.flatten(1)[:, :1].reshape(-1, 1, 1, 1, 1)).all()
        torch.testing.assert_close(outs.flatten(1)[:, 0], torch.tanh(v), rtol=0, atol=1e-7)


def test_op_rejects_integer_and_mixed_dtypes():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        _op()(torch.zeros(1, 3, 4, 4, dtype=torch.int32), None, torch.zeros(2, 3, 3, 3), None, 0)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        _op()(torch.zeros(1, 3, 4, 4), None, torch.zeros(2, 3, 3, 3, dtype=torch.float64), None, 0)


def test_zerodce_enhance_image_runs_the_op_and_matches_the_plain_trunk():
    """The released weights on a bundled photo: the trunk on conv3x3_nhwc (counted by the profiler) gives the
    plain trunk's image within float32 rounding."""
    _op()
    from safetensors.torch import load_file
    from lowlight_fast import io

    model = ZeroDCE().eval()
    model.load_state_dict(load_file(str(registry.bundled_weights("zerodce"))))
    plain = ZeroDCE(fused=False).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.from_numpy(io.read_image(registry.bundled_samples()[1]).rgb.copy()).permute(2, 0, 1)[None]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = model.enhance_image(x)
    calls = sum(e.count for e in prof.key_averages() if e.key == "lowlight_fast::conv3x3_nhwc")
    assert calls == 7  # all seven layers (layer 1: direct sums for its 3 input channels)
    want = plain.enhance_image(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ---- the weight and bias gradients (conv3x3_nhwc_weight_grad) ----

# cases above plus Zero-DCE's layers at a size of several chunks and row segments (wider than a
# segment, a partial last chunk), and the 3-to-32 first layer; then up to 4 output channels from one
# input (the kernel whose vectors run along x's taps and channels): SCI's 16-to-3 and 3-to-3 layers
# over several segments and chunks, runs of 15 (a vector and an overlapping tail) and 6 (shorter
# than a vector), widths 1 and 2 (no inner pixels), and float64
WGRAD_CASES = CASES + [(1, 32, 32, 32, 37, 301), (2, 3, 0, 32, 9, 11), (1, 32, 0, 24, 129, 130),
                       (1, 16, 0, 3, 37, 301), (2, 3, 0, 3, 9, 11), (1, 5, 0, 3, 3, 40), (2, 2, 0, 2, 5, 1),
                       (1, 1, 0, 1, 4, 2), (1, 7, 0, 4, 6, 9), (1, 16, 0, 1, 3, 3)]


def _wgrad_op():
    if not _ext.has_op("conv3x3_nhwc_weight_grad"):
        pytest.fail("lowlight_fast._C was not built with conv3x3_nhwc_weight_grad (scripts/setup.sh builds it)")
    return torch.ops.lowlight_fast.conv3x3_nhwc_weight_grad


@pytest.mark.parametrize("case", WGRAD_CASES)
def test_weight_grad_matches_convolution_backward(case):
    op = _wgrad_op()
    n, c1, c2, co, h, w = case
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-4)]:
        x, x2, _, _ = _inputs(case, dtype)
        g = torch.randn(n, co, h, w, dtype=dtype)
        want_w, want_b = conv_op.reference_weight_grad(g, x, x2)
        scale = want_w.abs().max().item() + 1
        # channels-last inputs read in place, NCHW ones copied: the same sums
        for gg, xx in [(g, x), (g.contiguous(memory_format=torch.channels_last),
                                x.contiguous(memory_format=torch.channels_last))]:
            got_w, got_b = op(gg, xx, x2)
            assert got_w.shape == (co, c1 + c2, 3, 3) and got_b.shape == (co,)
            torch.testing.assert_close(got_w / scale, want_w / scale, rtol=tol, atol=tol)
            torch.testing.assert_close(got_b / scale, want_b / scale, rtol=tol, atol=tol)


def test_weight_grad_does_not_depend_on_the_thread_count():
    """Chunks of rows are summed in a fixed order: one thread and two give the same bits."""
    x, x2, _, _ = _inputs((2, 32, 32, 32, 65, 97), torch.float32)
    g = torch.randn(2, 32, 65, 97)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _wgrad_op()(g, x, x2)
        torch.set_num_threads(max(threads, 2))
        two = _wgrad_op()(g, x, x2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_weight_grad_public_function_and_errors():
    x, x2, _, _ = _inputs((1, 4, 3, 5, 6, 7), torch.float64)
    g = torch.randn(1, 5, 6, 7, dtype=torch.float64)
    got, want = conv_op.weight_grad(g, x, x2), conv_op.reference_weight_grad(g, x, x2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with use_backend("reference"):
        for a, b in zip(conv_op.weight_grad(g, x, x2), want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="grad must match x"):
        conv_op.weight_grad(g[:, :, :5], x, x2)
    with pytest.raises(RuntimeError, match="dtype"):
        _wgrad_op()(g.float(), x, x2)
    # empty images: zero gradients of the right shapes
    gw, gb = _wgrad_op()(g[:, :, :0], x[:, :, :0], x2[:, :, :0])
    assert gw.shape == (5, 7, 3, 3) and not gw.any() and gb.shape == (5,) and not gb.any()


def test_weight_grad_opcheck():
    x, x2, _, _ = _inputs((2, 4, 3, 5, 5, 6), torch.float32)
    g = torch.randn(2, 5, 5, 6)
    torch.library.opcheck(_wgrad_op(), (g, x, x2))
    torch.library.opcheck(_wgrad_op(), (g.contiguous(memory_format=torch.channels_last), x, None))
