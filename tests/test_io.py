"""lowlight_fast.io: decoding every kind of image the command line meets, and writing results."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lowlight_fast import io
from tests.cli._png import read_png16, write_png16


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_png_all_filters_decoded_exactly(tmp_path, rng, channels):
    a = rng.integers(0, 65536, (23, 31, channels)).astype(np.uint16)
    p = tmp_path / "x.png"
    write_png16(p, a)
    img = io.read_image(p)
    assert img.bits == 16
    np.testing.assert_array_equal(img.rgb, a[..., :3].astype(np.float32) / np.float32(65535))
    if channels == 4:
        np.testing.assert_array_equal(img.alpha, a[..., 3])
    else:
        assert img.alpha is None


def test_16bit_grey_png_from_pillow(tmp_path, rng):
    g = rng.integers(0, 65536, (19, 27)).astype(np.uint16)
    p = tmp_path / "g16.png"
    im = Image.fromarray(g)
    assert im.mode == "I;16"
    im.save(p)
    img = io.read_image(p)
    assert img.bits == 16 and img.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], g.astype(np.float32) / np.float32(65535))


@pytest.mark.parametrize("with_alpha", [False, True])
def test_write_16bit_png_roundtrip(tmp_path, rng, with_alpha):
    rgb = rng.random((17, 29, 3)).astype(np.float32)
    alpha = rng.integers(0, 65536, (17, 29)).astype(np.uint16) if with_alpha else None
    p = tmp_path / "o.png"
    io.write_image(p, rgb, bits=16, alpha=alpha)
    got = read_png16(p)
    np.testing.assert_array_equal(got[..., :3], np.floor(rgb * np.float32(65535) + np.float32(0.5)).astype(np.uint16))
    if with_alpha:
        np.testing.assert_array_equal(got[..., 3], alpha)
    back = io.read_image(p)  # and our reader reads our writer
    np.testing.assert_array_equal(back.rgb, got[..., :3].astype(np.float32) / np.float32(65535))


def test_quantize_rounds_to_nearest():
    x = np.array([0.0, 0.4 / 255, 0.6 / 255, 1.49 / 255, 1.51 / 255, 254.6 / 255, 1.0, 1.7, -0.2], np.float32)
    np.testing.assert_array_equal(io.quantize(x, 8), [0, 0, 1, 1, 2, 255, 255, 255, 0])
    halves = np.array([0.5, 1.5, 2.5, 100.5], np.float32) / np.float32(255)
    torchvision_style = (torch.from_numpy(halves).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)).numpy()
    np.testing.assert_array_equal(io.quantize(halves, 8), torchvision_style)
    assert io.quantize(np.float32([0.5 / 65535 + 1e-7, 1.0]), 16).tolist() == [1, 65535]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, rng, orientation):
    a = rng.integers(0, 256, (12, 20, 3)).astype(np.uint8)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "e.png"
    im.save(p, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    got = io.read_image(p)
    np.testing.assert_array_equal(got.rgb, expected.astype(np.float32) / np.float32(255))


def test_grey_rgba_palette(tmp_path, rng):
    g = rng.integers(0, 256, (9, 13)).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = io.read_image(tmp_path / "g.png")
    assert img.bits == 8 and img.alpha is None
    np.testing.assert_array_equal(img.rgb, np.repeat(g[..., None], 3, 2).astype(np.float32) / np.float32(255))

    rgba = rng.integers(0, 256, (9, 13, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = io.read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img.alpha, rgba[..., 3])
    np.testing.assert_array_equal(img.rgb, rgba[..., :3].astype(np.float32) / np.float32(255))

    pal = Image.fromarray(rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)).quantize(16)
    pal.info["transparency"] = 3
    pal.save(tmp_path / "p.png", transparency=3)
    img = io.read_image(tmp_path / "p.png")
    ref = np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))
    np.testing.assert_array_equal(img.alpha, ref[..., 3])
    assert (img.alpha == 0).any() and (img.alpha == 255).any()
    np.testing.assert_array_equal(img.rgb, ref[..., :3].astype(np.float32) / np.float32(255))


def test_write_jpeg_drops_alpha_with_warning(tmp_path, rng):
    rgb = rng.random((8, 8, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="alpha|transparency"):
        io._alpha_warned.discard("JPEG")
        io.write_image(tmp_path / "o.jpg", rgb, alpha=np.full((8, 8), 255, np.uint8))
    assert Image.open(tmp_path / "o.jpg").mode == "RGB"


@pytest.mark.parametrize("content,reason", [
    (b"hello, not an image", "not an image"),
    (None, "corrupt or truncated"),
])
def test_unreadable_files_named(tmp_path, rng, content, reason):
    p = tmp_path / "broken.png"
    if content is None:  # a real PNG cut in half
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        p.write_bytes(content)
    with pytest.raises(io.ImageReadError, match=reason) as ei:
        io.read_image(p)
    assert str(p) in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(io.ImageReadError, match="no such file"):
        io.read_image(tmp_path / "nope.png")


def test_unknown_output_extension(tmp_path):
    with pytest.raises(ValueError, match="unknown image extension"):
        io.write_image(tmp_path / "x.notanext", np.zeros((2, 2, 3), np.float32))
