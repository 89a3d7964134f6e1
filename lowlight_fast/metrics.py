"""Image-quality metrics as low-light enhancement papers compute them, in torch.

Every function takes (B, C, H, W) tensors of **8-bit levels** (floats in [0, 255]; :func:`to_levels`
turns [0, 1] images into them, rounding as an 8-bit output of ``lowlight-fast enhance`` is rounded)
on any device, and returns one value per image, a (B,) float64 tensor. The arithmetic is float64,
as scikit-image's; the tests hold PSNR and SSIM to scikit-image's values within 1e-4.

Full-reference (``pred`` against the reference ``gt``):

- :func:`psnr`: ``10 log10(255^2 / MSE)`` over all pixels and channels (``skimage.metrics.
  peak_signal_noise_ratio(gt, pred, data_range=255)``); ``inf`` for identical images.
- :func:`ssim`: Wang et al. (2004) with an 11 x 11 Gaussian window of sigma 1.5 (the 1-D kernel
  ``exp(-k^2 / 2 sigma^2)``, k = -5..5, normalised: scipy's ``gaussian_filter`` with ``truncate=3.5``,
  MATLAB's ``fspecial('gaussian', 11, 1.5)``, OpenCV's ``getGaussianKernel(11, 1.5)``), population
  covariances, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255, the map averaged over the *valid*
  region (pixels at least 5 from the border, where the window lies inside the image), each channel
  separately and then the channels averaged. This is ``skimage.metrics.structural_similarity(gt, pred,
  data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
  (scikit-image filters the whole image and then crops 5 pixels off each side: the same region) and
  the ``calculate_ssim`` of BasicSR and of the low-light codebases built on it (Retinexformer, ...:
  OpenCV ``filter2D`` then ``[5:-5, 5:-5]``). Images must be at least 11 x 11.
- The luma variant (MATLAB style, :func:`rgb_to_y`): the same SSIM (and PSNR) on the Y channel of
  MATLAB's ``rgb2ycbcr`` (BT.601, studio range: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  on 8-bit levels), kept in floating point as BasicSR's ``test_y_channel`` does (MATLAB's
  ``rgb2ycbcr`` on uint8 images rounds Y to integers; we do not). On one channel this is Wang's
  ``ssim_index.m`` ('valid' filtering with the same window and constants); it is *not* his later
  ``ssim.m``, which first downsamples by ``round(min(H, W) / 256)``, nor MATLAB's built-in ``ssim``,
  which pads ('replicate') and averages over the whole image.
- :func:`gt_mean_scale`: the "GT-mean" protocol (KinD, LLFlow, Retinexformer's ``--GT_mean``): the
  prediction multiplied by ``mean(grey(gt)) / mean(grey(pred))`` and clipped to [0, 255] before PSNR
  and SSIM, so that only the overall brightness is taken from the reference. Grey is
  ``0.299 R + 0.587 G + 0.114 B`` (OpenCV's RGB2GRAY, BT.601); Retinexformer's script applies
  ``COLOR_BGR2GRAY`` to RGB arrays, i.e. ``0.114 R + 0.587 G + 0.299 B``: ``weights=GREY_SWAPPED``
  reproduces that. Retinexformer computes its PSNR on the scaled image as it is and its SSIM on the
  scaled image rounded to 8 bits (``img_as_ubyte``, halves to even); :func:`round_levels` is that rounding.

No-reference (one image):

- :func:`brightness`: the mean 8-bit level over all pixels and channels.
- :func:`exposure_spread`: the standard deviation of the BT.601 luma (0.299 R + 0.587 G + 0.114 B).
- :func:`colour_cast`: the grey-world deviation, the RMS difference of the three channel means from
  their mean, divided by that mean (0 when the image averages to grey; a scene may legitimately not).
- :func:`noise_sigma`: Immerkaer's fast noise estimate (J. Immerkaer, "Fast Noise Variance
  Estimation", Computer Vision and Image Understanding 64(2), 300-302, 1996) on the luma:
  ``sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |I * N|`` with the Laplacian-difference mask
  N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] ('valid' convolution), in 8-bit levels. Image structure
  (edges, texture) adds to it: compare images of one scene.
- :func:`clipped_fraction`: the fraction of pixels with a channel at 255 (blown highlights).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lowlight_fast import _validate

__all__ = ["GREY_BT601", "GREY_SWAPPED", "PEAK", "brightness", "clipped_fraction", "colour_cast",
           "exposure_spread", "gaussian_window", "grey", "gt_mean_scale", "noise_sigma", "psnr",
           "rgb_to_y", "round_levels", "ssim", "to_levels"]

PEAK = 255.0
GREY_BT601 = (0.299, 0.587, 0.114)    # OpenCV RGB2GRAY, BT.601 luma weights on R, G, B
GREY_SWAPPED = (0.114, 0.587, 0.299)  # OpenCV BGR2GRAY applied to an RGB array (Retinexformer's GT-mean)
YCBCR_Y = (65.481, 128.553, 24.966)   # MATLAB rgb2ycbcr, Y row, for R, G, B in [0, 1]; + 16
SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_TRUNCATE = 0.01, 0.03, 1.5, 3.5
IMMERKAER_MASK = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))


def _check(x: torch.Tensor, name: str, min_size: int = 1, channels: int | None = None) -> None:
    _validate.check_image(x, name, channels=channels, min_size=min_size)


def _check_pair(pred: torch.Tensor, gt: torch.Tensor, min_size: int = 1) -> None:
    _check(pred, "pred", min_size)
    _check(gt, "gt", min_size)
    _validate.check_same_shape(pred=pred, gt=gt)
    _validate.check_same_device(pred=pred, gt=gt)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] samples -> 8-bit levels as float64: ``floor(clamp(x, 0, 1) * 255 + 0.5)`` in float32, the
    rounding of :func:`lowlight_fast.io.quantize` (so an enhanced image is measured as ``enhance``
    would write it as 8 bits, and a 16-bit image as its 8-bit version)."""
    q = torch.floor(x.float().clamp(0.0, 1.0) * PEAK + 0.5)
    return q.double()


def round_levels(x: torch.Tensor) -> torch.Tensor:
    """Levels rounded to integers, halves to even (scikit-image's ``img_as_ubyte``), clamped to [0, 255]."""
    return torch.round(x.double()).clamp(0.0, PEAK)


def grey(x: torch.Tensor, weights: tuple[float, float, float] = GREY_BT601) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W): ``w0 R + w1 G + w2 B``; a 1-channel image is returned as it is."""
    if x.shape[1] == 1:
        return x.double()
    _check(x, "x", channels=3)
    w = torch.tensor(weights, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (x.double() * w).sum(dim=1, keepdim=True)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) levels -> (B, 1, H, W): the Y of MATLAB's ``rgb2ycbcr`` (BT.601 studio range,
    16..235), ``16 + (65.481 R + 128.553 G + 24.966 B) / 255``, not rounded."""
    return 16.0 + grey(x, YCBCR_Y) / PEAK


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = PEAK) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range^2 / MSE)``, the MSE over all
    channels and pixels; ``inf`` where the images are identical."""
    _check_pair(pred, gt)
    mse = (pred.double() - gt.double()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (11 taps for sigma 1.5),
    as scipy.ndimage builds it; the 2-D window is its outer product."""
    radius = int(truncate * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of every channel of (B, C, H, W) with the 1-D ``window``."""
    c = x.shape[1]
    n = window.numel()
    x = F.conv2d(x, window.view(1, 1, n, 1).expand(c, 1, n, 1), groups=c)
    return F.conv2d(x, window.view(1, 1, 1, n).expand(c, 1, 1, n), groups=c)


def ssim(pred: torch.Tensor, gt: torch.Tensor, data_range: float = PEAK, sigma: float = SSIM_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Mean SSIM per image (Gaussian window, valid region, channels averaged; see the module's doc)."""
    window = gaussian_window(sigma, device=pred.device)
    _check_pair(pred, gt, min_size=window.numel())
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    per_channel = []
    for ch in range(pred.shape[1]):  # one channel at a time: five float64 maps of one channel at a time
        x = pred[:, ch:ch + 1].double()
        y = gt[:, ch:ch + 1].double()
        m = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
        ux, uy, uxx, uyy, uxy = m.unbind(dim=1)
        vx = uxx - ux * ux
        vy = uyy - uy * uy
        vxy = uxy - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        per_channel.append(s.flatten(1).mean(dim=1))
    return torch.stack(per_channel, dim=1).mean(dim=1)


def gt_mean_scale(pred: torch.Tensor, gt: torch.Tensor,
                  weights: tuple[float, float, float] = GREY_BT601) -> torch.Tensor:
    """``pred`` scaled to the mean grey level of ``gt`` and clipped to [0, 255] (not rounded): the
    GT-mean protocol. A black ``pred`` (mean 0) is returned as it is."""
    _check_pair(pred, gt)
    m_pred = grey(pred, weights).flatten(1).mean(dim=1)
    m_gt = grey(gt, weights).flatten(1).mean(dim=1)
    scale = torch.where(m_pred > 0, m_gt / m_pred.clamp_min(1e-300), torch.ones_like(m_pred))
    return (pred.double() * scale.view(-1, 1, 1, 1)).clamp(0.0, PEAK)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Mean level over all pixels and channels."""
    _check(x, "x")
    return x.double().flatten(1).mean(dim=1)


def exposure_spread(x: torch.Tensor) -> torch.Tensor:
    """Standard deviation (population) of the BT.601 luma, in levels."""
    _check(x, "x")
    return grey(x).flatten(1).std(dim=1, correction=0)


def colour_cast(x: torch.Tensor) -> torch.Tensor:
    """Grey-world deviation: RMS of (channel mean - mean of the channel means), over that mean; 0 for
    a black or a 1-channel image."""
    _check(x, "x")
    means = x.double().mean(dim=(2, 3))
    m = means.mean(dim=1)
    rms = (means - m[:, None]).square().mean(dim=1).sqrt()
    return torch.where(m > 0, rms / m.clamp_min(1e-300), torch.zeros_like(m))


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Immerkaer's (1996) noise standard deviation of the luma, in levels (images at least 3 x 3)."""
    _check(x, "x", min_size=3)
    y = grey(x)
    mask = torch.tensor(IMMERKAER_MASK, dtype=torch.float64, device=x.device).view(1, 1, 3, 3)
    r = F.conv2d(y, mask).abs().flatten(1).sum(dim=1)
    h, w = x.shape[-2:]
    return math.sqrt(math.pi / 2.0) * r / (6.0 * (w - 2) * (h - 2))


def clipped_fraction(x: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels with at least one channel at the peak (255)."""
    _check(x, "x")
    return (x >= PEAK).any(dim=1).double().flatten(1).mean(dim=1)
