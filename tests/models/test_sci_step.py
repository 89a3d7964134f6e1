"""The compat SCI training step (``Network._loss`` + backward + the script's optimiser) against the
original-style step (the criterion summed over the stages of ``forward``'s lists, reference backend):
the same loss, gradients, BatchNorm running statistics and updated weights, in float64 and float32."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowlight_fast import use_backend
from lowlight_fast.compat.sci.model import Network
from lowlight_fast.losses import LossFunction
from lowlight_fast.models import sci


def _original_loss(model, x):
    criterion = LossFunction()
    i_list, _, in_list, _ = model(x)
    return sum(criterion(in_list[k], i_list[k]) for k in range(model.stage))


def _step(model, loss_fn, x, steps=2):
    """The SCI script's step: Adam(3e-4, (0.9, 0.999), wd 3e-4), clip_grad_norm_(5); returns the losses
    and the gradients of the last step."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=3e-4)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, x)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        nn.utils.clip_grad_norm_(model.parameters(), 5)
        opt.step()
        losses.append(loss.detach())
    return losses, grads


def _biases_before_batch_norm(model):
    names = set()
    for prefix, seq in model.named_modules():
        if isinstance(seq, nn.Sequential):
            for k in range(len(seq) - 1):
                if isinstance(seq[k], nn.Conv2d) and isinstance(seq[k + 1], nn.BatchNorm2d):
                    names.add(f"{prefix}.{k}.bias")
    assert names  # the SCI modules have them
    return names


def _pair(dtype, stage=3):
    torch.manual_seed(0)
    ours = Network(stage=stage).to(dtype)
    original = copy.deepcopy(ours)
    original.check_range = False
    return original, ours


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float64, 1e-9, 1e-10), (torch.float32, 1e-4, 1e-3)])
@pytest.mark.parametrize("shape", [(1, 3, 19, 26), (2, 3, 12, 17)])
def test_compat_step_equals_original_style_step(dtype, rtol, atol, shape):
    original, ours = _pair(dtype)
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 0.5
    with use_backend("reference"):
        ref_losses, ref_grads = _step(original, _original_loss, x)
    losses, grads = _step(ours, lambda m, v: m._loss(v), x)
    for a, b in zip(losses, ref_losses):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    scale = max(g.abs().max().item() for g in ref_grads)  # conv biases before a BatchNorm have ~0 grads
    for (name, _), g, r in zip(ours.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")
    for (name, b), r in zip(ours.named_buffers(), original.buffers()):
        torch.testing.assert_close(b, r, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    # the updated weights; a conv bias just before a BatchNorm has a zero gradient in exact arithmetic,
    # which Adam turns from rounding noise into a step of up to lr, so those are left out here
    noise = _biases_before_batch_norm(ours)
    for (name, p), r in zip(ours.named_parameters(), original.parameters()):
        if name not in noise:
            torch.testing.assert_close(p, r, rtol=rtol, atol=atol * 1e-2, msg=lambda m: f"{name}: {m}")


def test_compat_step_equals_original_style_step_with_a_channels_last_input_and_two_stages():
    original, ours = _pair(torch.float64, stage=2)
    x = torch.rand(1, 3, 14, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.5
    with use_backend("reference"):
        ref_losses, ref_grads = _step(original, _original_loss, x, steps=1)
    losses, grads = _step(ours, lambda m, v: m._loss(v), x.contiguous(memory_format=torch.channels_last), steps=1)
    torch.testing.assert_close(losses[0], ref_losses[0])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    for b, r in zip(ours.buffers(), original.buffers()):
        torch.testing.assert_close(b, r)


def test_eval_mode_loss_equals_the_original_and_leaves_the_running_statistics_alone():
    original, ours = _pair(torch.float64)
    original.eval(), ours.eval()
    x = torch.rand(1, 3, 15, 18, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.5
    before = [b.clone() for b in ours.buffers()]
    with use_backend("reference"):
        expected = _original_loss(original, x)
    torch.testing.assert_close(ours._loss(x), expected)
    for b, r in zip(ours.buffers(), before):
        assert torch.equal(b, r)


def test_in_place_activations_keep_the_modules_values():
    """_run equals calling the Sequential (the ReLU / Sigmoid in place only after a conv or a BN), and
    a ReLU after anything else is not applied in place."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Identity(), nn.ReLU(),
                        nn.Conv2d(4, 3, 3, 1, 1), nn.Sigmoid()).double()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    ref = copy.deepcopy(seq)
    y_ref = ref(x)
    y_ref.square().sum().backward()
    g_ref = x.grad.clone()
    x.grad = None
    ident_in = []
    seq[3].register_forward_hook(lambda m, a, out: ident_in.append(a[0].clone()))
    y = sci._run(seq, x)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, g_ref)
    assert torch.equal(ident_in[0], ident_in[0].clamp_min(0))  # the first ReLU ran


def test_compat_step_runs_the_fused_batch_norm_relu_op():
    """Checked, not assumed: every BatchNorm + ReLU of the step runs lowlight_fast::batch_norm_relu_nhwc
    (per stage: the estimator's block and the 7 of the self-calibration, the last stage's without
    gradients), and its backward wherever a gradient flows; ATen's batch norm never runs."""
    from lowlight_fast import _ext

    if not _ext.has_op("batch_norm_relu_nhwc"):
        pytest.fail("lowlight_fast._C was not built with batch_norm_relu_nhwc (scripts/setup.sh builds it)")
    _, ours = _pair(torch.float32)
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(4)) * 0.5
    with torch.profiler.profile() as prof:
        ours._loss(x).backward()
    counts = {}
    for e in prof.events():
        counts[e.name] = counts.get(e.name, 0) + 1
    assert counts.get("lowlight_fast::batch_norm_relu_nhwc") == 3 * 8
    assert counts.get("lowlight_fast::batch_norm_relu_nhwc_backward") == 3 + 2 * 7
    assert not any("native_batch_norm" in name for name in counts)
