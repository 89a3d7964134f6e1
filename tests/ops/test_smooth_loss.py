"""smooth_loss (SCI's 24-direction edge-aware smoothness) against the pure-PyTorch reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowlight_fast import _ext, use_backend
from lowlight_fast.losses import EdgeAwareSmoothLoss, LossFunction, SCILoss, SmoothLoss
from lowlight_fast.ops.smooth_loss import smooth_loss
from lowlight_fast.reference import sci_losses as ref
from tests import parity

pytestmark = pytest.mark.skipif(
    not _ext.has_op("smooth_loss"), reason="lowlight_fast._C not built (python setup.py build_ext --inplace)"
)

MODES = ("faithful", "per_pixel")
# odd sizes, the 3-pixel minimum, sizes where the faithful triples cross rows and planes, batch > 1
# and heights spanning several 16-row CPU chunks, with a last chunk of 1 or 2 rows
SHAPES = [(2, 3, 3, 3), (1, 3, 3, 8), (3, 3, 7, 11), (2, 3, 17, 23), (1, 3, 10, 4), (1, 3, 49, 5), (2, 3, 50, 6)]
OPS = torch.ops.lowlight_fast


def _pair(shape, dtype=torch.float64, device="cpu", requires_grad=False):
    x = torch.rand(shape, dtype=torch.float64, device=device).to(dtype)
    o = (torch.rand(shape, dtype=torch.float64, device=device) * 0.9 + 1e-4).to(dtype)
    return x.requires_grad_(requires_grad), o.requires_grad_(requires_grad)


def _ours_and_ref(x, o, sigma=10.0, ycbcr="faithful", ref_dtype=None):
    """(loss, grad_input, grad_output) from the op and from the reference (in ref_dtype)."""
    xs, os_ = x.detach().clone().requires_grad_(), o.detach().clone().requires_grad_()
    loss = smooth_loss(xs, os_, sigma, ycbcr)
    gi, go = torch.autograd.grad(loss, (xs, os_))
    rd = ref_dtype or x.dtype
    xr, orr = x.detach().to(rd).requires_grad_(), o.detach().to(rd).requires_grad_()
    rloss = ref.smooth_loss(xr, orr, sigma, ycbcr)
    rgi, rgo = torch.autograd.grad(rloss, (xr, orr))
    return (loss, gi, go), (rloss, rgi, rgo)


def _assert_rel(a, b, rtol, what):
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} * max |ref| {scale:.3g}"


@pytest.mark.parametrize("ycbcr", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(device, shape, ycbcr):
    x, o = _pair(shape, device=device)
    (loss, gi, go), (rloss, rgi, rgo) = _ours_and_ref(x, o, ycbcr=ycbcr)
    assert loss.dtype == torch.float64 and loss.shape == ()
    torch.testing.assert_close(loss, rloss, rtol=1e-12, atol=0)
    _assert_rel(gi, rgi, 1e-11, "grad input")
    _assert_rel(go, rgo, 1e-11, "grad output")


@pytest.mark.parametrize("ycbcr", MODES)
@pytest.mark.parametrize("sigma", [10.0, 0.4, 0.03])
def test_float32_matches_reference(device, ycbcr, sigma):
    # sigma 0.4 makes the weights vary strongly; 0.03 drives exp below its float range (weights ~ 0)
    x, o = _pair((2, 3, 33, 47), dtype=torch.float32, device=device)
    (loss, gi, go), (rloss, rgi, rgo) = _ours_and_ref(x, o, sigma=sigma, ycbcr=ycbcr, ref_dtype=torch.float64)
    assert loss.dtype == torch.float32 and gi.dtype == torch.float32 and go.dtype == torch.float32
    torch.testing.assert_close(loss.double(), rloss, rtol=2e-6, atol=1e-30)
    _assert_rel(gi, rgi, 1e-5, "grad input")
    _assert_rel(go, rgo, 1e-5, "grad output")


@pytest.mark.parametrize("dtype,grad_rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("ycbcr", MODES)
def test_reduced_precision(device, dtype, grad_rtol, ycbcr):
    # computed in float32 from the float16/bfloat16 values; gradients rounded to the argument dtype
    x, o = _pair((2, 3, 9, 14), dtype=dtype, device=device)
    (loss, gi, go), (rloss, rgi, rgo) = _ours_and_ref(x, o, ycbcr=ycbcr, ref_dtype=torch.float64)
    assert loss.dtype == torch.float32 and gi.dtype == dtype and go.dtype == dtype
    torch.testing.assert_close(loss.double(), rloss, rtol=1e-5, atol=0)
    _assert_rel(gi, rgi, grad_rtol, "grad input")
    _assert_rel(go, rgo, grad_rtol, "grad output")


@pytest.mark.parametrize("ycbcr", MODES)
@pytest.mark.parametrize("sigma", [10.0, 0.5])
def test_gradcheck(device, ycbcr, sigma):
    x, o = _pair((2, 3, 5, 7), device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: smooth_loss(a, b, sigma, ycbcr), (x, o))
    # the op without the fused path: its autograd runs the standalone backward op
    faithful = ycbcr == "faithful"
    assert torch.autograd.gradcheck(lambda a, b: OPS.smooth_loss(a, b, sigma, faithful), (x, o))


@pytest.mark.parametrize("faithful", [True, False])
def test_opcheck(device, faithful):
    x, o = _pair((2, 3, 5, 9), dtype=torch.float32, device=device)
    grad = torch.tensor(1.7, device=device)
    torch.library.opcheck(OPS.smooth_loss, (x, o, 10.0, faithful))
    torch.library.opcheck(OPS.smooth_loss_with_grad, (x, o, 10.0, faithful))
    torch.library.opcheck(OPS.smooth_loss_backward, (grad, x, o, 10.0, faithful))


def test_backward_op_scales_and_matches_fused(device):
    x, o = _pair((2, 3, 6, 8), device=device)
    _, gi, go = OPS.smooth_loss_with_grad(x, o, 10.0, True)
    bi, bo = OPS.smooth_loss_backward(torch.tensor(-2.5, dtype=torch.float64, device=device), x, o, 10.0, True)
    torch.testing.assert_close(bi, -2.5 * gi, rtol=1e-13, atol=0)
    torch.testing.assert_close(bo, -2.5 * go, rtol=1e-13, atol=0)
    loss_only = OPS.smooth_loss(x, o, 10.0, True)
    torch.testing.assert_close(loss_only, OPS.smooth_loss_with_grad(x, o, 10.0, True)[0], rtol=1e-14, atol=0)


def test_torch_compile_fullgraph(device):
    x, o = _pair((2, 3, 11, 13), dtype=torch.float32, device=device, requires_grad=True)
    compiled = torch.compile(lambda a, b: smooth_loss(a, b) * 3.0, fullgraph=True)
    loss = compiled(x, o)
    gi, go = torch.autograd.grad(loss, (x, o))
    eloss = smooth_loss(x, o) * 3.0
    egi, ego = torch.autograd.grad(eloss, (x, o))
    torch.testing.assert_close(loss, eloss)
    torch.testing.assert_close(gi, egi)
    torch.testing.assert_close(go, ego)


def test_deterministic_and_thread_count_independent():
    x, o = _pair((2, 3, 45, 61), dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            results.append(OPS.smooth_loss_with_grad(x, o, 10.0, True))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_instruction_set_variants_agree(tmp_path):
    """The AVX-512, AVX2 and generic CPU loops (chosen by ATEN_CPU_CAPABILITY) give the same result."""
    x, o = _pair((2, 3, 19, 37), dtype=torch.float32)
    torch.save((x, o), tmp_path / "in.pt")
    code = (
        "import sys, torch, lowlight_fast.ops\n"
        "x, o = torch.load(sys.argv[1])\n"
        "torch.save(torch.ops.lowlight_fast.smooth_loss_with_grad(x, o, 10.0, True), sys.argv[2])\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    outs = []
    for cap in ("default", "avx2"):
        out = tmp_path / f"{cap}.pt"
        env["ATEN_CPU_CAPABILITY"] = cap
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.pt"), str(out)], check=True, env=env)
        outs.append(torch.load(out))
    here = OPS.smooth_loss_with_grad(x, o, 10.0, True)
    for other in outs:
        for a, b in zip(here, other):
            _assert_rel(a, b, 1e-5, "ISA variant")


def test_zero_differences_have_zero_gradient(device):
    x, _ = _pair((2, 3, 6, 7), device=device)
    o = torch.full_like(x, 0.3)
    o[1, :, 3:, :] = 0.7  # an edge: only pairs across it contribute
    (loss, gi, go), (rloss, rgi, rgo) = _ours_and_ref(x, o)
    torch.testing.assert_close(loss, rloss, rtol=1e-12, atol=0)
    torch.testing.assert_close(go, rgo, rtol=1e-11, atol=1e-15)
    torch.testing.assert_close(gi, rgi, rtol=1e-11, atol=1e-15)
    assert go[0].abs().max() == 0 and gi[0].abs().max() == 0


def test_noncontiguous_arguments(device):
    x, o = _pair((2, 3, 9, 12), dtype=torch.float32, device=device)
    xc = x.to(memory_format=torch.channels_last)
    ob = torch.cat([o, o], dim=3)[..., ::2]
    assert not xc.is_contiguous() and not ob.is_contiguous()
    loss2, gi2, go2 = OPS.smooth_loss_with_grad(xc, ob, 10.0, True)
    loss3, gi3, go3 = OPS.smooth_loss_with_grad(x, ob.contiguous(), 10.0, True)
    torch.testing.assert_close(loss2, loss3, rtol=0, atol=0)
    torch.testing.assert_close(gi2, gi3, rtol=0, atol=0)
    torch.testing.assert_close(go2, go3, rtol=0, atol=0)


def test_backend_switch_reference_agrees(device):
    x, o = _pair((2, 3, 8, 9), device=device)
    ours = smooth_loss(x, o, 10.0, "per_pixel")
    with use_backend("reference"):
        theirs = smooth_loss(x, o, 10.0, "per_pixel")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_loss_modules(device):
    x, o = _pair((2, 3, 7, 10), device=device, requires_grad=True)
    assert EdgeAwareSmoothLoss is SmoothLoss and SCILoss is LossFunction
    torch.testing.assert_close(SmoothLoss()(x, o), ref.smooth_loss(x, o), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        SmoothLoss(sigma=2.0, ycbcr="per_pixel")(x, o), ref.smooth_loss(x, o, 2.0, "per_pixel"), rtol=1e-12, atol=0
    )
    loss = LossFunction()(x, o)
    rloss = ref.sci_loss(x, o)
    torch.testing.assert_close(loss, rloss, rtol=1e-12, atol=0)
    g = torch.autograd.grad(loss, (x, o))
    rg = torch.autograd.grad(rloss, (x, o))
    for a, b in zip(g, rg):
        _assert_rel(a, b, 1e-11, "LossFunction gradient")


# --- conformance with the original code (../shared/parity) -------------------------------------------


def _parity():
    arrays = parity.load("sci")
    exp = parity.expected()["sci"]
    return arrays, exp


def test_parity_smooth_loss():
    arrays, exp = _parity()
    x = arrays["smooth_input"].clone().requires_grad_()  # the image
    o = arrays["smooth_output"].clone().requires_grad_()  # the illumination
    loss = SmoothLoss()(x, o)
    gi, go = torch.autograd.grad(loss, (x, o))
    assert loss.item() == pytest.approx(exp["smooth_loss"], rel=1e-5)
    _assert_rel(gi, arrays["smooth_grad_input"], 1e-5, "grad input")
    _assert_rel(go, arrays["smooth_grad_output"], 1e-5, "grad output")


def test_parity_lossfunction():
    arrays, exp = _parity()
    x = arrays["smooth_input"].clone().requires_grad_()
    illu = arrays["smooth_output"].clone().requires_grad_()
    loss = LossFunction()(x, illu)
    gi, gl = torch.autograd.grad(loss, (x, illu))
    assert loss.item() == pytest.approx(exp["lossfunction"], rel=1e-5)
    _assert_rel(gi, arrays["lossfunction_grad_input"], 1e-5, "grad input")
    _assert_rel(gl, arrays["lossfunction_grad_illu"], 1e-5, "grad illu")


def test_parity_fixture_keys_are_documented():
    # expected.json is plain JSON with the scalar values used above
    exp = parity.expected()
    assert {"smooth_loss", "lossfunction"} <= set(exp["sci"])
    json.dumps(exp)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: (torch.rand(3, 5, 5), torch.rand(3, 5, 5)), ValueError, "4-D"),
        (lambda: (torch.rand(1, 4, 5, 5), torch.rand(1, 4, 5, 5)), ValueError, "3 channels"),
        (lambda: (torch.randint(0, 9, (1, 3, 5, 5)), torch.randint(0, 9, (1, 3, 5, 5))), TypeError, "dtype"),
        (lambda: (torch.rand(1, 3, 5, 5), torch.rand(1, 3, 5, 6)), ValueError, "same shape"),
        (lambda: (torch.rand(1, 3, 5, 5), torch.rand(1, 3, 5, 5).double()), TypeError, "same dtype"),
        (lambda: (torch.rand(1, 3, 5, 5), torch.rand(1, 3, 5, 5, device="meta")), ValueError, "same device"),
        (lambda: (torch.rand(0, 3, 5, 5), torch.rand(0, 3, 5, 5)), ValueError, "empty"),
        (lambda: (torch.rand(1, 3, 2, 5), torch.rand(1, 3, 2, 5)), ValueError, "smaller than the 3x3"),
        (lambda: (torch.rand(1, 3, 5, 1), torch.rand(1, 3, 5, 1)), ValueError, "smaller than the 3x3"),
    ],
)
def test_bad_input(make, exc, match):
    x, o = make()
    with pytest.raises(exc, match=match):
        smooth_loss(x, o)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), "10"])
def test_bad_sigma(sigma):
    x, o = _pair((1, 3, 5, 5))
    with pytest.raises(ValueError, match="sigma"):
        smooth_loss(x, o, sigma)


def test_bad_ycbcr():
    x, o = _pair((1, 3, 5, 5))
    with pytest.raises(ValueError, match="ycbcr"):
        smooth_loss(x, o, ycbcr="bt601")


def test_kernel_checks_direct_calls():
    x, o = _pair((1, 3, 5, 5), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="at least 3x3"):
        OPS.smooth_loss(x[:, :, :2], o[:, :, :2], 10.0, True)
    with pytest.raises(RuntimeError, match="shape of input"):
        OPS.smooth_loss(x, o[:, :, :4], 10.0, True)
    with pytest.raises(RuntimeError, match="sigma"):
        OPS.smooth_loss(x, o, -1.0, True)
    with pytest.raises(RuntimeError, match="scalar"):
        OPS.smooth_loss_backward(torch.ones(2), x, o, 10.0, True)
