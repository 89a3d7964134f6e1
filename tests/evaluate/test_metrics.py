"""lowlight_fast.metrics against scikit-image (PSNR, SSIM) and against the metrics' definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowlight_fast import metrics as M

skm = pytest.importorskip("skimage.metrics")

SSIM_KW = dict(data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _t(a: np.ndarray, device="cpu") -> torch.Tensor:
    """H x W x C array -> (1, C, H, W) float64 tensor."""
    a = a if a.ndim == 3 else a[..., None]
    return torch.from_numpy(np.ascontiguousarray(a.astype(np.float64).transpose(2, 0, 1)))[None].to(device)


def _random_pair(rng, h, w, c=3, noise=25.0):
    gt = rng.integers(0, 256, (h, w, c)).astype(np.uint8)
    pred = np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255).astype(np.uint8)
    return pred, gt


def _structured_pair(rng, h, w):
    """A smooth scene with edges (gradients, a disc, stripes) and a darkened, noised, shifted version."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    disc = ((y - h / 2) ** 2 + (x - w / 3) ** 2 < (min(h, w) / 4) ** 2) * 90.0
    stripes = (np.sin(x / 2.5) > 0) * 40.0
    gt = np.stack([60 + 120 * x / w + disc, 30 + 150 * y / h + stripes, 200 - 100 * x / w + 0.5 * disc], axis=2)
    gt = np.clip(gt, 0, 255).astype(np.uint8)
    pred = 0.55 * np.roll(gt.astype(np.float64), 1, axis=1) ** 1.02 + rng.normal(0, 6, gt.shape)
    return np.clip(np.rint(pred), 0, 255).astype(np.uint8), gt


@pytest.mark.parametrize("h,w", [(11, 11), (17, 13), (37, 53), (64, 41)])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_psnr_ssim_match_skimage(device, kind, h, w):
    rng = np.random.default_rng(h * 100 + w)
    pred, gt = _random_pair(rng, h, w) if kind == "random" else _structured_pair(rng, h, w)
    got_p = M.psnr(_t(pred, device), _t(gt, device)).item()
    got_s = M.ssim(_t(pred, device), _t(gt, device)).item()
    assert got_p == pytest.approx(skm.peak_signal_noise_ratio(gt, pred, data_range=255), abs=1e-4)
    assert got_s == pytest.approx(skm.structural_similarity(gt, pred, **SSIM_KW), abs=1e-4)


def test_batched_equals_one_by_one(device):
    rng = np.random.default_rng(5)
    pairs = [_structured_pair(rng, 23, 31) for _ in range(3)]
    pred = torch.cat([_t(p, device) for p, _ in pairs])
    gt = torch.cat([_t(g, device) for _, g in pairs])
    assert M.ssim(pred, gt).shape == (3,)
    for i, (p, g) in enumerate(pairs):
        assert M.ssim(pred, gt)[i].item() == pytest.approx(skm.structural_similarity(g, p, **SSIM_KW), abs=1e-4)
        assert M.psnr(pred, gt)[i].item() == pytest.approx(skm.peak_signal_noise_ratio(g, p, data_range=255),
                                                           abs=1e-4)


def test_single_channel_and_y_variant():
    """The luma variant: SSIM of one channel is skimage's 2-D SSIM (Wang's ssim_index: valid region) of
    MATLAB's rgb2ycbcr Y, computed here independently in numpy."""
    rng = np.random.default_rng(7)
    pred, gt = _structured_pair(rng, 29, 35)

    def y_np(a):
        a = a.astype(np.float64) / 255.0
        return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]

    py, gy = M.rgb_to_y(_t(pred)), M.rgb_to_y(_t(gt))
    np.testing.assert_allclose(py[0, 0].numpy(), y_np(pred), atol=1e-9)
    expected = skm.structural_similarity(y_np(gt), y_np(pred), data_range=255, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
    assert M.ssim(py, gy).item() == pytest.approx(expected, abs=1e-4)
    assert M.psnr(py, gy).item() == pytest.approx(skm.peak_signal_noise_ratio(y_np(gt), y_np(pred), data_range=255),
                                                  abs=1e-4)


def test_gt_mean_as_retinexformer_computes_it():
    """GT-mean: scale by the ratio of grey means, clip; PSNR on the scaled image, SSIM on it rounded
    (img_as_ubyte). Both grey conventions, checked against numpy."""
    from skimage import img_as_ubyte

    rng = np.random.default_rng(11)
    pred, gt = _structured_pair(rng, 40, 48)
    for weights in (M.GREY_BT601, M.GREY_SWAPPED):
        w = np.array(weights)
        p01, g01 = pred / 255.0, gt / 255.0
        restored = np.clip(p01 * ((g01 @ w).mean() / (p01 @ w).mean()), 0, 1)
        exp_psnr = 10 * math.log10(1 / np.mean((g01 - restored) ** 2))
        exp_ssim = skm.structural_similarity(img_as_ubyte(g01), img_as_ubyte(restored), **SSIM_KW)
        scaled = M.gt_mean_scale(_t(pred), _t(gt), weights)
        assert M.psnr(scaled, _t(gt)).item() == pytest.approx(exp_psnr, abs=1e-4)
        assert M.ssim(M.round_levels(scaled), _t(gt)).item() == pytest.approx(exp_ssim, abs=1e-4)
    # a uniformly darker copy is (almost) perfect after the scaling
    dark = np.rint(gt * 0.4)
    assert M.psnr(M.gt_mean_scale(_t(dark), _t(gt)), _t(gt)).item() > M.psnr(_t(dark), _t(gt)).item() + 10


def test_identical_images():
    a = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert math.isinf(M.psnr(_t(a), _t(a)).item())
    assert M.ssim(_t(a), _t(a)).item() == pytest.approx(1.0)


def test_to_levels_rounds_like_enhance_writes():
    from lowlight_fast.io import quantize

    x = torch.rand(1, 3, 9, 7)
    x[0, 0, 0, :3] = torch.tensor([0.5 / 255, 1.5 / 255, 1.0])
    levels = M.to_levels(x)
    np.testing.assert_array_equal(levels[0].numpy().transpose(1, 2, 0), quantize(x[0].numpy().transpose(1, 2, 0), 8))


def test_no_reference_figures(device):
    rng = np.random.default_rng(3)
    flat = np.full((64, 80, 3), 100.0)
    noisy = flat + rng.normal(0, 6.0, (64, 80, 1))  # grey noise, sigma 6 on every channel
    # Immerkaer's estimate recovers the noise sigma of a flat image
    assert M.noise_sigma(_t(noisy, device)).item() == pytest.approx(6.0, rel=0.08)
    assert M.noise_sigma(_t(flat, device)).item() == 0.0
    tinted = flat * np.array([1.3, 1.0, 0.7])
    assert M.colour_cast(_t(flat, device)).item() == 0.0
    means = np.array([130.0, 100.0, 70.0])
    assert M.colour_cast(_t(tinted, device)).item() == pytest.approx(np.sqrt(np.mean((means - 100) ** 2)) / 100)
    img = rng.integers(0, 256, (21, 19, 3)).astype(np.float64)
    luma = img @ np.array([0.299, 0.587, 0.114])
    assert M.brightness(_t(img, device)).item() == pytest.approx(img.mean())
    assert M.exposure_spread(_t(img, device)).item() == pytest.approx(luma.std())
    img[0, 0, 1] = 255.0
    assert M.clipped_fraction(_t(img, device)).item() == pytest.approx(np.mean((img >= 255).any(axis=2)))


def test_bad_inputs():
    a = torch.zeros(1, 3, 20, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(a, torch.zeros(1, 3, 20, 21, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        M.ssim(a[..., :10, :], a[..., :10, :])
    with pytest.raises(ValueError, match="4-D"):
        M.brightness(a[0])
