"""tv_loss (Zero-DCE L_TV): C++ and Triton (interpreted on CPU) against the plain-PyTorch reference."""
import pytest
import torch

from lowlight_fast import _ext, use_backend
from lowlight_fast.ops import _registry
from lowlight_fast.ops import tv_loss as tv_op
from lowlight_fast.reference import zerodce_losses as ref
from tests import parity

BACKENDS = ["cpp", "triton"]
SHAPES = [(2, 3, 7, 9), (3, 24, 2, 2), (1, 3, 5, 2), (2, 1, 2, 17), (2, 3, 16, 33)]


def _op(backend):
    if backend == "cpp":
        if not _ext.has_op("tv_loss"):
            pytest.fail("lowlight_fast._C was not built with tv_loss")
        return torch.ops.lowlight_fast.tv_loss, torch.ops.lowlight_fast.tv_loss_backward
    _registry.use_triton("tv_loss")
    return torch.ops.lowlight_fast.tv_loss_triton, torch.ops.lowlight_fast.tv_loss_triton_backward


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_reference(backend, shape, device):
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        got = tv_op.tv_loss(x)
    want = ref.illumination_smoothness(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got, = torch.autograd.grad(3.0 * got, x)
    g_want, = torch.autograd.grad(3.0 * want, x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, device):
    forward, _ = _op(backend)
    for shape in [(2, 2, 5, 6), (1, 2, 2, 3)]:
        x = torch.rand(shape, device=device, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(forward, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    forward, backward = _op(backend)
    x = torch.rand(2, 3, 6, 5, device=device, requires_grad=True)
    torch.library.opcheck(forward, (x,))
    torch.library.opcheck(backward, (torch.tensor(0.7, device=device), x.detach()))


def test_with_grad_op_gradcheck_and_opcheck():
    """tv_loss_with_grad: (weight L, weight dL/dx) in one pass, differentiable through the saved gradient."""
    x = torch.rand(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    loss, grad = torch.ops.lowlight_fast.tv_loss_with_grad(x, 7.5)
    want = ref.illumination_smoothness(x, 7.5)
    g_want, = torch.autograd.grad(want, x)
    torch.testing.assert_close(loss, want, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, g_want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad, torch.ops.lowlight_fast.tv_loss_backward(torch.tensor(7.5, dtype=torch.float64), x))
    assert not grad.requires_grad
    assert torch.autograd.gradcheck(lambda t: torch.ops.lowlight_fast.tv_loss_with_grad(t, 7.5)[0], (x,))
    torch.library.opcheck(torch.ops.lowlight_fast.tv_loss_with_grad, (x.float().detach().requires_grad_(), 200.0))


@pytest.mark.parametrize("width", [1024, 1027])  # 1027: rows not 16-byte aligned
def test_large_gradient_written_with_streaming_stores(width):
    """Gradients of 16 MiB and more are streamed out of a row buffer: same values, any row alignment."""
    x = torch.rand(1, 4, 1030, width) - 0.5  # > 16 MiB of float32
    loss, grad = torch.ops.lowlight_fast.tv_loss_with_grad(x, 200.0)
    x64 = x.double().requires_grad_()
    want = ref.illumination_smoothness(x64, 200.0)
    g_want, = torch.autograd.grad(want, x64)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), g_want, rtol=1e-4, atol=1e-4 * g_want.abs().max().item())
    torch.testing.assert_close(torch.ops.lowlight_fast.tv_loss_backward(torch.tensor(200.0), x), grad, rtol=0, atol=0)


def test_cpu_gradient_is_the_forward_pass_gradient_handed_over():
    """loss.backward() sends 1 to the loss: x.grad is then the gradient the forward computed, not a copy."""
    x = (torch.rand(2, 24, 9, 11) - 0.5).requires_grad_()
    with use_backend("cpp"):
        loss = tv_op.tv_loss(x, 200.0)
    assert "tv_loss_with_grad" in loss.grad_fn.name()
    saved_ptr = loss.grad_fn.saved_tensors[0].data_ptr()
    loss.backward()
    assert x.grad.data_ptr() == saved_ptr  # handed over: no copy, no new allocation
    want = torch.ops.lowlight_fast.tv_loss_backward(torch.tensor(200.0), x.detach())
    torch.testing.assert_close(x.grad, want, rtol=1e-6, atol=1e-7)


def test_retained_graph_gives_the_same_gradient_every_time():
    """The saved gradient is handed over only once nothing else holds it: a retained graph keeps it intact."""
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5).requires_grad_()
    with use_backend("cpp"):
        loss = tv_op.tv_loss(x, 3.0)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward(retain_graph=True)  # accumulates into x.grad
    torch.testing.assert_close(x.grad, 2 * first, rtol=0, atol=0)
    g, = torch.autograd.grad(loss, x, retain_graph=True)
    torch.testing.assert_close(g, first, rtol=0, atol=0)
    g2, = torch.autograd.grad(2.5 * loss, x)  # not 1: scaled
    torch.testing.assert_close(g2, 2.5 * first, rtol=1e-15, atol=0)


def test_non_leaf_input_and_tensor_weight():
    y = (torch.rand(1, 3, 6, 7, dtype=torch.float64) - 0.5).requires_grad_()
    w = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    with use_backend("cpp"):
        loss = tv_op.tv_loss(2 * y, w) + tv_op.tv_loss(y.exp(), 1.5)
    gy, gw = torch.autograd.grad(loss, (y, w))
    want = ref.illumination_smoothness(2 * y, w) + ref.illumination_smoothness(y.exp(), 1.5)
    gy_want, gw_want = torch.autograd.grad(want, (y, w))
    torch.testing.assert_close(gy, gy_want)
    torch.testing.assert_close(gw, gw_want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiles_fullgraph(backend, device):
    torch._dynamo.reset()
    x = torch.rand(2, 3, 9, 7, device=device, requires_grad=True)
    with use_backend(backend):
        compiled = torch.compile(tv_op.tv_loss, fullgraph=True)
        got = compiled(x)
        g_got, = torch.autograd.grad(got, x)
    want = ref.illumination_smoothness(x)
    g_want, = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_dtypes(backend, dtype, tol, device):
    x32 = torch.rand(2, 3, 11, 13, device=device)
    x = x32.to(dtype).requires_grad_()
    with use_backend(backend):
        got = tv_op.tv_loss(x)
        g_got, = torch.autograd.grad(got, x)
    assert got.dtype == dtype and g_got.dtype == dtype
    xr = x.detach().float().requires_grad_()
    want = ref.illumination_smoothness(xr)
    g_want, = torch.autograd.grad(want, xr)
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(g_got.float(), g_want, rtol=tol, atol=tol * g_want.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend, device):
    base = torch.rand(2, 9, 7, 12, device=device, dtype=torch.float64)
    x = base[:, ::3, :, 1:10].contiguous(memory_format=torch.channels_last)[:, :, 1:]
    x.requires_grad_()
    with use_backend(backend):
        got = tv_op.tv_loss(x)
        g_got, = torch.autograd.grad(got, x)
    want = ref.illumination_smoothness(x)
    g_want, = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize(
    "x,exc,msg",
    [
        (torch.rand(3, 5, 5), ValueError, "curve_maps: expected a 4-D tensor"),
        (torch.randint(0, 5, (1, 3, 5, 5)), TypeError, "curve_maps: expected dtype"),
        (torch.rand(0, 3, 5, 5), ValueError, "curve_maps: empty tensor"),
        (torch.rand(2, 3, 1, 5), ValueError, "smaller than the 2x2"),
        (torch.rand(2, 3, 5, 1), ValueError, "smaller than the 2x2"),
        ([[1.0]], TypeError, "curve_maps: expected a torch.Tensor"),
    ],
)
def test_bad_input_raises(x, exc, msg):
    with pytest.raises(exc, match=msg):
        tv_op.tv_loss(x)


def test_cpp_kernel_checks_its_input():
    with pytest.raises(RuntimeError, match="at least 2x2 pixels"):
        torch.ops.lowlight_fast.tv_loss(torch.rand(1, 3, 1, 4))
    with pytest.raises(RuntimeError, match="at least 2x2 pixels"):
        torch.ops.lowlight_fast.tv_loss_with_grad(torch.rand(1, 3, 4, 1), 1.0)
    with pytest.raises(RuntimeError, match="grad must hold one value"):
        torch.ops.lowlight_fast.tv_loss_backward(torch.rand(2), torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_fixture(backend):
    arrays = parity.load("zerodce")
    want = parity.expected()["zerodce"]["tv"]
    r = arrays["r"].clone().requires_grad_()
    with use_backend(backend):
        tv = ref.ZERODCE_TV_WEIGHT * tv_op.tv_loss(r)
    g, = torch.autograd.grad(tv, r)
    assert tv.item() == pytest.approx(want, rel=1e-5)
    # r enters the total loss only through the TV term
    torch.testing.assert_close(g, arrays["grad_total_wrt_r"], rtol=1e-4, atol=1e-7)
