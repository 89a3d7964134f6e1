"""accelerate() on stand-ins for the authors' classes (same class names, attribute names and forward
semantics, written here from the papers' formulas): same outputs, the fused ops do the work, weights untouched."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowlight_fast
from lowlight_fast import accelerate
from lowlight_fast.ops import le_curve as le_curve_ops
from lowlight_fast.reference import sci_losses, zerodce_losses


# ------------------------------------------------------------------ stand-ins with the original names
class enhance_net_nopool(nn.Module):  # noqa: N801  Zero-DCE
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.e_conv1 = nn.Conv2d(3, 32, 3, 1, 1)
        self.e_conv2 = nn.Conv2d(32, 32, 3, 1, 1)
        self.e_conv3 = nn.Conv2d(32, 32, 3, 1, 1)
        self.e_conv4 = nn.Conv2d(32, 32, 3, 1, 1)
        self.e_conv5 = nn.Conv2d(64, 32, 3, 1, 1)
        self.e_conv6 = nn.Conv2d(64, 32, 3, 1, 1)
        self.e_conv7 = nn.Conv2d(64, 24, 3, 1, 1)

    def forward(self, x):
        x1 = self.relu(self.e_conv1(x))
        x2 = self.relu(self.e_conv2(x1))
        x3 = self.relu(self.e_conv3(x2))
        x4 = self.relu(self.e_conv4(x3))
        x5 = self.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        rs = torch.split(r, 3, dim=1)
        out4 = None
        for k, rk in enumerate(rs):
            x = x + rk * (torch.pow(x, 2) - x)
            if k == 3:
                out4 = x
        return out4, x, r


class CSDN_Tem(nn.Module):  # noqa: N801
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.depth_conv = nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch)
        self.point_conv = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x):
        return self.point_conv(self.depth_conv(x))


class enhance_net_nopool_pp(nn.Module):  # Zero-DCE++ (renamed below to the original name)
    def __init__(self, scale_factor):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.scale_factor = scale_factor
        self.upsample = nn.UpsamplingBilinear2d(scale_factor=scale_factor)
        chans = [(3, 32), (32, 32), (32, 32), (32, 32), (64, 32), (64, 32), (64, 3)]
        for i, (a, b) in enumerate(chans, 1):
            setattr(self, f"e_conv{i}", CSDN_Tem(a, b))

    def forward(self, x):
        x_down = x if self.scale_factor == 1 else F.interpolate(x, scale_factor=1 / self.scale_factor, mode="bilinear")
        x1 = self.relu(self.e_conv1(x_down))
        x2 = self.relu(self.e_conv2(x1))
        x3 = self.relu(self.e_conv3(x2))
        x4 = self.relu(self.e_conv4(x3))
        x5 = self.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        x_r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        if self.scale_factor != 1:
            x_r = self.upsample(x_r)
        for _ in range(8):
            x = x + x_r * (torch.pow(x, 2) - x)
        return x, x_r


enhance_net_nopool_pp.__name__ = "enhance_net_nopool"


class L_exp(nn.Module):  # noqa: N801
    def __init__(self, patch_size, mean_val):
        super().__init__()
        self.pool = nn.AvgPool2d(patch_size)
        self.mean_val = mean_val

    def forward(self, x):
        return zerodce_losses.exposure(x, self.pool.kernel_size, self.mean_val)


class L_spa(nn.Module):  # noqa: N801
    def forward(self, org, enhance):
        return zerodce_losses.spatial_consistency(org, enhance)


class SmoothLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.sigma = 10

    def forward(self, input, output):
        return sci_losses.smooth_loss(input, output, sigma=self.sigma)


class LossFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.l2_loss = nn.MSELoss()
        self.smooth_loss = SmoothLoss()

    def forward(self, input, illu):
        return 1.5 * self.l2_loss(illu, input) + self.smooth_loss(input, illu)


class Trainer(nn.Module):
    """A user's wrapper holding the originals: accelerate() finds them inside."""

    def __init__(self):
        super().__init__()
        self.net = enhance_net_nopool()
        self.exp = L_exp(16, 0.6)
        self.spa = L_spa()


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


# ------------------------------------------------------------------ tests
def test_zerodce_instance_switched_in_place(monkeypatch):
    net = enhance_net_nopool()
    x = torch.rand(2, 3, 23, 31)
    before = [t.clone() for t in net(x)]
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    calls = _count_calls(monkeypatch, le_curve_ops, "le_curve")
    assert accelerate(net) is net
    after = net(x)
    assert calls == ["le_curve"]
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    after[1].sum().backward()  # gradients still reach the user's weights
    assert net.e_conv1.weight.grad is not None


@pytest.mark.parametrize("scale", [1, 4])
def test_zerodcepp_instance_switched(monkeypatch, scale):
    net = enhance_net_nopool_pp(scale)
    x = torch.rand(1, 3, 32, 48)
    before = net(x)
    calls = _count_calls(monkeypatch, le_curve_ops, "le_curve_shared")
    accelerate(net)
    after = net(x)
    assert calls == ["le_curve_shared"]
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_losses_inside_a_wrapper_are_switched(monkeypatch):
    trainer = Trainer()
    x, low = torch.rand(2, 3, 40, 36), torch.rand(2, 3, 40, 36) * 0.3
    exp_before, spa_before = trainer.exp(x), trainer.spa(x, low)
    accelerate(trainer)
    assert type(trainer.exp.forward.__self__).__module__ == "lowlight_fast.losses"
    torch.testing.assert_close(trainer.exp(x), exp_before, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trainer.spa(x, low), spa_before, rtol=1e-5, atol=1e-7)


def test_sci_loss_function_switched_to_the_fused_op(monkeypatch):
    crit = LossFunction()
    x = torch.rand(1, 3, 21, 30)
    illu = (x + 0.1 * torch.rand_like(x)).clamp(1e-4, 1)
    before = crit(x, illu)
    calls = _count_calls(monkeypatch, lowlight_fast.losses, "_smooth_loss")
    accelerate(crit)
    after = crit(x, illu)
    assert calls  # the fused smooth_loss op computed it
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_unrecognised_module_is_left_alone_with_a_warning():
    lin = nn.Linear(3, 3)
    fwd = lin.forward
    with pytest.warns(RuntimeWarning, match="nothing recognised in Linear"):
        assert accelerate(lin) is lin
    assert lin.forward == fwd


def test_accelerate_rejects_non_modules():
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        accelerate("model.pth")
