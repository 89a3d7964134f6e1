"""SCI's losses in plain PyTorch, written from the paper and the behaviour of SCI's code.

This is what the fused ``smooth_loss`` op is tested against. It materialises every intermediate
map, like the original, and is slow on large images.

Dtypes: the original casts the converted image to float32 (``.float()``); here the conversion runs in
float32 for float16/bfloat16/float32 input and in float64 for float64 input (so that float64
gradcheck is meaningful). The loss is therefore float32, or float64 for float64 input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# rgb2yCbCr of SCI: rows of 3 values times M, plus the bias.
YCBCR_MATRIX = ((0.257, -0.148, 0.439), (0.564, -0.291, -0.368), (0.098, 0.439, -0.071))
YCBCR_BIAS = (16.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0)

# The 12 unique (dy, dx) offsets; the original's 24 terms are these, each counted twice.
OFFSETS = ((1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (2, -1), (1, 2), (1, -2), (2, 2), (2, -2))

YCBCR_MODES = ("faithful", "per_pixel")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rgb_to_ycbcr(x: torch.Tensor, faithful: bool = True) -> torch.Tensor:
    """SCI's ``rgb2yCbCr`` of a (B, 3, H, W) tensor.

    ``faithful=True`` reproduces the original exactly: the NCHW memory is read as rows of 3
    consecutive elements (so neighbours along W are mixed, not channels); element e of the result is
    ``sum_i flat[3*(e//3) + i] * M[i][e % 3] + bias[e % 3]``. ``faithful=False`` converts each pixel's
    (R, G, B) to (Y, Cb, Cr) with the same matrix and bias.
    """
    dt = _compute_dtype(x)
    m = torch.tensor(YCBCR_MATRIX, dtype=dt, device=x.device)
    bias = torch.tensor(YCBCR_BIAS, dtype=dt, device=x.device)
    if faithful:
        flat = x.contiguous().view(-1, 3).to(dt)
        return (flat.mm(m) + bias).view(x.shape[0], 3, x.shape[2], x.shape[3])
    pix = x.to(dt).permute(0, 2, 3, 1)  # B, H, W, 3
    return (pix.matmul(m) + bias).permute(0, 3, 1, 2)


def _shift_pair(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t at p + (dy, dx), t at p) over the valid region of p."""
    h, w = t.shape[-2:]
    x0, x1 = max(0, -dx), w - max(0, dx)
    q = t[:, :, dy:h, x0 + dx : x1 + dx]
    p = t[:, :, 0 : h - dy, x0:x1]
    return q, p


def smooth_loss(
    input: torch.Tensor, output: torch.Tensor, sigma: float = 10.0, ycbcr: str = "faithful"
) -> torch.Tensor:
    """SCI's ``SmoothLoss().forward(input, output)``: edge-aware smoothness of ``output`` (illumination)
    with weights from ``input`` (the image) in YCbCr.

    For each of the 12 offsets (counted twice), ``w = exp(-sum_c dY_c^2 / (2 sigma^2))`` times
    ``sum_c |d output_c|``, averaged over its own valid region; the loss is the sum of the 24 means.
    """
    if ycbcr not in YCBCR_MODES:
        raise ValueError(f"ycbcr: expected one of {YCBCR_MODES}, got {ycbcr!r}")
    y = rgb_to_ycbcr(input, faithful=(ycbcr == "faithful"))
    sigma_color = -1.0 / (2.0 * sigma * sigma)
    total = None
    for dy, dx in OFFSETS:
        yq, yp = _shift_pair(y, dy, dx)
        oq, op = _shift_pair(output, dy, dx)
        wgt = torch.exp(torch.sum(torch.pow(yq - yp, 2), dim=1, keepdim=True) * sigma_color)
        grad = wgt * torch.norm(oq - op, p=1, dim=1, keepdim=True)
        term = 2.0 * torch.mean(grad)  # the pair and its mirror give identical means
        total = term if total is None else total + term
    return total


def sci_loss(input: torch.Tensor, illu: torch.Tensor, sigma: float = 10.0, ycbcr: str = "faithful") -> torch.Tensor:
    """SCI's ``LossFunction().forward(input, illu)``: 1.5 * MSE(illu, input) + SmoothLoss(input, illu)."""
    return 1.5 * F.mse_loss(illu, input) + smooth_loss(input, illu, sigma=sigma, ycbcr=ycbcr)
