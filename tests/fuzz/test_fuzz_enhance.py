"""Fuzzing the enhance path (hypothesis, bounded): random small images of every Pillow mode and size,
saved in several formats, read by lowlight_fast.io, enhanced by every model through Enhancer and written
back. Nothing may crash; the result has the input's size, is finite and in range, equals what the
reference path gives, and reads back as an image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

import lowlight_fast  # noqa: E402
from lowlight_fast import io  # noqa: E402
from lowlight_fast.enhance import Enhancer  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
FORMATS = {"png": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"), "tif": ("1", "L", "LA", "P", "RGB", "RGBA",
           "CMYK", "I;16", "I", "F"), "jpg": ("L", "RGB", "CMYK"), "webp": ("RGB", "RGBA"), "gif": ("L", "P")}
OUT_EXTS = ("png", "jpg", "tif", "webp")


@pytest.fixture(scope="module")
def enhancers():
    return {
        "zerodce": Enhancer("zerodce", device="cpu"),
        "zerodcepp": Enhancer("zerodcepp", device="cpu", scale_factor=3),
        "sci": Enhancer("sci", device="cpu"),
    }


def _image(mode: str, h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I"):
        return Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32),
                               mode)
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32) * 1.2 - 0.1, "F")  # some out of [0, 1]
    base = Image.fromarray(rng.integers(0, 256, (h, w, 4)).astype(np.uint8), "RGBA")
    if mode in ("P", "PA"):
        return base.convert("RGB").quantize(7).convert(mode) if mode == "PA" else base.convert("RGB").quantize(7)
    return base.convert(mode)


@FUZZ
@given(data=st.data())
def test_enhance_path_fuzz(data, enhancers, tmp_path):
    fmt = data.draw(st.sampled_from(sorted(FORMATS)))
    mode = data.draw(st.sampled_from(FORMATS[fmt]))
    h, w = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    model = data.draw(st.sampled_from(sorted(enhancers)))
    src = tmp_path / f"in_{mode.replace(';', '')}_{h}x{w}.{fmt}"
    _image(mode, h, w, data.draw(st.integers(0, 2**31 - 1))).save(src)

    img = io.read_image(src)
    assert img.size == (h, w) and img.rgb.dtype == np.float32
    assert np.isfinite(img.rgb).all() and img.rgb.min() >= 0 and img.rgb.max() <= 1
    x = img.to_tensor()
    y = enhancers[model](x)
    assert y.shape == (1, 3, h, w) and torch.isfinite(y).all()
    with lowlight_fast.use_backend("reference"):
        ref = enhancers[model].model.enhance_image(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)

    ext = data.draw(st.sampled_from(OUT_EXTS))
    dst = tmp_path / f"out.{ext}"
    io.write_image(dst, y, bits=img.bits, alpha=img.alpha)
    back = io.read_image(dst)
    assert back.size == (h, w)
    assert not list(tmp_path.glob(".*"))  # no temporary left
