"""The drop-in path: the original-named Zero-DCE loss classes called one by one, as the authors' scripts
call them. Each class alone gives the reference's values and gradients and runs the fused ops (checked
with the profiler); called in sequence on the network's output they share one pooled pass and one
backward write, without changing what each call returns or when a backward may run."""
import threading

import pytest
import torch

from lowlight_fast import _ext, losses, use_backend
from lowlight_fast.compat import accelerate
from lowlight_fast.ops import zerodce_losses as ops
from lowlight_fast.reference import zerodce_losses as ref

needs_cpp = pytest.mark.skipif(not _ext.has_op("zerodce_saturation"), reason="needs the compiled CPU ops")


def _image(*shape, dtype=torch.float64, seed=0, device="cpu"):
    return torch.rand(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)).to(device)


def _ops_run(fn) -> list[str]:
    """Names of the lowlight_fast and aten ops that ``fn()`` runs (forward and backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def _script(e, x):
    """The original training script's three pooled terms, one class call each."""
    return (
        torch.mean(losses.L_spa()(e, x))
        + 5 * torch.mean(losses.L_color()(e))
        + 10 * torch.mean(losses.L_exp(16, 0.6)(e))
    )


def _script_reference(e, x):
    return (
        torch.mean(ref.spatial_consistency(e, x))
        + 5 * torch.mean(ref.color_constancy(e))
        + 10 * ref.exposure(e, 16, 0.6)
    )


CASES = {
    "L_color": (lambda e, x: losses.L_color()(e), lambda e, x: ref.color_constancy(e)),
    "L_spa": (lambda e, x: losses.L_spa()(e, x), lambda e, x: ref.spatial_consistency(e, x)),
    "L_spa(low, enhanced)": (lambda e, x: losses.L_spa()(x, e), lambda e, x: ref.spatial_consistency(x, e)),
    "L_exp": (lambda e, x: losses.L_exp(16, 0.6)(e), lambda e, x: ref.exposure(e, 16, 0.6)),
    "L_exp++": (lambda e, x: losses.L_exp(16)(e, 0.6), lambda e, x: ref.exposure(e, 16, 0.6)),
    "L_exp(8)": (lambda e, x: losses.L_exp(8, 0.5)(e), lambda e, x: ref.exposure(e, 8, 0.5)),
    "Sa_Loss": (lambda e, x: losses.Sa_Loss()(e), lambda e, x: ref.saturation(e)),
    "script": (_script, _script_reference),
}


@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (1, 3, 16, 16), (3, 3, 19, 33)], ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "network-output"])
def test_each_class_alone_matches_reference(case, shape, leaf, device):
    ours, want = CASES[case]
    base = _image(*shape, device=device).requires_grad_()
    x = _image(*shape, seed=1, device=device) * 0.3
    e = base if leaf else base * 1.0
    got = ours(e, x)
    expected = want(base, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    g_ours = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(2)).to(device)
    torch.testing.assert_close(
        torch.autograd.grad(got, base, g_ours)[0], torch.autograd.grad(expected, base, g_ours)[0],
        rtol=1e-10, atol=1e-12,
    )


@pytest.mark.parametrize("case", ["L_color", "L_spa", "L_exp", "script"])
def test_triton_backend_matches_reference(case):
    pytest.importorskip("triton")
    ours, want = CASES[case]
    base = _image(2, 3, 16, 20).requires_grad_()
    x = _image(2, 3, 16, 20, seed=1) * 0.3
    with use_backend("triton"):
        got = ours(base * 1.0, x)
        g = torch.autograd.grad(got.sum(), base)[0]
    expected = want(base, x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g, torch.autograd.grad(expected.sum(), base)[0])


@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck_each_class(case):
    ours, _ = CASES[case]
    x = _image(2, 3, 17, 21, seed=1) * 0.3
    e = _image(2, 3, 17, 21).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: ours(e, x), (e,), fast_mode=True)
    # as the network's output (a fresh non-leaf each call: the memo must never serve stale values)
    assert torch.autograd.gradcheck(lambda e: ours(e * 1.0, x), (e,), fast_mode=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_dtypes(dtype, tol):
    x = (_image(2, 3, 33, 40, seed=1) * 0.3).to(dtype)
    base = _image(2, 3, 33, 40).to(dtype).requires_grad_()
    for case, (ours, want) in CASES.items():
        got = ours(base * 1, x)
        expected = want(base.double(), x.double())
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol, msg=case)


@needs_cpp
@pytest.mark.parametrize(
    "case,fused",
    [
        ("L_color", "lowlight_fast::zerodce_pooled_single"),
        ("L_spa", "lowlight_fast::zerodce_pooled"),
        ("L_exp", "lowlight_fast::zerodce_pooled_single"),
        ("Sa_Loss", "lowlight_fast::zerodce_saturation"),
    ],
)
def test_each_class_alone_runs_the_fused_ops(case, fused):
    ours, _ = CASES[case]
    e = _image(2, 3, 32, 40, dtype=torch.float32).requires_grad_()
    x = _image(2, 3, 32, 40, dtype=torch.float32, seed=1)

    def step():
        out = ours(e * 1.0, x)
        out.sum().backward()

    names = _ops_run(step)
    assert fused in names
    # no eager image-sized reference work: no pooling, no channel mean over the image
    assert "aten::avg_pool2d" not in names and "aten::avg_pool2d_backward" not in names
    assert "aten::mean" not in names and "aten::sqrt" not in names


@needs_cpp
def test_the_script_shares_one_pooled_pass_and_one_backward_write():
    e0 = _image(2, 3, 40, 48, dtype=torch.float32).requires_grad_()
    x = _image(2, 3, 40, 48, dtype=torch.float32, seed=1)

    def step():
        _script(e0 * 1.0, x).backward()

    names = _ops_run(step)
    image_reads = [n for n in names if n in ("lowlight_fast::zerodce_pooled", "lowlight_fast::zerodce_pooled_single")]
    assert image_reads == ["lowlight_fast::zerodce_pooled"]
    assert names.count("lowlight_fast::zerodce_pooled_backward") == 1
    e0.grad = None
    step()
    want = torch.autograd.grad(_script_reference(e0, x), e0)[0]
    torch.testing.assert_close(e0.grad, want, rtol=1e-5, atol=1e-8)


@needs_cpp
def test_memo_is_not_used_for_leaves_modified_images_or_other_grad_modes():
    x = _image(2, 3, 32, 32, dtype=torch.float32, seed=1)
    leaf = _image(2, 3, 32, 32, dtype=torch.float32).requires_grad_()

    def count(fn):
        return sum(n.startswith("lowlight_fast::zerodce_pooled") and not n.endswith("backward") for n in _ops_run(fn))

    # a leaf: values can change behind its version counter (x.data writes), so it is read again
    assert count(lambda: (losses.L_spa()(leaf, x), losses.L_color()(leaf))) == 2
    e = leaf * 1.0
    assert count(lambda: (losses.L_spa()(e, x), losses.L_color()(e), losses.L_exp(16, 0.6)(e))) == 1

    def modified():
        e2 = leaf * 1.0
        losses.L_spa()(e2, x)
        e2.mul_(0.5)  # in place: its version counter moves
        got = losses.L_color()(e2)
        torch.testing.assert_close(got, ref.color_constancy(e2.detach()))

    assert count(modified) == 2

    def other_mode():
        e3 = leaf * 1.0
        losses.L_spa()(e3, x)
        with torch.no_grad():
            got = losses.L_color()(e3)
        assert got.grad_fn is None

    assert count(other_mode) == 2


def test_one_loss_may_backward_after_another_as_in_the_original():
    base = _image(2, 3, 24, 28).requires_grad_()
    x = _image(2, 3, 24, 28, seed=1)
    e = base - 0.25  # its backward saves nothing: backward twice through it works in the original
    spa = torch.mean(losses.L_spa()(e, x))
    col = torch.mean(losses.L_color()(e))
    col.backward()
    spa.backward()  # the shared pooled node saves nothing either
    ours = base.grad
    base.grad = None
    e = base - 0.25
    spa, col = torch.mean(ref.spatial_consistency(e, x)), torch.mean(ref.color_constancy(e))
    col.backward()
    spa.backward()
    torch.testing.assert_close(ours, base.grad)


def test_memo_is_per_thread_and_keeps_only_the_last_call():
    x = _image(1, 3, 16, 16, seed=1)
    base = _image(1, 3, 16, 16).requires_grad_()
    e = base * 1.0
    e2 = base * 2.0
    losses.L_spa()(e, e2)
    assert [entry[0]() for entry in ops._memo.entries] == [e, e2]
    losses.L_spa()(e, x)  # x is a leaf: not remembered; e2 belongs to the earlier call
    assert [entry[0]() for entry in ops._memo.entries] == [e]
    seen = []
    t = threading.Thread(target=lambda: seen.append(len(ops._memo.entries)))
    t.start()
    t.join()
    assert seen == [0]
    f = base * 3.0
    losses.L_color()(f)
    assert [entry[0]() for entry in ops._memo.entries] == [f]


def test_under_compile_the_classes_trace_to_the_fused_ops():
    x = _image(2, 3, 32, 36, dtype=torch.float32, seed=1)
    base = _image(2, 3, 32, 36, dtype=torch.float32).requires_grad_()
    compiled = torch.compile(lambda b, x: _script(b * 1.0, x), fullgraph=True, backend="aot_eager")
    got = compiled(base, x)
    torch.testing.assert_close(got, _script_reference(base, x))
    torch.testing.assert_close(
        torch.autograd.grad(got, base)[0], torch.autograd.grad(_script_reference(base, x), base)[0],
        rtol=1e-5, atol=1e-8,
    )


def test_reference_backend_runs_the_reference():
    x = _image(1, 3, 16, 16, dtype=torch.float32, seed=1)
    e = _image(1, 3, 16, 16, dtype=torch.float32).requires_grad_()
    with use_backend("reference"):
        names = _ops_run(lambda: (_script(e * 1.0, x).backward(), losses.Sa_Loss()(e)))
    assert not any(n.startswith("lowlight_fast::") for n in names)


def test_small_images_keep_the_original_behaviour():
    tiny = _image(2, 3, 3, 5)
    torch.testing.assert_close(losses.L_color()(tiny), ref.color_constancy(tiny))
    torch.testing.assert_close(losses.Sa_Loss()(tiny), ref.saturation(tiny))
    with pytest.raises(ValueError, match="org"):
        losses.L_spa()(tiny, tiny)


def test_saturation_gradient_where_a_pixel_equals_the_means():
    x = _image(1, 3, 4, 4)
    x[0, :, 0, 0] = x[0].mean(dim=(1, 2))  # not exact after the change, but close: finite gradients
    x = x.requires_grad_()
    g = torch.autograd.grad(losses.Sa_Loss()(x), x)[0]
    assert torch.isfinite(g).all()
    const = torch.full((1, 3, 4, 4), 0.25, dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(losses.Sa_Loss()(const), const)[0]
    assert torch.equal(g, torch.zeros_like(g)) or not _ext.has_op("zerodce_saturation")


class _OriginalColor(torch.nn.Module):
    """Stands in for the authors' L_color class (same name, no weights)."""

    def forward(self, x):  # pragma: no cover - replaced by accelerate
        raise AssertionError("not accelerated")


_OriginalColor.__name__ = "L_color"


@needs_cpp
def test_accelerate_gives_the_fused_class():
    m = accelerate(_OriginalColor())
    x = _image(2, 3, 20, 24, dtype=torch.float32).requires_grad_()
    names = _ops_run(lambda: m(x * 1.0).sum().backward())
    assert "lowlight_fast::zerodce_pooled_single" in names
    torch.testing.assert_close(m(x), ref.color_constancy(x))


# --- the ops themselves -------------------------------------------------------------------------------


def _pooled_maps(b=2, h=7, w=9, seed=0):
    return _image(b, 1, h, w, seed=seed).requires_grad_(), _image(b, 1, h, w, seed=seed + 1).requires_grad_()


@needs_cpp
@pytest.mark.parametrize("shape", [(3, 1, 37, 5), (3, 1, 200, 300)])
def test_spatial_map_row_window_across_images_and_tasks(shape):
    # 37 x 5: one parallel task spans all three images (the kept rows restart at each image);
    # 3 x 200 x 300: on two threads the second task starts inside the second image. Against autograd of the float64 formula.
    po = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).requires_grad_()
    pe = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).requires_grad_()
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    q = torch.nn.functional.pad(po - pe, (1, 1, 1, 1))
    c = q[:, :, 1:-1, 1:-1]
    want = sum((c - q[:, :, 1 + dy:q.shape[2] - 1 + dy, 1 + dx:q.shape[3] - 1 + dx]) ** 2
               for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)))
    w_o, w_e = torch.autograd.grad(want, (po, pe), g)
    lf = torch.ops.lowlight_fast
    got = lf.zerodce_spatial_map(po.detach(), pe.detach())
    g_o, g_e = lf.zerodce_spatial_map_backward(g, po.detach(), pe.detach())
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_o, w_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_e, w_e, rtol=1e-12, atol=1e-12)


@needs_cpp
def test_term_ops_gradcheck_and_opcheck():
    po, pe = _pooled_maps()
    means = _image(3, 3, seed=4).requires_grad_()
    pooled = _image(2, 1, 9, 10, seed=5).requires_grad_()
    x = _image(2, 3, 11, 13, seed=6).requires_grad_()
    lf = torch.ops.lowlight_fast
    assert torch.autograd.gradcheck(lf.zerodce_spatial_map, (po, pe))
    assert torch.autograd.gradcheck(lambda p: lf.zerodce_exposure(p, 8, 0.4), (pooled,))
    assert torch.autograd.gradcheck(lf.zerodce_color, (means,))
    assert torch.autograd.gradcheck(lambda t: lf.zerodce_saturation(t)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: lf.zerodce_pooled_single(t)[0].square().sum(), (x,))
    assert torch.autograd.gradcheck(lambda t: lf.zerodce_pooled_single(t)[1].square().sum(), (x,))
    for op, args in [
        (lf.zerodce_spatial_map, (po, pe)),
        (lf.zerodce_exposure, (pooled, 8, 0.4)),
        (lf.zerodce_color, (means,)),
        (lf.zerodce_saturation, (x,)),
        (lf.zerodce_pooled_single, (x,)),
    ]:
        torch.library.opcheck(op, args)


@needs_cpp
def test_term_ops_match_the_torch_formulas():
    po, pe = _pooled_maps(3, 6, 11)
    torch.testing.assert_close(
        torch.ops.lowlight_fast.zerodce_spatial_map(po, pe),
        sum((a - b) ** 2 for a, b in zip(ref._neighbour_differences(po), ref._neighbour_differences(pe))),
    )
    means = _image(4, 3, seed=3)
    means[1] = 0.5  # all equal: value 0, gradient 0 (the torch formula's is NaN)
    torch.testing.assert_close(
        torch.ops.lowlight_fast.zerodce_color(means), ref.color_constancy(means.reshape(4, 3, 1, 1))
    )
    m = means.requires_grad_()
    g = torch.autograd.grad(torch.ops.lowlight_fast.zerodce_color(m).sum(), m)[0]
    assert torch.equal(g[1], torch.zeros(3, dtype=g.dtype))


@needs_cpp
def test_term_ops_check_their_input():
    lf = torch.ops.lowlight_fast
    with pytest.raises(RuntimeError, match="zerodce_spatial_map: pooled_enhance"):
        lf.zerodce_spatial_map(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
    with pytest.raises(RuntimeError, match="exp_patch must be a multiple of 4"):
        lf.zerodce_exposure(torch.rand(1, 1, 4, 4), 6, 0.6)
    with pytest.raises(RuntimeError, match="at least 32x32 pixels"):
        lf.zerodce_exposure(torch.rand(1, 1, 4, 4), 32, 0.6)
    with pytest.raises(RuntimeError, match=r"channel_means must be \(B, 3\)"):
        lf.zerodce_color(torch.rand(2, 4))
    with pytest.raises(RuntimeError, match="zerodce_saturation: x must have 3 channels"):
        lf.zerodce_saturation(torch.rand(1, 4, 5, 5))
    with pytest.raises(RuntimeError, match="zerodce_pooled_single: x must be at least 4x4"):
        lf.zerodce_pooled_single(torch.rand(1, 3, 3, 8))
    with pytest.raises(RuntimeError, match="zerodce_saturation: x is empty"):
        lf.zerodce_saturation(torch.rand(0, 3, 5, 5))


# --- SCI: SmoothLoss and LossFunction called alone; the compat modules ------------------------------


@needs_cpp
@pytest.mark.parametrize("name", ["SmoothLoss", "LossFunction"])
def test_sci_losses_alone_run_the_fused_op_and_match_the_reference(name):
    from lowlight_fast.compat.sci import loss as sci_loss
    from lowlight_fast.reference import sci_losses

    inp = _image(2, 3, 13, 17, dtype=torch.float32).requires_grad_()
    illu = _image(2, 3, 13, 17, dtype=torch.float32, seed=1).requires_grad_()
    module = getattr(sci_loss, name)()
    want = (
        sci_losses.smooth_loss(inp, illu)
        if name == "SmoothLoss"
        else sci_losses.sci_loss(inp, illu)
    )
    got = []
    names = _ops_run(lambda: got.append(torch.autograd.grad(module(inp * 1.0, illu * 1.0), (inp, illu))))
    assert any(n.startswith("lowlight_fast::smooth_loss") for n in names)
    torch.testing.assert_close(got[0], torch.autograd.grad(want, (inp, illu)), rtol=1e-4, atol=1e-6)


@needs_cpp
def test_compat_zerodce_model_and_losses_run_fused_ops():
    from lowlight_fast.compat.zerodce import Myloss, model

    net = model.enhance_net_nopool()
    low = _image(2, 3, 32, 32, dtype=torch.float32) * 0.3

    def step():
        _, enhanced, A = net(low)
        loss = (
            200 * Myloss.L_TV()(A)
            + torch.mean(Myloss.L_spa()(enhanced, low))
            + 5 * torch.mean(Myloss.L_color()(enhanced))
            + 10 * torch.mean(Myloss.L_exp(16, 0.6)(enhanced))
        )
        loss.backward()

    names = _ops_run(step)
    for op in ("le_curve", "tv_loss", "zerodce_pooled", "zerodce_spatial_map", "zerodce_color", "zerodce_exposure"):
        assert any(n.startswith(f"lowlight_fast::{op}") for n in names), op
    assert "aten::avg_pool2d" not in names
