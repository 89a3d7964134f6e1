"""``lowlight-fast enhance`` as a subprocess on real files; outputs compared pixel by pixel with the model
called in Python."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.cli._png import read_png16, write_png16
from tests.cli.conftest import model_output, run_cli


def _u8(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """A folder holding every kind of input, plus a corrupt PNG and a non-image file."""
    rng = np.random.default_rng(11)
    d = tmp_path_factory.mktemp("inputs")
    dark = lambda *shape: rng.integers(0, 110, shape).astype(np.uint8)  # noqa: E731
    Image.fromarray(dark(21, 34), "L").save(d / "grey.png")
    rgba = dark(19, 27, 4)
    rgba[..., 3] = rng.integers(0, 256, (19, 27))
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    write_png16(d / "deep.png", rng.integers(0, 30000, (15, 22, 3)).astype(np.uint16))
    Image.fromarray(dark(17, 25, 3)).quantize(12).save(d / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(dark(16, 40, 3)).save(d / "photo.jpg", quality=92, exif=exif)
    good = dark(30, 30, 3)
    Image.fromarray(good).save(d / "corrupt.png")
    data = (d / "corrupt.png").read_bytes()
    (d / "corrupt.png").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("not an image\n")
    return d


@pytest.fixture(scope="module")
def mixed_run(mixed_folder, weights_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = run_cli("enhance", mixed_folder, "-o", out, "--model", "zerodce",
                   "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu")
    return proc, out


def test_bad_files_named_rest_written_nonzero_exit(mixed_run, mixed_folder):
    proc, out = mixed_run
    assert proc.returncode == 1, proc.stderr
    assert str(mixed_folder / "corrupt.png") in proc.stderr and "corrupt or truncated" in proc.stderr
    assert str(mixed_folder / "notes.txt") in proc.stderr and "not an image" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "grey.png", "palette.png", "photo.png", "rgba.png"]
    assert "images/s" in proc.stderr or "img/s" in proc.stderr  # the progress bar / summary rate


def test_grey_png(mixed_run, mixed_folder, weights_dir):
    _, out = mixed_run
    g = np.asarray(Image.open(mixed_folder / "grey.png"))
    expected = model_output("zerodce", weights_dir / "zerodce.safetensors", _u8(np.repeat(g[..., None], 3, 2)))
    got = Image.open(out / "grey.png")
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.abs(expected.astype(int) - g[..., None]).mean() > 5  # the model really changed the image


def test_rgba_png_keeps_alpha(mixed_run, mixed_folder, weights_dir):
    _, out = mixed_run
    a = np.asarray(Image.open(mixed_folder / "rgba.png"))
    got = Image.open(out / "rgba.png")
    assert got.mode == "RGBA"
    got = np.asarray(got)
    np.testing.assert_array_equal(got[..., 3], a[..., 3])
    np.testing.assert_array_equal(got[..., :3], model_output("zerodce", weights_dir / "zerodce.safetensors",
                                                             _u8(a[..., :3])))


def test_16bit_png_stays_16bit(mixed_run, mixed_folder, weights_dir):
    _, out = mixed_run
    a = read_png16(mixed_folder / "deep.png")
    got = read_png16(out / "deep.png")
    assert got.dtype == np.uint16 and got.shape == a.shape
    expected = model_output("zerodce", weights_dir / "zerodce.safetensors",
                            a.astype(np.float32) / np.float32(65535), bits=16)
    np.testing.assert_array_equal(got, expected)
    assert (got % 257 != 0).any()  # real 16-bit values, not 8-bit ones scaled up


def test_palette_png(mixed_run, mixed_folder, weights_dir):
    _, out = mixed_run
    a = np.asarray(Image.open(mixed_folder / "palette.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "palette.png")),
                                  model_output("zerodce", weights_dir / "zerodce.safetensors", _u8(a)))


def test_jpeg_exif_rotation(mixed_run, mixed_folder, weights_dir):
    _, out = mixed_run
    upright = np.asarray(ImageOps.exif_transpose(Image.open(mixed_folder / "photo.jpg")).convert("RGB"))
    assert upright.shape[:2] == (40, 16)  # stored 16 x 40, displayed rotated
    got = np.asarray(Image.open(out / "photo.png"))
    np.testing.assert_array_equal(got, model_output("zerodce", weights_dir / "zerodce.safetensors", _u8(upright)))


def test_glob_models_and_jpeg_output(tmp_path, weights_dir):
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    imgs = {}
    for name, shape in [("a", (23, 41, 3)), ("b", (38, 17, 3)), ("sub/c", (12, 12, 3))]:
        imgs[name] = rng.integers(0, 120, shape).astype(np.uint8)
        Image.fromarray(imgs[name]).save(src / f"{name}.png")
    (src / "skip.txt").write_text("x")
    out = tmp_path / "out"
    # the pattern reaches the program unexpanded (no shell), as on Windows or when quoted
    for model, extra in [("zerodcepp", ["--scale-factor", "4"]), ("sci", [])]:
        proc = run_cli("enhance", src / "*.png", "-o", out / model, "--model", model,
                       "--weights", weights_dir / f"{model}.safetensors", "--device", "cpu", *extra, check=True)
        assert sorted(p.name for p in (out / model).iterdir()) == ["a.png", "b.png"], proc.stderr
        kw = {"scale_factor": 4} if model == "zerodcepp" else {}
        for name in ("a", "b"):
            np.testing.assert_array_equal(
                np.asarray(Image.open(out / model / f"{name}.png")),
                model_output(model, weights_dir / f"{model}.safetensors", _u8(imgs[name]), **kw))
    proc = run_cli("enhance", str(src / "**" / "*.png"), "-o", out / "jpg", "--ext", "jpg",
                   "--weights", weights_dir / "zerodce.safetensors", "--device", "cpu", "-q", check=True)
    assert sorted(p.name for p in (out / "jpg").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert Image.open(out / "jpg" / "a.jpg").format == "JPEG"


def test_tiled_equals_untiled(tmp_path, weights_dir):
    """An image several tiles wide (7 x 3 tiles of 64 px): the same pixels with and without tiling."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 100, (150, 420, 3)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "wide.png")
    for model in ("zerodce", "sci"):
        w = weights_dir / f"{model}.safetensors"
        run_cli("enhance", tmp_path / "wide.png", "-o", tmp_path / f"{model}_tiled", "--model", model, "--weights", w,
                "--device", "cpu", "--tile", 64, check=True)
        run_cli("enhance", tmp_path / "wide.png", "-o", tmp_path / f"{model}_whole", "--model", model, "--weights", w,
                "--device", "cpu", check=True)
        tiled = np.asarray(Image.open(tmp_path / f"{model}_tiled" / "wide.png"))
        whole = np.asarray(Image.open(tmp_path / f"{model}_whole" / "wide.png"))
        np.testing.assert_array_equal(tiled, whole)
        np.testing.assert_array_equal(whole, model_output(model, w, _u8(a)))


def test_usage_errors(tmp_path, weights_dir):
    proc = run_cli("enhance", tmp_path / "missing.png", tmp_path / "nomatch*.png", "-o", tmp_path / "o",
                   "--weights", weights_dir / "zerodce.safetensors")
    assert proc.returncode == 1
    assert "missing.png: no such file or folder" in proc.stderr
    assert "nomatch*.png: no file matches this pattern" in proc.stderr
    proc = run_cli("enhance", tmp_path, "-o", tmp_path / "o", "--weights", weights_dir / "sci.safetensors")
    assert proc.returncode != 0 and "weights do not fit ZeroDCE" in proc.stderr and "sci weights" in proc.stderr
    proc = run_cli("enhance", tmp_path, "-o", tmp_path / "o", "--scale-factor", "4")
    assert proc.returncode == 2 and "zerodcepp only" in proc.stderr


def test_info_runs():
    proc = run_cli("info", check=True)
    for word in ("lowlight_fast", "torch", "C++ CPU", "CUDA kernels", "Triton", "devices", "CPU memory"):
        assert word in proc.stdout


def test_demo_brightens_bundled_samples(tmp_path):
    """The one-command demo: bundled samples, bundled weights, results and the contact sheet."""
    from lowlight_fast.models.registry import NAMES, bundled_samples

    samples = bundled_samples()
    assert len(samples) >= 3
    proc = run_cli("demo", "-o", tmp_path, "--device", "cpu", "-q", check=True,
                   env_extra={"OMP_NUM_THREADS": "1"})
    assert "contact_sheet.png" in proc.stdout
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 4 * 180 and sheet.height > len(samples) * 180
    for model in NAMES:
        for s in samples:
            before = np.asarray(Image.open(s).convert("RGB"), dtype=np.float64)
            after = np.asarray(Image.open(tmp_path / model / s.name), dtype=np.float64)
            assert after.shape == before.shape
            assert after.mean() > 1.4 * before.mean(), (model, s.name, before.mean(), after.mean())
