"""The Zero-DCE / Zero-DCE++ loss modules: original names and call signatures, shapes, values against the
reference and the parity fixtures, the combined losses, input checks."""
import pytest
import torch

from lowlight_fast import losses
from lowlight_fast.reference import zerodce_losses as ref
from tests import parity


def _image(*shape, device="cpu", dtype=torch.float64):
    return torch.rand(*shape, device=device, dtype=dtype)


def test_original_and_descriptive_names_are_the_same_classes():
    assert losses.L_color is losses.ColorConstancyLoss
    assert losses.L_spa is losses.SpatialConsistencyLoss
    assert losses.L_exp is losses.ExposureLoss
    assert losses.L_TV is losses.IlluminationSmoothnessLoss
    assert losses.Sa_Loss is losses.SaturationLoss
    assert issubclass(losses.ZeroDCEPPLoss, losses.ZeroDCELoss)


def test_l_color(device):
    x = _image(3, 3, 11, 7, device=device)
    got = losses.L_color()(x)
    assert got.shape == (3, 1, 1, 1)
    torch.testing.assert_close(got, ref.color_constancy(x))


def test_l_spa_argument_order_and_shape(device):
    org, enhance = _image(2, 3, 13, 18, device=device), _image(2, 3, 13, 18, device=device)
    got = losses.L_spa()(org, enhance)
    assert got.shape == (2, 1, 3, 4)
    torch.testing.assert_close(got, ref.spatial_consistency(org, enhance))
    torch.testing.assert_close(losses.L_spa()(enhance, org), ref.spatial_consistency(enhance, org))


def test_l_exp_both_forms(device):
    x = _image(2, 3, 35, 20, device=device)
    zerodce = losses.L_exp(16, 0.6)(x)
    zerodcepp = losses.L_exp(16)(x, 0.6)
    assert zerodce.shape == ()
    torch.testing.assert_close(zerodce, ref.exposure(x, 16, 0.6))
    torch.testing.assert_close(zerodcepp, zerodce)
    torch.testing.assert_close(losses.L_exp(8, 0.5)(x), ref.exposure(x, 8, 0.5))
    with pytest.raises(ValueError, match="mean_val"):
        losses.L_exp(16, None)(x)
    with pytest.raises(ValueError, match=r"x: image of 35x20 pixels is smaller than the 32x32"):
        losses.L_exp(32, 0.6)(x)


def test_l_tv_weight_and_gradient(device):
    a = _image(2, 24, 9, 10, device=device).requires_grad_()
    got = losses.L_TV(TVLoss_weight=3)(a)
    want = ref.illumination_smoothness(a, weight=3)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, a)[0], torch.autograd.grad(want, a)[0])
    torch.testing.assert_close(losses.L_TV()(a), ref.illumination_smoothness(a))


def test_sa_loss_parity():
    arrays = parity.load("zerodce")
    got = losses.Sa_Loss()(arrays["enhance_image"])
    assert got.shape == ()
    assert got.item() == pytest.approx(parity.expected()["zerodce"]["Sa_Loss"], rel=1e-5)


@pytest.mark.parametrize("cls,channels", [(losses.ZeroDCELoss, 24), (losses.ZeroDCEPPLoss, 3)])
def test_combined_loss_fused_equals_reference(cls, channels, device):
    low, enhanced = _image(2, 3, 33, 21, device=device), _image(2, 3, 33, 21, device=device).requires_grad_()
    curves = (torch.randn(2, channels, 33, 21, device=device, dtype=torch.float64) * 0.3).requires_grad_()
    total, terms = cls()(low, enhanced, curves, return_terms=True)
    want_total, want_terms = cls(fused=False)(low, enhanced, curves, return_terms=True)
    assert set(terms) == {"tv", "spa", "col", "exp"}
    assert all(not t.requires_grad for t in terms.values())
    for k in terms:
        torch.testing.assert_close(terms[k], want_terms[k])
    torch.testing.assert_close(total, want_total)
    torch.testing.assert_close(total, ref.zerodce_loss(low, enhanced, curves, cls.tv_weight))
    grads = torch.autograd.grad(total, (enhanced, curves))
    want_grads = torch.autograd.grad(want_total, (enhanced, curves))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)
    plain = cls()(low, enhanced, curves)
    assert plain.shape == () and plain.requires_grad


def test_combined_loss_parity_zerodce():
    arrays = parity.load("zerodce")
    want = parity.expected()["zerodce"]
    enhanced = arrays["enhance_image"].clone().requires_grad_()
    total, terms = losses.ZeroDCELoss()(arrays["input"], enhanced, arrays["r"], return_terms=True)
    assert total.item() == pytest.approx(want["total"], rel=1e-5)
    for k, v in terms.items():
        assert v.item() == pytest.approx(want[k], rel=1e-5)
    torch.testing.assert_close(
        torch.autograd.grad(total, enhanced)[0], arrays["grad_total_wrt_enhance_image"], rtol=1e-4, atol=1e-8
    )
    assert losses.L_spa()(arrays["enhance_image"], arrays["input"]).shape == arrays["L_spa_map"].shape
    torch.testing.assert_close(losses.L_color()(arrays["enhance_image"]), arrays["L_color_map"])


def test_combined_loss_parity_zerodcepp():
    arrays = parity.load("zerodcepp")
    for sf, want in parity.expected()["zerodcepp"].items():
        total = losses.ZeroDCEPPLoss()(arrays["input"], arrays[f"{sf}/enhance_image"], arrays[f"{sf}/x_r"])
        assert total.item() == pytest.approx(want["total"], rel=1e-5), sf


@pytest.mark.parametrize("fused", [True, False])
def test_combined_loss_bad_input(fused):
    loss = losses.ZeroDCELoss(fused=fused)
    low, enhanced, curves = _image(2, 3, 20, 20), _image(2, 3, 20, 20), _image(2, 24, 20, 20)
    with pytest.raises(ValueError, match="low: expected 3 channels"):
        loss(_image(2, 1, 20, 20), enhanced, curves)
    with pytest.raises(ValueError, match="same shape"):
        loss(low, _image(2, 3, 20, 24), curves)
    with pytest.raises(TypeError, match="same dtype"):
        loss(low.float(), enhanced, curves)
    with pytest.raises(ValueError, match="low: image of 12x20 pixels is smaller than the 16x16"):
        loss(_image(2, 3, 12, 20), _image(2, 3, 12, 20), curves)
    with pytest.raises(ValueError, match="same device"):
        loss(low, enhanced, curves.to("meta"))
    with pytest.raises(ValueError, match="curve_maps: empty tensor"):
        loss(low, enhanced, _image(0, 24, 20, 20))


def test_module_bad_input():
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        losses.L_color()(_image(2, 4, 8, 8))
    with pytest.raises(ValueError, match="org: expected a 4-D tensor"):
        losses.L_spa()(_image(2, 3, 8), _image(2, 3, 8, 8))
    with pytest.raises(ValueError, match="enhance: image of 3x8 pixels is smaller than the 4x4"):
        losses.L_spa()(_image(2, 3, 8, 8), _image(2, 3, 3, 8))
    with pytest.raises(ValueError, match="curve_maps: image of 1x8 pixels is smaller than the 2x2"):
        losses.L_TV()(_image(2, 24, 1, 8))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        losses.Sa_Loss()([1.0, 2.0])


def test_combined_losses_run_the_fused_ops_by_default():
    low, enhanced, curves = _image(2, 3, 16, 20), _image(2, 3, 16, 20), _image(2, 3, 16, 20)
    with torch.profiler.profile() as prof:
        losses.ZeroDCEPPLoss()(low, enhanced, curves)
    names = {e.name for e in prof.events()}
    assert {"lowlight_fast::zerodce_pooled", "lowlight_fast::zerodce_pooled_losses", "lowlight_fast::tv_loss"} <= names
