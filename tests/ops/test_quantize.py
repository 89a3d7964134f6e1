"""quantize_hwc (image and video output): the C++ kernel against the plain-PyTorch reference and the
numpy arithmetic of lowlight_fast.io.quantize, on every layout, dtype and the rounding boundaries."""
import numpy as np
import pytest
import torch

from lowlight_fast import _ext, io, use_backend
from lowlight_fast.ops import quantize as q

PEAK = {8: 255.0, 16: 65535.0}


def _cpp():
    if not _ext.has_op("quantize_hwc"):
        pytest.fail("lowlight_fast._C was not built with quantize_hwc")
    return torch.ops.lowlight_fast.quantize_hwc


def _numpy(x: torch.Tensor, bits: int) -> np.ndarray:
    """io.quantize's original numpy arithmetic, on a (B, C, H, W) tensor -> (B, H, W, C)."""
    a = x.detach().float().numpy().transpose(0, 2, 3, 1)
    v = np.floor(np.clip(a.astype(np.float32), 0.0, 1.0) * np.float32(PEAK[bits]) + np.float32(0.5))
    return v.astype(np.uint16 if bits == 16 else np.uint8)


def _boundaries(bits: int) -> torch.Tensor:
    """Values at and a few ulps around every rounding boundary (k + 0.5) / peak, and the ends."""
    k = torch.arange(int(PEAK[bits]), dtype=torch.float64)
    mid = ((k + 0.5) / PEAK[bits]).float()
    vals = [mid]
    for steps in (1, 2, 3):
        up, down = mid.clone(), mid.clone()
        for _ in range(steps):
            up = torch.nextafter(up, torch.tensor(2.0))
            down = torch.nextafter(down, torch.tensor(-1.0))
        vals += [up, down]
    vals.append(torch.tensor([0.0, 1.0, -0.0, -1e-30, 1 + 1e-7, -3.0, 7.0, float("inf"), -float("inf")]))
    return torch.cat(vals)


@pytest.mark.parametrize("bits", [8, 16])
def test_rounding_boundaries_equal_numpy(bits):
    v = _boundaries(bits)
    n = v.numel() // 3 * 3
    x = v[:n].reshape(1, 3, 1, n // 3)
    got = _cpp()(x, bits)
    assert got.dtype == q.DTYPE[bits] and got.shape == (1, 1, n // 3, 3)
    np.testing.assert_array_equal(got.numpy(), _numpy(x, bits))
    np.testing.assert_array_equal(q.reference_quantize_hwc(x, bits).numpy(), _numpy(x, bits))


def _layouts(b, c, h, w, dtype):
    base = torch.rand(b, c, h, w, dtype=torch.float64) * 1.2 - 0.1
    x = base.to(dtype)
    yield "planar", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "hwc view", x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    big = torch.rand(b, c + 1, h + 2, 2 * w + 1, dtype=torch.float64).to(dtype)
    yield "strided", big[:, 1:, 1:-1, ::2]
    yield "flipped channels", x.flip(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 3, 37), (1, 4, 3, 1), (1, 1, 2, 9), (3, 3, 1, 1)])
@pytest.mark.parametrize("bits", [8, 16])
def test_every_layout_matches_reference(dtype, shape, bits):
    for name, x in _layouts(*shape, dtype):
        got = _cpp()(x, bits)
        want = _numpy(x, bits)
        assert got.is_contiguous(), name
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)
        np.testing.assert_array_equal(q.quantize_hwc(x, bits).numpy(), want, err_msg=name)
        np.testing.assert_array_equal(q.reference_quantize_hwc(x, bits).numpy(), want, err_msg=name)


def test_nan_becomes_zero():
    x = torch.rand(1, 3, 2, 4)
    x[0, 1, 1, 2] = float("nan")
    for fn in (_cpp(), q.reference_quantize_hwc):
        got = fn(x, 8)
        assert got[0, 1, 2, 1] == 0
        np.testing.assert_array_equal(got.numpy(), _numpy(x.nan_to_num(0.0), 8))


def test_empty_and_errors():
    assert _cpp()(torch.rand(0, 3, 4, 5), 8).shape == (0, 4, 5, 3)
    assert _cpp()(torch.rand(1, 3, 0, 5), 16).shape == (1, 0, 5, 3)
    with pytest.raises(RuntimeError, match="4-D"):
        _cpp()(torch.rand(3, 4, 5), 8)
    with pytest.raises(RuntimeError, match="bits must be 8 or 16"):
        _cpp()(torch.rand(1, 3, 4, 5), 12)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        _cpp()(torch.zeros(1, 3, 4, 5, dtype=torch.int32), 8)
    with pytest.raises(ValueError, match="bits: expected 8 or 16"):
        q.quantize_hwc(torch.rand(1, 3, 4, 5), 10)
    with pytest.raises(ValueError, match="4-D"):
        q.quantize_hwc(torch.rand(4, 5), 8)
    with pytest.raises(ValueError, match="floating-point"):
        q.quantize_hwc(torch.zeros(1, 3, 4, 5, dtype=torch.uint8), 8)


def test_opcheck_and_compile():
    x = torch.rand(2, 3, 5, 6)
    torch.library.opcheck(torch.ops.lowlight_fast.quantize_hwc, (x, 8),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda t: q.quantize_hwc(t, 16), fullgraph=True)
    np.testing.assert_array_equal(compiled(x).numpy(), _numpy(x, 16))


def test_reference_backend_runs_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(q, "reference_quantize_hwc", lambda x, bits: calls.append(bits) or torch.zeros(0))
    with use_backend("reference"):
        q.quantize_hwc(torch.rand(1, 3, 2, 2), 8)
    assert calls == [8]
    q.quantize_hwc(torch.rand(1, 3, 2, 2), 8)  # the compiled kernel: the reference is not called
    assert calls == [8]


@pytest.mark.parametrize("bits", [8, 16])
def test_io_quantize_uses_the_kernel_with_the_numpy_result(bits, monkeypatch):
    x = torch.rand(1, 3, 6, 11, dtype=torch.float64) * 1.1 - 0.05
    want = _numpy(x, bits)[0]
    hwc = io.tensor_to_hwc(x)  # planar memory seen as H x W x C
    calls = []
    real = q.quantize_hwc
    monkeypatch.setattr(q, "quantize_hwc", lambda t, b: calls.append(b) or real(t, b))
    for arr in (hwc, np.ascontiguousarray(hwc), x[0].float().numpy().transpose(1, 2, 0)):
        got = io.quantize(arr, bits)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert calls == [bits] * 3
    np.testing.assert_array_equal(io.quantize(hwc[::-1], bits), want[::-1])  # negative strides: numpy path
    assert len(calls) == 3


def _dq_numpy(q: np.ndarray) -> np.ndarray:
    """The image readers' arithmetic: (B, H, W, C) -> (B, C, H, W) float32."""
    peak = 65535.0 if q.dtype == np.uint16 else 255.0
    return (q.astype(np.float32) / peak).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 3, 37, 3), (1, 2, 3, 4), (3, 1, 1, 1), (1, 4, 2, 1)])
def test_dequantize_every_layout_matches_numpy(dtype, shape):
    top = 256 if dtype == torch.uint8 else 65536
    samples = torch.randint(0, top, shape, dtype=torch.int32).to(dtype)
    big = torch.randint(0, top, (shape[0], shape[1] + 1, 2 * shape[2] + 1, shape[3] + 2), dtype=torch.int32).to(dtype)
    views = {"contiguous": samples, "strided rows": big[:, 1:, ::2, 1:-1], "flipped": samples.flip(1),
             "planar memory": samples.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)}
    fns = (torch.ops.lowlight_fast.dequantize_hwc, q.dequantize_hwc, q.reference_dequantize_hwc)
    for name, v in views.items():
        want = _dq_numpy(v.numpy())
        for fn in fns:
            got = fn(v)
            assert got.dtype == torch.float32 and got.is_contiguous(), name
            np.testing.assert_array_equal(got.numpy(), want, err_msg=name)


def test_dequantize_inverts_quantize_on_every_level():
    for bits, dtype in ((8, torch.uint8), (16, torch.uint16)):
        levels = torch.arange(int(PEAK[bits]) + 1, dtype=torch.int32).to(dtype)
        n = levels.numel() // 3 * 3
        qs = levels[:n].reshape(1, 1, n // 3, 3)
        np.testing.assert_array_equal(q.quantize_hwc(q.dequantize_hwc(qs), bits).numpy(), qs.numpy())


def test_dequantize_errors():
    op = torch.ops.lowlight_fast.dequantize_hwc
    assert op(torch.zeros(0, 4, 5, 3, dtype=torch.uint8)).shape == (0, 3, 4, 5)
    with pytest.raises(RuntimeError, match="4-D"):
        op(torch.zeros(4, 5, 3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="uint8 or uint16"):
        op(torch.zeros(1, 4, 5, 3, dtype=torch.int16))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        q.dequantize_hwc(torch.zeros(1, 4, 5, 3))
    torch.library.opcheck(op, (torch.randint(0, 255, (2, 3, 4, 3), dtype=torch.uint8),),
                          test_utils=("test_schema", "test_faketensor"))
