"""batch_norm_relu (training-mode BatchNorm + ReLU, channels-last, CPU) against F.batch_norm + F.relu."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowlight_fast import _ext, use_backend
from lowlight_fast.ops import batch_norm_relu as bnr

OP = "batch_norm_relu_nhwc"
# (batch, channels, height, width): SCI's 3 and 16 channels, channel counts that leave the 16-lane
# blocks uneven (1, 5, 17), 1- and 2-pixel images, sizes over one chunk of the sums (65536 elements)
CASES = [(1, 3, 5, 7), (2, 16, 9, 11), (1, 5, 1, 2), (2, 17, 3, 3), (1, 1, 2, 1), (1, 3, 150, 160),
         (2, 16, 40, 61)]


def _op():
    if not _ext.has_op(OP):
        pytest.fail("lowlight_fast._C was not built with batch_norm_relu_nhwc (scripts/setup.sh builds it)")
    return torch.ops.lowlight_fast


def _inputs(case, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = case
    # an offset mean, per-channel scales, weights of both signs: ReLU masks of every density
    x = (torch.randn(n, c, h, w, generator=g, dtype=dtype) * (0.5 + torch.rand(c, 1, 1, generator=g, dtype=dtype))
         + 0.7).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, generator=g, dtype=dtype)
    bias = torch.randn(c, generator=g, dtype=dtype) * 0.5
    grad = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    return x, weight, bias, grad


def _run(fn, x, weight, bias, grad, dtype):
    xs, ws, bs = (t.to(dtype).detach().requires_grad_() for t in (x, weight, bias))
    y = fn(xs, ws, bs)
    return [y, *torch.autograd.grad(y, (xs, ws, bs), grad.to(dtype))]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_float64_reference(case):
    _op()
    x, weight, bias, grad = _inputs(case, torch.float64)
    exact = _run(bnr.reference, x, weight, bias, grad, torch.float64)
    got64 = _run(bnr.batch_norm_relu, x, weight, bias, grad, torch.float64)
    got32 = _run(bnr.batch_norm_relu, x, weight, bias, grad, torch.float32)
    assert got64[0].is_contiguous(memory_format=torch.channels_last)
    for name, a, b, c in zip(["y", "grad_x", "grad_weight", "grad_bias"], got64, got32, exact):
        # grad_x of a 2-value channel is ~0 (its normalised values are +-1 whatever x is): measure it
        # against its typical size, |weight| |grad| / std(x)
        typical = (weight.abs().max() * grad.abs().max() / x.std()).item() if name == "grad_x" else 0.0
        scale = max(c.abs().max().item(), typical)
        assert (a - c).abs().max().item() <= 1e-12 * scale, name
        assert (b.double() - c).abs().max().item() <= 2e-6 * scale, name


def test_gradcheck_float64():
    _op()
    for case in [(2, 3, 4, 5), (1, 17, 3, 2)]:
        x, weight, bias, _ = _inputs(case, torch.float64, seed=1)
        args = tuple(t.detach().requires_grad_() for t in (x, weight, bias))
        assert torch.autograd.gradcheck(lambda a, w, b: bnr.batch_norm_relu(a, w, b), args)


def test_opcheck():
    ops = _op()
    x, weight, bias, grad = _inputs((2, 5, 4, 6), torch.float32)
    torch.library.opcheck(ops.batch_norm_relu_nhwc, (x.requires_grad_(), weight.requires_grad_(), bias, 1e-5))
    y, mean, var = ops.batch_norm_relu_nhwc(x.detach(), weight.detach(), bias, 1e-5)
    torch.library.opcheck(ops.batch_norm_relu_nhwc_backward, (grad, x.detach(), weight.detach(), bias, mean, var, 1e-5))


def test_statistics_are_the_batch_mean_and_biased_variance():
    ops = _op()
    x, weight, bias, _ = _inputs((2, 16, 40, 61), torch.float64)
    _, mean, var = ops.batch_norm_relu_nhwc(x, weight, bias, 1e-5)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-12, atol=1e-13)


def test_statistics_of_a_large_offset_keep_their_precision():
    """Values of 1000 +- 1e-3 (a variance 1e-12 of the squared mean): the shifted sums keep it."""
    ops = _op()
    g = torch.Generator().manual_seed(3)
    x = (1000 + 1e-3 * torch.randn(1, 3, 60, 70, generator=g, dtype=torch.float64)).contiguous(
        memory_format=torch.channels_last)
    _, mean, var = ops.batch_norm_relu_nhwc(x, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-8, atol=0)


def test_any_input_layout_gives_the_same_result():
    _op()
    x, weight, bias, grad = _inputs((2, 5, 7, 9), torch.float32)
    a = _run(bnr.batch_norm_relu, x, weight, bias, grad, torch.float32)
    b = _run(bnr.batch_norm_relu, x.contiguous(), weight, bias, grad.contiguous(memory_format=torch.channels_last),
             torch.float32)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_results_do_not_depend_on_the_thread_count():
    _op()
    x, weight, bias, grad = _inputs((1, 16, 70, 90), torch.float32)  # several chunks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(bnr.batch_norm_relu, x, weight, bias, grad, torch.float32)
        torch.set_num_threads(max(2, threads))
        many = _run(bnr.batch_norm_relu, x, weight, bias, grad, torch.float32)
    finally:
        torch.set_num_threads(threads)
    for p, q in zip(one, many):
        assert torch.equal(p, q)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_module_helper_matches_batchnorm_then_relu(momentum, track):
    """Running statistics, num_batches_tracked (momentum None: a cumulative average) and the output,
    over three training calls and one in eval mode (which runs the module itself)."""
    _op()
    torch.manual_seed(0)
    ours = nn.BatchNorm2d(5, momentum=momentum, track_running_stats=track).double()
    nn.init.normal_(ours.weight, 1.0, 0.3)
    nn.init.normal_(ours.bias, 0.0, 0.3)
    theirs = nn.BatchNorm2d(5, momentum=momentum, track_running_stats=track).double()
    theirs.load_state_dict(ours.state_dict())
    for step in range(3):
        x, *_ = _inputs((2, 5, 6, 7), torch.float64, seed=step)
        torch.testing.assert_close(bnr.batch_norm_relu_module(ours, x), F.relu(theirs(x)), rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    ours.eval()
    theirs.eval()
    x, *_ = _inputs((1, 5, 4, 4), torch.float64, seed=9)
    torch.testing.assert_close(bnr.batch_norm_relu_module(ours, x), F.relu(theirs(x)), rtol=1e-12, atol=1e-12)


def test_reference_backend_runs_the_reference(monkeypatch):
    _op()
    calls = []
    real = torch.ops.lowlight_fast.batch_norm_relu_nhwc
    monkeypatch.setattr(bnr.torch.ops.lowlight_fast, "batch_norm_relu_nhwc",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    x, weight, bias, _ = _inputs((1, 3, 5, 5), torch.float32)
    with use_backend("reference"):
        bnr.batch_norm_relu(x, weight, bias)
    assert calls == []
    bnr.batch_norm_relu(x, weight, bias)
    assert calls == [1]


def test_bad_input_is_named():
    ops = _op()
    x, weight, bias, _ = _inputs((1, 3, 4, 4), torch.float32)
    with pytest.raises(ValueError, match="weight must be"):
        bnr.batch_norm_relu(x, weight[:2], bias)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnr.batch_norm_relu(x[:, :, :1, :1], weight, bias)
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        bnr.batch_norm_relu(x[0], weight, bias)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        ops.batch_norm_relu_nhwc(x.half(), weight.half(), bias.half(), 1e-5)
    with pytest.raises(RuntimeError, match="bias must have x's dtype"):
        ops.batch_norm_relu_nhwc(x, weight, bias.double(), 1e-5)
    with pytest.raises(RuntimeError, match="x is empty"):
        ops.batch_norm_relu_nhwc(x[:0], weight, bias, 1e-5)
    with pytest.raises(RuntimeError, match="grad must have x's shape"):
        ops.batch_norm_relu_nhwc_backward(x[:, :, :2], x, weight, bias, weight, weight.abs(), 1e-5)
