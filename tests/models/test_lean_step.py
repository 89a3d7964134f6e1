"""The lean training forward (lowlight_fast.models.lean_trunk) against the plain reference trunk:
same outputs, same gradients of every parameter and of the input."""
from __future__ import annotations

import pytest
import torch

from lowlight_fast import use_backend
from lowlight_fast.models import lean_trunk
from lowlight_fast.models._common import dce_trunk
from lowlight_fast.models.zerodce import ZeroDCE
from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _close(got, want, rel, what, scale=None):
    assert got is not None and want is not None, what
    assert got.shape == want.shape, what
    err = (got - want).abs().max().item()
    scale = want.abs().max().item() if scale is None else scale
    assert err <= rel * max(scale, 1e-30), f"{what}: max error {err:.3g}, max value {scale:.3g}"


def _previous_path(monkeypatch):
    """The code before the lean trunk: the fused curve over the plain (concatenating) trunk."""
    monkeypatch.setattr(lean_trunk, "zerodce_curve_maps", lambda m, x: torch.tanh(dce_trunk(m, x)))
    monkeypatch.setattr(lean_trunk, "zerodcepp_trunk", dce_trunk)


def _pair(make, dtype, seed, fused_reference=False):
    torch.manual_seed(seed)
    ref = make(fused_reference).to(dtype)
    with torch.no_grad():  # every ReLU sees both signs; activations stay of order 1 (well conditioned)
        for p in ref.parameters():
            p.normal_(0, 1.0 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.1)
    lean = make(True).to(dtype)
    lean.load_state_dict(ref.state_dict())
    return ref, lean


def _run(model, x, projections):
    x = x.clone().requires_grad_(True)
    outs = model(x)
    loss = sum((o * p).sum() for o, p in zip(outs, projections))
    loss.backward()
    return outs, x.grad, {n: p.grad for n, p in model.named_parameters()}


def _check_model(make, shape, dtype, monkeypatch, reference, seed=0):
    """reference: "plain" = fused=False (plain curve and trunk), "previous" = the fused curve over the
    plain trunk (isolates the trunk's rounding from the curve's in float32)."""
    ref, lean = _pair(make, dtype, seed, fused_reference=reference == "previous")
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(shape, generator=g, dtype=dtype)
    with torch.no_grad():
        shapes = [o.shape for o in ref(x)]
    projections = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    with monkeypatch.context() as mp:
        if reference == "previous":
            _previous_path(mp)
        outs_r, gx_r, gp_r = _run(ref, x, projections)
    outs_l, gx_l, gp_l = _run(lean, x, projections)
    rel = TOL[dtype]
    for i, (a, b) in enumerate(zip(outs_l, outs_r)):
        _close(a, b, rel, f"output {i}")
    _close(gx_l, gx_r, rel, "input gradient")
    assert gp_l.keys() == gp_r.keys()
    for name in gp_r:
        _close(gp_l[name], gp_r[name], rel, f"gradient of {name}")


CASES = [(torch.float64, "plain"), (torch.float64, "previous"), (torch.float32, "previous")]
CASE_IDS = ["f64-plain", "f64-previous", "f32-previous"]


@pytest.mark.parametrize("dtype,reference,shape", [c + ((2, 3, 17, 23),) for c in CASES]
                         + [(torch.float64, "plain", (1, 3, 8, 5))], ids=[i + "-2x17x23" for i in CASE_IDS]
                         + ["f64-plain-1x8x5"])
def test_zerodce_lean_step_equals_reference(shape, dtype, reference, monkeypatch):
    _check_model(lambda fused: ZeroDCE(fused=fused), shape, dtype, monkeypatch, reference)


@pytest.mark.parametrize("dtype,reference", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("scale,shape", [(1, (2, 3, 17, 23)), (4, (2, 3, 37, 42))], ids=["s1-2x17x23", "s4-2x37x42"])
def test_zerodcepp_lean_step_equals_reference(scale, shape, dtype, reference, monkeypatch):
    _check_model(lambda fused: ZeroDCEPlusPlus(scale_factor=scale, fused=fused), shape, dtype, monkeypatch,
                 reference)


@pytest.mark.parametrize("separable", [False, True], ids=["zerodce", "zerodcepp"])
def test_split_trunk_equals_the_concatenating_trunk(separable):
    """The autocast/compile path: autograd over the split convolutions."""
    torch.manual_seed(3)
    m = (ZeroDCEPlusPlus(fused=False) if separable else ZeroDCE(fused=False)).double()
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64, requires_grad=True)
    want = dce_trunk(m, x)
    gw = torch.autograd.grad(want.square().sum(), [x, *m.parameters()])
    got = lean_trunk.split_trunk(m, x, separable=separable)
    gg = torch.autograd.grad(got.square().sum(), [x, *m.parameters()])
    _close(got, want, 1e-10, "trunk output")
    for i, (a, b) in enumerate(zip(gg, gw)):
        _close(a, b, 1e-10, f"gradient {i}")


@pytest.mark.parametrize("make", [lambda: ZeroDCE(), lambda: ZeroDCEPlusPlus(scale_factor=1)],
                         ids=["zerodce", "zerodcepp"])
def test_frozen_parameters_and_an_input_without_gradient(make):
    """Only what needs a gradient gets one: the usual training step (the image needs none) with the
    first layer frozen."""
    torch.manual_seed(4)
    lean = make().double()
    ref = type(lean)(**({"scale_factor": 1} if isinstance(lean, ZeroDCEPlusPlus) else {}), fused=False).double()
    ref.load_state_dict(lean.state_dict())
    for m in (lean, ref):
        for p in m.e_conv1.parameters():
            p.requires_grad_(False)
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    for m in (lean, ref):
        sum(o.sum() for o in m(x)).backward()
    for (name, p), q in zip(lean.named_parameters(), ref.parameters()):
        if name.startswith("e_conv1."):
            assert p.grad is None and q.grad is None
        else:
            _close(p.grad, q.grad, 1e-10, name)


@pytest.mark.parametrize("make", [lambda f: ZeroDCE(fused=f), lambda f: ZeroDCEPlusPlus(scale_factor=1, fused=f)],
                         ids=["zerodce", "zerodcepp"])
def test_autocast_training_forward_matches_the_reference_under_autocast(make):
    torch.manual_seed(5)
    ref, lean = make(False), make(True)
    lean.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 16, 16)
    grads = []
    for m in (ref, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        sum(o.float().sum() for o in out).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.isfinite(a).all()
        _close(a.float(), b.float(), 5e-2, "autocast gradient")


def test_no_grad_forward_and_enhance_image_are_unchanged():
    torch.manual_seed(6)
    ref, lean = ZeroDCE(fused=False), ZeroDCE()
    lean.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        _close(lean(x)[2], ref(x)[2], 1e-5, "r without gradients")
    _close(lean.enhance_image(x), ref.enhance_image(x), 1e-5, "enhance_image")


def _sci_forward_loss(model, criterion, x):
    """The original ``_loss``: the criterion summed over the stages of ``forward``."""
    i_list, _, in_list, _ = model(x)
    loss = 0
    for k in range(model.stage):
        loss = loss + criterion(in_list[k], i_list[k])
    return loss


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stage", [3, 1])
def test_sci_loss_equals_the_criterion_over_forward(stage, train):
    """SCINetwork._loss: the same loss, gradients (parameters and input) and BatchNorm running
    statistics as the original's loss over every stage of forward."""
    from lowlight_fast.losses import LossFunction
    from lowlight_fast.models.sci import SCINetwork

    torch.manual_seed(7)
    ref = SCINetwork(stage=stage).double().train(train)
    lean = SCINetwork(stage=stage).double().train(train)
    lean.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 13, 18, dtype=torch.float64) * 0.6 + 0.02
    criterion = LossFunction()
    lean._criterion = criterion
    xr, xl = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = _sci_forward_loss(ref, criterion, xr)
    got = lean._loss(xl)
    want.backward()
    got.backward()
    _close(got.detach(), want.detach(), 1e-10, "loss")
    _close(xl.grad, xr.grad, 1e-10, "input gradient")
    # conv biases before a BatchNorm have a zero gradient up to rounding: compare to the largest one
    scale = max(q.grad.abs().max().item() for q in ref.parameters() if q.grad is not None)
    for (name, p), q in zip(lean.named_parameters(), ref.parameters()):
        if q.grad is None:  # stage=1: the self-calibration does not reach the loss
            assert p.grad is None, name
            continue
        _close(p.grad, q.grad, 1e-10, f"gradient of {name}", scale=scale)
    # running statistics: the same up to rounding (the lean step's convolutions and BatchNorms run
    # channels-last on the CPU, which sums the batch statistics in another order)
    for (name, b), c in zip(lean.named_buffers(), ref.buffers()):
        if b.is_floating_point():
            torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-15, msg=name)
        else:
            assert torch.equal(b, c), name


# ---- the pieces of Zero-DCE's backward (lean_trunk.CHUNK_PIXELS) and the recomputed a1 ----------

_CONV_CASES = [((2, 32, 13, 9), 20), ((1, 32, 11, 7), 7), ((1, 32, 11, 7), 1), ((3, 32, 5, 6), 70)]


@pytest.mark.parametrize("shape,chunk", _CONV_CASES, ids=["2x13x9-bands2", "1x11x7-bands1", "1x11x7-rows1",
                                                          "3x5x6-images2"])
@pytest.mark.parametrize("out_channels", [32, 24])
@pytest.mark.parametrize("winograd", [False, True], ids=["onednn", "winograd"])
def test_pieces_of_the_convolution_backward_equal_one_call(shape, chunk, out_channels, winograd, monkeypatch):
    """Input (new or added into a given tensor), weight and bias gradients piece by piece: bands of rows
    (one row each, at the image's top and bottom too) and groups of whole images; oneDNN's NCHW
    backward, or channels-last on conv3x3_nhwc and its weight gradient (``winograd``)."""
    monkeypatch.setattr(lean_trunk, "CHUNK_PIXELS", chunk)
    assert len(lean_trunk._pieces(shape[0], shape[2], shape[3])) > 1
    g = torch.Generator().manual_seed(11)
    a = torch.randn(shape, generator=g, dtype=torch.float64).relu_()
    w = torch.randn(out_channels, shape[1], 3, 3, generator=g, dtype=torch.float64)
    go = torch.randn(shape[0], out_channels, *shape[2:], generator=g, dtype=torch.float64)
    want = torch.ops.aten.convolution_backward(go, a, w, [out_channels], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [True, True, True])
    if winograd:
        a, go = a.contiguous(memory_format=torch.channels_last), go.contiguous(memory_format=torch.channels_last)
    got = lean_trunk._conv3x3_backward(go, a, w, True, True, True, winograd=winograd)
    for name, x, y in zip(("input", "weight", "bias"), got, want):
        _close(x, y, 1e-12, f"{name} gradient")
    acc = torch.randn(shape, generator=g, dtype=torch.float64)
    if winograd:
        acc = acc.contiguous(memory_format=torch.channels_last)
    start = acc.clone()
    gin, gw, gb = lean_trunk._conv3x3_backward(go, a, w, True, False, True, acc, winograd)
    assert gin is acc and gw is None
    _close(gin - start, want[0], 1e-12, "input gradient added in place")
    _close(gb, want[2], 1e-12, "bias gradient")
    gin, gw, gb = lean_trunk._conv3x3_backward(go, a, w, False, True, False, winograd=winograd)
    assert gin is None and gb is None
    _close(gw, want[1], 1e-12, "weight gradient alone")


_FROZEN = ("e_conv1.weight", "e_conv5.bias", "e_conv7.weight", "e_conv3.weight", "e_conv3.bias")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk", [30, 200], ids=["bands", "images"])
@pytest.mark.parametrize("input_grad", [True, False], ids=["x-grad", "no-x-grad"])
@pytest.mark.parametrize("winograd", [True, False], ids=["winograd", "onednn"])
def test_zerodce_pieces_and_frozen_parameters_equal_the_plain_trunk(dtype, chunk, input_grad, winograd,
                                                                   monkeypatch):
    """The lean node with a small CHUNK_PIXELS (bands of a few rows, or single whole images) against the
    plain trunk: batch 2, an odd size, some parameters frozen, with and without an input gradient; on
    conv3x3_nhwc (the CPU default) and on oneDNN's convolutions (``lean_trunk.WINOGRAD = False``)."""
    monkeypatch.setattr(lean_trunk, "CHUNK_PIXELS", chunk)
    monkeypatch.setattr(lean_trunk, "WINOGRAD", winograd)
    shape = (2, 3, 13, 11)
    assert len(lean_trunk._pieces(shape[0], shape[2], shape[3])) > 1
    ref, lean = _pair(lambda fused: ZeroDCE(fused=fused), dtype, 8)
    for m in (ref, lean):
        for name, p in m.named_parameters():
            p.requires_grad_(name not in _FROZEN)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(shape, generator=g, dtype=dtype)
    proj = torch.randn(2, 24, 13, 11, generator=g, dtype=dtype)
    results = []
    for trunk in (lambda m, x: dce_trunk(m, x), lambda m, x: lean_trunk.ZeroDCETrunk.apply(
            x, *lean_trunk._layer_params(m, False))):
        m = ref if not results else lean
        xi = x.clone().requires_grad_(input_grad)
        out = trunk(m, xi)
        (out * proj).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (out_r, gx_r, gp_r), (out_l, gx_l, gp_l) = results
    rel = TOL[dtype]
    _close(out_l, out_r, rel, "trunk output")
    if input_grad:
        _close(gx_l, gx_r, rel, "input gradient")
    else:
        assert gx_l is None and gx_r is None
    for name in gp_r:
        if name in _FROZEN:
            assert gp_l[name] is None and gp_r[name] is None, name
        else:
            _close(gp_l[name], gp_r[name], rel, f"gradient of {name}")


@pytest.mark.parametrize("winograd", [True, False], ids=["winograd", "onednn"])
def test_the_zerodce_node_runs_winograd_layers_on_the_cpu(winograd, monkeypatch):
    """All seven layers (layer 1 by the op's direct sums) and their backward on conv3x3_nhwc and its
    weight gradient (checked with the profiler), and none of them with WINOGRAD off or under the
    reference backend."""
    monkeypatch.setattr(lean_trunk, "WINOGRAD", winograd)
    m = ZeroDCE()
    x = torch.rand(2, 3, 12, 10)

    def counts():
        with torch.profiler.profile() as prof:
            out = lean_trunk.ZeroDCETrunk.apply(x, *lean_trunk._layer_params(m, False))
            out.sum().backward()
        names = [e.name for e in prof.events()]
        assert out.is_contiguous()  # NCHW out, whatever runs inside
        return names.count("lowlight_fast::conv3x3_nhwc"), names.count("lowlight_fast::conv3x3_nhwc_weight_grad")

    # forward: layers 1-7; backward: layer 1 again (a1, recomputed), the input gradients of 9 parts
    # (a1..a6, layer 7's a1 skip, the 2 other skips) and the weight gradients of 10 parts (layer 1 too)
    assert counts() == ((7 + 1 + 9, 10) if winograd else (0, 0))
    with use_backend("reference"):
        assert counts() == (0, 0)


def test_zerodce_node_gradcheck_with_pieces(monkeypatch):
    """float64 gradcheck of the lean node (input and parameters) with the backward in bands of 2 rows."""
    monkeypatch.setattr(lean_trunk, "CHUNK_PIXELS", 10)
    torch.manual_seed(10)
    m = ZeroDCE().double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 1.0 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.1)
    params = [p.detach().clone().requires_grad_(True) for p in lean_trunk._layer_params(m, False)]
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert len(lean_trunk._pieces(1, 6, 5)) == 3
    # fast mode (random projections): 79,416 parameters make the full Jacobian too slow; the weight
    # gradients elementwise: the tests above
    assert torch.autograd.gradcheck(lambda *t: lean_trunk.ZeroDCETrunk.apply(*t), (x, *params), fast_mode=True)


@pytest.mark.parametrize("make,n_params", [(lambda: ZeroDCE(), 14), (lambda: ZeroDCEPlusPlus(scale_factor=1), 28)],
                         ids=["zerodce", "zerodcepp"])
def test_the_forward_keeps_a2_to_a6_only(make, n_params):
    """a1 is not held from the forward to the backward (it is recomputed there)."""
    m = make()
    x = torch.rand(1, 3, 8, 8)
    node = (lean_trunk.ZeroDCETrunk if n_params == 14 else lean_trunk.DepthwiseSeparableTrunk).apply(
        x, *lean_trunk._layer_params(m, n_params == 28))
    acts = node.grad_fn.acts
    assert acts[0] is None and all(a is not None and a.shape[1] == 32 for a in acts[1:]) and len(acts) == 6
    node.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("make", [lambda: ZeroDCE(), lambda: ZeroDCEPlusPlus(scale_factor=1)],
                         ids=["zerodce", "zerodcepp"])
def test_a_retained_graph_gives_the_same_gradients_twice(make, monkeypatch):
    monkeypatch.setattr(lean_trunk, "CHUNK_PIXELS", 40)
    torch.manual_seed(12)
    m = make().double()
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64)
    loss = sum((o * o).sum() for o in m(x))
    first = torch.autograd.grad(loss, list(m.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(m.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
