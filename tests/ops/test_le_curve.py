"""lowlight_fast.ops.le_curve: the fused curve (C++ and Triton paths) against the plain-PyTorch reference.

The Triton path runs on CPU tensors through the interpreter (TRITON_INTERPRET=1, set by conftest), so
its sizes stay small; with LOWLIGHT_FAST_TEST_DEVICE=cuda every test also runs on the GPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowlight_fast
from lowlight_fast import _ext
from lowlight_fast.ops import _registry
from lowlight_fast.ops import le_curve as ops
from lowlight_fast.reference import curve as ref
from tests import parity

ROOT = Path(__file__).resolve().parents[2]
OPS = torch.ops.lowlight_fast


def _backends(device: str) -> list[str]:
    # the compiled C++ kernels are the CPU path; Triton is the GPU path (and runs interpreted on CPU)
    return ["cpp", "triton"] if device == "cpu" else ["triton"]


@pytest.fixture(params=["cpp", "triton"])
def backend(request, device):
    if request.param not in _backends(device):
        pytest.skip(f"{request.param} is not a {device} path of le_curve")
    if request.param == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it unless testing on cuda)")
    if request.param == "cpp" and not _ext.has_op("le_curve"):
        pytest.fail("lowlight_fast._C is not built (scripts/setup.sh builds it)")
    with lowlight_fast.use_backend(request.param):
        yield request.param


def _gradcheck(fn, inputs, backend, device):
    # the Triton interpreter pays ~0.1 s a launch: fast mode (random projections) keeps it to a few launches
    return torch.autograd.gradcheck(fn, inputs, fast_mode=backend == "triton" and device == "cpu")


def _inputs(shape, device, dtype=torch.float32, map_size=None, channels=24):
    """An image in [0, 1] and curve maps in (-1, 1) (the models' tanh output)."""
    b, _, h, w = shape
    x = torch.rand(b, 3, h, w, device=device, dtype=torch.float64)
    mh, mw = map_size or (h, w)
    m = torch.rand(b, channels, mh, mw, device=device, dtype=torch.float64) * 2 - 1
    return x.to(dtype), m.to(dtype)


SHAPES = [(2, 3, 7, 9), (3, 3, 1, 5), (2, 3, 2, 1), (2, 3, 13, 17)]
# (image size, map size): low-resolution maps, equal height but not width, 1-pixel maps and images
SHARED_SIZES = [((7, 9), (7, 9)), ((13, 17), (3, 4)), ((12, 12), (1, 1)), ((5, 8), (5, 2)), ((1, 6), (2, 3)),
                ((9, 1), (4, 1))]

# float16 / bfloat16 load and store with float32 math: compared with the float64 reference
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _ref_curve_grads(x, r, g4, g8):
    x = x.detach().double().requires_grad_()
    r = r.detach().double().requires_grad_()
    o4, o8 = ref.le_curve(x, r)
    outs, grads = zip(*[(o, g.double()) for o, g in ((o4, g4), (o8, g8)) if g is not None])
    gx, gr = torch.autograd.grad(outs, (x, r), grads)
    return (o4, o8), gx, gr


# ---- Zero-DCE form ----


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_le_curve_forward_backward_match_reference(backend, device, shape, dtype):
    x, r = _inputs(shape, device, dtype)
    x.requires_grad_()
    r.requires_grad_()
    o4, o8 = ops.le_curve(x, r)
    assert o4.dtype == o8.dtype == dtype and o4.shape == o8.shape == x.shape
    g4, g8 = torch.randn_like(o4), torch.randn_like(o8)
    gx, gr = torch.autograd.grad((o4, o8), (x, r), (g4, g8))
    (e4, e8), ex, er = _ref_curve_grads(x, r, g4, g8)
    tol = TOL[dtype]
    torch.testing.assert_close(o4.double(), e4, **tol)
    torch.testing.assert_close(o8.double(), e8, **tol)
    # gradients grow through 8 steps (|d step / d s| up to 3): looser for 16-bit types
    gtol = tol if dtype == torch.float32 else dict(rtol=tol["rtol"] * 4, atol=tol["atol"] * 8)
    torch.testing.assert_close(gx.double(), ex, **gtol)
    torch.testing.assert_close(gr.double(), er, **gtol)


@pytest.mark.parametrize("which", ["after4", "after8"])
def test_le_curve_backward_from_one_output(backend, device, which):
    x, r = _inputs((2, 3, 5, 11), device)
    x.requires_grad_()
    r.requires_grad_()
    o4, o8 = ops.le_curve(x, r)
    out = o4 if which == "after4" else o8
    g = torch.randn_like(out)
    gx, gr = torch.autograd.grad(out, (x, r), g)
    _, ex, er = _ref_curve_grads(x, r, g if which == "after4" else None, g if which == "after8" else None)
    torch.testing.assert_close(gx.double(), ex, **TOL[torch.float32])
    torch.testing.assert_close(gr.double(), er, **TOL[torch.float32])
    if which == "after4":  # the last four maps do not reach the 4-step image
        assert torch.all(gr[:, 12:] == 0)


def test_le_curve_non_contiguous_inputs(backend, device):
    x, r = _inputs((2, 3, 9, 6), device)
    xt, rt = x.transpose(2, 3), r.transpose(2, 3)  # (2, 3, 6, 9) views
    for got, want in zip(ops.le_curve(xt, rt), ref.le_curve(xt, rt)):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("shape", [(2, 3, 19, 37), (1, 3, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_le_curve_channels_last_maps(backend, device, shape, dtype):
    # maps as the convolution trunk leaves them on the CPU (channels-last), images in either layout
    x, r = _inputs(shape, device, dtype)
    rcl = r.contiguous(memory_format=torch.channels_last)
    assert not rcl.is_contiguous()
    tol = TOL.get(dtype, dict(rtol=1e-12, atol=1e-12))
    want = ref.le_curve(x.double(), r.double())
    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
        got = ops.le_curve(xin, rcl)
        for g, w in zip(got, want):
            assert g.dtype == dtype and g.is_contiguous()
            torch.testing.assert_close(g.double(), w, **tol)


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("shape", [(2, 3, 150, 170), (1, 3, 800, 900)])
def test_le_curve_channels_last_maps_large(backend, device, shape):
    # 150x170: several parallel tasks whose pixel runs start off the transposed tiles' boundaries;
    # 800x900: outputs over cpu/simd.h's kStreamBytes, written from L1 tiles with non-temporal stores
    x, r = _inputs(shape, device)
    got = ops.le_curve(x, r.contiguous(memory_format=torch.channels_last))
    for g, w in zip(got, ops.le_curve(x, r)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def test_le_curve_gradcheck(backend, device):
    x, r = _inputs((2, 3, 3, 5), device, torch.float64)
    x.requires_grad_()
    r.requires_grad_()
    assert _gradcheck(ops.le_curve, (x, r), backend, device)
    assert _gradcheck(lambda x, r: ops.le_curve(x, r)[1], (x, r), backend, device)
    assert _gradcheck(lambda x, r: ops.le_curve(x, r)[0], (x, r), backend, device)


def test_le_curve_saves_only_inputs(backend, device):
    x, r = _inputs((2, 3, 4, 5), device)
    x.requires_grad_()
    r.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.le_curve(x, r)
        ops.le_curve_shared(x, r[:, :3].detach().requires_grad_())
    assert len(saved) == 4
    assert {t.shape for t in saved} <= {x.shape, r.shape}


# ---- Zero-DCE++ form ----


@pytest.mark.parametrize("sizes", SHARED_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_le_curve_shared_forward_backward_match_reference(backend, device, sizes, dtype):
    (h, w), map_size = sizes
    x, a = _inputs((2, 3, h, w), device, dtype, map_size=map_size, channels=3)
    x.requires_grad_()
    a.requires_grad_()
    out = ops.le_curve_shared(x, a)
    assert out.dtype == dtype and out.shape == x.shape
    g = torch.randn_like(out)
    gx, ga = torch.autograd.grad(out, (x, a), g)
    assert ga.shape == a.shape and ga.dtype == dtype
    xd, ad = x.detach().double().requires_grad_(), a.detach().double().requires_grad_()
    want = ref.le_curve_shared(xd, ad)
    ex, ea = torch.autograd.grad(want, (xd, ad), g.double())
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), want, **tol)
    gtol = tol if dtype == torch.float32 else dict(rtol=tol["rtol"] * 4, atol=tol["atol"] * 8)
    torch.testing.assert_close(gx.double(), ex, **gtol)
    # the low-resolution map gathers many pixels' gradients: compare relative to its scale
    scale = float(ea.abs().max())
    torch.testing.assert_close(ga.double() / scale, ea / scale, **gtol)


@pytest.mark.parametrize("map_size", [(7, 9), (3, 4)])
def test_le_curve_shared_gradcheck(backend, device, map_size):
    x, a = _inputs((2, 3, 7, 9), device, torch.float64, map_size=map_size, channels=3)
    x.requires_grad_()
    a.requires_grad_()
    assert _gradcheck(ops.le_curve_shared, (x, a), backend, device)


def test_le_curve_shared_low_res_matches_explicit_upsampling(backend, device):
    """The in-kernel sampling equals F.interpolate(bilinear, align_corners=True) followed by the curve."""
    x, a = _inputs((2, 3, 24, 36), device, map_size=(2, 3), channels=3)
    full = ref.upsample_map(a, (24, 36))
    torch.testing.assert_close(ops.le_curve_shared(x, a), ops.le_curve_shared(x, full), rtol=1e-5, atol=1e-6)


# ---- grid: the map covers a larger (padded) pixel grid of which x is the top-left part ----

# (image size, grid, map size): padded in both / one dimension, the map at the grid's size, 1-pixel cases
GRID_CASES = [((7, 9), (12, 12), (1, 1)), ((7, 9), (12, 12), (3, 2)), ((13, 17), (24, 24), (2, 2)),
              ((5, 8), (5, 12), (5, 3)), ((5, 8), (6, 8), (6, 8)), ((1, 5), (4, 8), (1, 2))]


@pytest.mark.parametrize("size,grid,map_size", GRID_CASES)
def test_le_curve_shared_grid_equals_padded_then_cropped(backend, device, size, grid, map_size):
    """With grid, the curve equals the curve on x padded to the grid (any padding: those pixels never
    reach x's part), cropped back; gradients likewise (the padding gets none)."""
    x, a = _inputs((2, 3, *size), device, torch.float64, map_size=map_size, channels=3)
    x.requires_grad_()
    a.requires_grad_()
    xp = torch.nn.functional.pad(x, (0, grid[1] - size[1], 0, grid[0] - size[0]), mode="replicate")
    got = ops.le_curve_shared(x, a, grid=grid)
    want = ref.le_curve_shared(xp, a)[..., : size[0], : size[1]]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.le_curve_shared(x, a, grid), want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    gx, ga = torch.autograd.grad(got, (x, a), g)
    ex, ea = torch.autograd.grad(want, (x, a), g)
    torch.testing.assert_close(gx, ex, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, ea, rtol=1e-10, atol=1e-12)


def test_le_curve_shared_grid_gradcheck_and_float32(backend, device):
    x, a = _inputs((2, 3, 5, 7), device, torch.float64, map_size=(2, 3), channels=3)
    x.requires_grad_()
    a.requires_grad_()
    assert _gradcheck(lambda x, a: ops.le_curve_shared(x, a, grid=(9, 12)), (x, a), backend, device)
    x32, a32 = x.detach().float(), a.detach().float()
    want = ref.le_curve_shared(x.detach(), a.detach(), (9, 12)).float()
    torch.testing.assert_close(ops.le_curve_shared(x32, a32, grid=(9, 12)), want, rtol=1e-5, atol=1e-6)


def test_le_curve_shared_grid_of_the_image_size_is_no_grid(backend, device):
    x, a = _inputs((2, 3, 6, 7), device, map_size=(2, 3), channels=3)
    torch.testing.assert_close(ops.le_curve_shared(x, a, grid=(6, 7)), ops.le_curve_shared(x, a), rtol=0, atol=0)


def test_le_curve_shared_grid_errors(device):
    x, a = _inputs((1, 3, 6, 7), device, map_size=(2, 3), channels=3)
    with pytest.raises(ValueError, match=r"grid: 5x7 must cover the image, 6x7"):
        ops.le_curve_shared(x, a, grid=(5, 7))
    with pytest.raises(ValueError, match=r"grid: expected \(height, width\)"):
        ops.le_curve_shared(x, a, grid=(6, 7, 1))
    if device == "cpu" and _ext.has_op("le_curve_shared"):
        with pytest.raises(RuntimeError, match="must cover the image"):
            OPS.le_curve_shared(x, a, [6, 6])
        with pytest.raises(RuntimeError, match=r"grid must be \(height, width\)"):
            OPS.le_curve_shared(x, a, [6])


# ---- registration: opcheck, torch.compile ----


def _op_names(backend):
    if backend == "triton":
        _registry.use_triton("le_curve")
    s = "" if backend == "cpp" else "_triton"
    return {
        "le_curve": getattr(OPS, f"le_curve{s}"),
        "le_curve_backward": getattr(OPS, f"le_curve{s}_backward"),
        "le_curve_shared": getattr(OPS, f"le_curve_shared{s}"),
        "le_curve_shared_backward": getattr(OPS, f"le_curve_shared{s}_backward"),
    }


def test_opcheck(backend, device):
    names = _op_names(backend)
    x, r = _inputs((2, 3, 3, 5), device, torch.float64)
    _, a = _inputs((2, 3, 3, 5), device, torch.float64, map_size=(2, 2), channels=3)
    g = torch.randn_like(x)
    x.requires_grad_()
    r.requires_grad_()
    a.requires_grad_()
    torch.library.opcheck(names["le_curve"], (x, r))
    torch.library.opcheck(names["le_curve_shared"], (x, a))
    torch.library.opcheck(names["le_curve_shared"], (x, r[:, :3].detach().requires_grad_()))
    xd, rd, ad = x.detach(), r.detach(), a.detach()
    for g4, g8 in ((g, g), (None, g), (g, None), (None, None)):
        torch.library.opcheck(names["le_curve_backward"], (xd, rd, g4, g8))
    torch.library.opcheck(names["le_curve_shared_backward"], (xd, ad, g))
    torch.library.opcheck(names["le_curve_shared"], (x, a, [5, 8]))
    torch.library.opcheck(names["le_curve_shared_backward"], (xd, ad, g, [4, 6]))


def test_torch_compile_fullgraph(backend, device):
    def f(x, r, a):
        o4, o8 = ops.le_curve(x, r)
        s = ops.le_curve_shared(x, a)
        return (o4 * 0.5 + o8).sum() + (s * s).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    x, r = _inputs((2, 3, 5, 7), device)
    _, a = _inputs((2, 3, 5, 7), device, map_size=(2, 3), channels=3)
    leaves = [t.requires_grad_() for t in (x, r, a)]
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    want = f(*leaves)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


# ---- the original code's outputs ----


def test_parity_zerodce(backend, device):
    d = parity.load("zerodce")
    o4, o8 = ops.le_curve(d["input"].to(device), d["r"].to(device))
    torch.testing.assert_close(o4.cpu(), d["enhance_image_1"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o8.cpu(), d["enhance_image"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sf", [1, 4, 12])
def test_parity_zerodcepp(backend, device, sf):
    d = parity.load("zerodcepp")
    out = ops.le_curve_shared(d["input"].to(device), d[f"sf{sf}/x_r"].to(device))
    torch.testing.assert_close(out.cpu(), d[f"sf{sf}/enhance_image"], rtol=1e-5, atol=1e-6)


# ---- errors a user can cause ----


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda x, r: (x[0], r), ValueError, "4-D"),
        (lambda x, r: (x, r[:, :21]), ValueError, "24 channels"),
        (lambda x, r: (x[:, :2], r), ValueError, "3 channels"),
        (lambda x, r: (x, r[..., :3]), ValueError, "spatial size"),
        (lambda x, r: (x, r[:1]), ValueError, "batch"),
        (lambda x, r: (x.int(), r.int()), TypeError, "dtype"),
        (lambda x, r: (x, r.to("meta")), ValueError, "same device"),
        (lambda x, r: (x[:, :, :0], r[:, :, :0]), ValueError, "empty"),
    ],
)
def test_le_curve_rejects_bad_input(backend, make, exc, match):
    x, r = _inputs((2, 3, 4, 5), "cpu")
    with pytest.raises(exc, match=match):
        ops.le_curve(*make(x, r))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda x, a: (x, a[:, :2]), ValueError, "3 channels"),
        (lambda x, a: (x, a[:1]), ValueError, "batch"),
        (lambda x, a: (x, a[0]), ValueError, "4-D"),
    ],
)
def test_le_curve_shared_rejects_bad_input(backend, make, exc, match):
    x, a = _inputs((2, 3, 4, 5), "cpu", map_size=(2, 2), channels=3)
    with pytest.raises(exc, match=match):
        ops.le_curve_shared(*make(x, a))


def test_mixed_dtypes_promote_like_the_eager_curve(backend):
    """Under autocast the convs give a bfloat16 map for a float32 image: the result is float32, as eager."""
    x, r = _inputs((2, 3, 5, 7), "cpu")
    o4, o8 = ops.le_curve(x, r.bfloat16())
    e4, e8 = ref.le_curve(x, r.bfloat16())
    assert o8.dtype == e8.dtype == torch.float32
    torch.testing.assert_close(o8, e8, rtol=1e-5, atol=1e-6)
    a = r[:, :3].half()
    torch.testing.assert_close(ops.le_curve_shared(x, a), ref.le_curve_shared(x, a), rtol=1e-5, atol=1e-6)


def test_cpp_kernels_check_their_arguments():
    """The compiled ops called directly (bypassing the Python checks) raise instead of misreading memory."""
    if not _ext.has_op("le_curve"):
        pytest.fail("lowlight_fast._C is not built (scripts/setup.sh builds it)")
    x, r = _inputs((2, 3, 4, 5), "cpu")
    with pytest.raises(RuntimeError, match="24 channels"):
        OPS.le_curve(x, r[:, :12])
    with pytest.raises(RuntimeError, match="spatial size"):
        OPS.le_curve(x, r[..., :4])
    with pytest.raises(RuntimeError, match="dtype"):
        OPS.le_curve_shared(x, r[:, :3].double())
    with pytest.raises(RuntimeError, match="grad_out"):
        OPS.le_curve_shared_backward(x, r[:, :3], x[..., :2])


def test_reference_backend_is_the_reference():
    x, r = _inputs((2, 3, 4, 5), "cpu")
    with lowlight_fast.use_backend("reference"):
        got = ops.le_curve(x, r)
    for g, w in zip(got, ref.le_curve(x, r)):
        assert torch.equal(g, w)


# ---- the Triton kernels compile for a GPU (no GPU needed) ----


_AOT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lowlight_fast.ops.triton import le_curve as K

target = GPUTarget("cuda", 90, 32)
def compile(fn, sig, **consts):
    names = fn.arg_names
    full = {n: sig.get(n, "constexpr") for n in names}
    k = triton.compile(ASTSource(fn=fn, signature=full, constexprs=consts), target=target)
    assert k.asm["cubin"], fn.__name__

for p, c in (("*fp32", tl.float32), ("*bf16", tl.float32), ("*fp64", tl.float64)):
    img = dict(x_ptr=p, r_ptr=p, out4_ptr=p, out8_ptr=p, HW="i32")
    compile(K._le_curve_fwd_kernel, img, BLOCK=K.BLOCK, COMPUTE=c)
    bwd = dict(x_ptr=p, r_ptr=p, g4_ptr=p, g8_ptr=p, gx_ptr=p, gr_ptr=p, HW="i32")
    for h4, h8 in ((True, True), (False, True), (True, False)):
        compile(K._le_curve_bwd_kernel, bwd, HAS4=h4, HAS8=h8, BLOCK=K.BLOCK, COMPUTE=c)
    for full in (True, False):
        sizes = dict(H="i32", W="i32", h="i32", w="i32", GH="i32", GW="i32")
        compile(K._le_curve_shared_fwd_kernel, dict(x_ptr=p, a_ptr=p, out_ptr=p, **sizes),
                FULL=full, BLOCK=K.BLOCK, COMPUTE=c)
        ga = p if full else ("*fp64" if p == "*fp64" else "*fp32")
        compile(K._le_curve_shared_bwd_kernel, dict(x_ptr=p, a_ptr=p, g_ptr=p, gx_ptr=p, ga_ptr=ga, **sizes),
                FULL=full, BLOCK=K.BLOCK, COMPUTE=c)
print("compiled")
"""


def test_triton_kernels_compile_for_sm90():
    """Every kernel variant goes through Triton's full pipeline to an sm_90 cubin (ptxas ships with Triton)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]
