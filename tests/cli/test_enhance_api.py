"""lowlight_fast.enhance in Python: Enhancer on tensors (by name, by module, tiled), its errors, and the
file loop without the command line."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lowlight_fast import _validate, enhance
from lowlight_fast.contact_sheet import contact_sheet
from lowlight_fast.enhance import MIN_TILE, Enhancer, collect_inputs, enhance_files, output_extension
from lowlight_fast.models import (EnhancementModel, ZeroDCE, ZeroDCEPlusPlus, build_model, load_weights,
                                  registry)


def _reference(name: str, weights, x: torch.Tensor, **kwargs) -> torch.Tensor:
    m = load_weights(build_model(name, **kwargs), weights).eval()
    with torch.inference_mode():
        return m.enhance_image(x)


@pytest.mark.parametrize("name,kw", [("zerodce", {}), ("zerodcepp", {"scale_factor": 4}), ("sci", {})])
def test_enhancer_by_name_on_a_batch(name, kw, weights_dir):
    w = weights_dir / f"{name}.safetensors"
    x = torch.rand(2, 3, 37, 53) * 0.4
    got = Enhancer(name, w, device="cpu", **kw)(x)
    assert got.device.type == "cpu" and got.shape == x.shape
    assert torch.equal(got, _reference(name, w, x, **kw))
    assert (got - x).abs().mean() > 0.01


def test_enhancer_on_a_module(weights_dir):
    m = load_weights(ZeroDCE(), weights_dir / "zerodce.safetensors").train()
    e = Enhancer(m, device="cpu")
    assert e.model is m and not m.training and m.check_range is False
    assert e.name == "zerodce" and e.local
    x = torch.rand(1, 3, 30, 41) * 0.5
    with torch.inference_mode():
        expected = m.enhance_image(x)
    assert torch.equal(e(x), expected)


def test_enhancer_loads_weights_into_a_module(weights_dir):
    w = weights_dir / "zerodce.safetensors"
    x = torch.rand(1, 3, 20, 24) * 0.5
    assert torch.equal(Enhancer(ZeroDCE(), w, device="cpu")(x), _reference("zerodce", w, x))


def test_which_modules_are_tiled():
    from lowlight_fast.compat.zerodce.model import enhance_net_nopool

    class Custom(EnhancementModel):
        def enhance_image(self, x):
            return x

    assert Enhancer(enhance_net_nopool(), device="cpu").name == "zerodce"  # a subclass: its model's policy
    assert Enhancer(ZeroDCEPlusPlus(scale_factor=1), device="cpu").local
    assert not Enhancer(ZeroDCEPlusPlus(scale_factor=4), device="cpu").local  # resizes the whole image
    custom = Enhancer(Custom(), device="cpu", tile=64)
    assert custom.name == "Custom" and not custom.local  # its receptive field is unknown
    x = torch.rand(1, 3, 100, 150)
    assert torch.equal(custom(x), x)


@pytest.mark.parametrize("name,kw", [("zerodce", {}), ("zerodcepp", {"scale_factor": 1}), ("sci", {})])
def test_tiled_equals_untiled(name, kw, weights_dir):
    w = weights_dir / f"{name}.safetensors"
    x = torch.rand(1, 3, 150, 230) * 0.4
    seen = []
    tiled = Enhancer(name, w, device="cpu", tile=64, **kw)
    real = tiled.model.enhance_image
    tiled.model.enhance_image = lambda t: seen.append(tuple(t.shape[-2:])) or real(t)
    got = tiled(x)
    assert len(seen) > 1 and all(s != (150, 230) for s in seen)
    assert torch.equal(got, Enhancer(name, w, device="cpu", **kw)(x))


def test_tiles_when_the_image_would_not_fit(weights_dir, monkeypatch):
    w = weights_dir / "zerodce.safetensors"
    x = torch.rand(1, 3, 200, 260) * 0.4
    e = Enhancer("zerodce", w, device="cpu")
    monkeypatch.setattr(enhance, "_available_bytes", lambda device: 2 * 100 * 100 * e.spec.bytes_per_pixel)
    seen = []
    real = e.model.enhance_image
    monkeypatch.setattr(e.model, "enhance_image", lambda t: seen.append(tuple(t.shape[-2:])) or real(t))
    got = e(x)
    assert len(seen) > 1 and max(h * w for h, w in seen) < 200 * 260
    assert torch.equal(got, _reference("zerodce", w, x))


def test_out_of_memory_without_tiles_says_what_to_change(monkeypatch):
    def oom(t):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    e = Enhancer(ZeroDCEPlusPlus(scale_factor=4), device="cpu")
    monkeypatch.setattr(e.model, "enhance_image", oom)
    with pytest.raises(RuntimeError, match="at this scale factor, which cannot be tiled; use a larger --scale"):
        e(torch.rand(1, 3, 40, 40))


def test_range_is_checked_once_per_image_not_per_tile(weights_dir, monkeypatch):
    calls = []
    real = _validate.check_unit_range
    monkeypatch.setattr(_validate, "check_unit_range",
                        lambda t, name, **kw: calls.append(t.shape) or real(t, name, **kw))
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", device="cpu", tile=64)
    e(torch.rand(1, 3, 150, 200) * 0.5)
    assert calls == [torch.Size([1, 3, 150, 200])]
    with pytest.raises(ValueError, match=r"x: expected values in \[0, 1\]"):
        e(torch.rand(1, 3, 20, 20) * 255)


def test_errors_are_exceptions_with_the_command_line_messages(weights_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weights do not fit ZeroDCE") as info:
        Enhancer("zerodce", weights_dir / "sci.safetensors", device="cpu")
    assert "sci weights" in str(info.value)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        Enhancer("zerodce", tmp_path / "none.safetensors", device="cpu")
    monkeypatch.setattr(registry, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="the bundled weights for sci are missing .*; pass --weights"):
        Enhancer("sci", device="cpu")
    with pytest.raises(ValueError, match="expected one of zerodce, zerodcepp, sci"):
        Enhancer("dce", device="cpu")
    with pytest.raises(ValueError, match="scale_factor applies to zerodcepp only"):
        Enhancer("zerodce", weights_dir / "zerodce.safetensors", device="cpu", scale_factor=4)
    with pytest.raises(ValueError, match="scale_factor applies to a model given by name"):
        Enhancer(ZeroDCE(), device="cpu", scale_factor=4)
    with pytest.raises(ValueError, match=f"tile must be at least {MIN_TILE}"):
        Enhancer(ZeroDCE(), device="cpu", tile=MIN_TILE - 1)
    with pytest.raises(TypeError, match="expected a name .* or an EnhancementModel"):
        Enhancer(torch.nn.Conv2d(3, 3, 1), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_device_error():
    from lowlight_fast.device import DeviceError

    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        Enhancer(ZeroDCE(), device="cuda")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/a.png"):
        Image.fromarray(rng.integers(0, 100, (18, 22, 3)).astype(np.uint8)).save(d / name)
    (d / "broken.png").write_bytes(b"not a png")
    return d


def test_enhance_files_prints_nothing_by_itself(folder, weights_dir, tmp_path, capfd):
    files = collect_inputs([str(folder), str(folder / "sub" / "a.png"), str(folder / "a.png")]).files
    assert [os.path.relpath(f, folder) for f in files] == ["a.png", "b.png", "broken.png", "sub/a.png"]
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", device="cpu")
    written, errors = enhance_files(files, tmp_path / "out", e)
    assert capfd.readouterr() == ("", "")
    assert sorted(os.path.basename(p) for p in written) == ["a.png", "b.png"]
    assert len(errors) == 2
    assert "broken.png" in errors[0] and "not an image format" in errors[0]
    assert os.path.join("sub", "a.png") in errors[1] and "would overwrite the result of" in errors[1]


def test_enhance_files_reports_through_callbacks(folder, weights_dir, tmp_path):
    files = [str(folder / "a.png"), str(folder / "broken.png"), str(folder / "b.png")]
    done, reported = [], []
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", device="cpu")
    written, errors = enhance_files(files, tmp_path / "out", e, ext="JPG", on_progress=done.append,
                                    on_error=reported.append)
    assert done == files and reported == errors and len(errors) == 1
    assert sorted(os.path.basename(p) for p in written) == ["a.jpg", "b.jpg"]


def test_output_extension():
    assert output_extension(".PNG") == "png" and output_extension("jpg") == "jpg"
    with pytest.raises(ValueError, match="xyz: not an image format Pillow can write"):
        output_extension("xyz")


def test_collect_inputs_names_what_it_cannot_find(tmp_path):
    (tmp_path / "empty").mkdir()
    got = collect_inputs([str(tmp_path / "missing.png"), str(tmp_path / "*.jpg"), str(tmp_path / "empty")])
    assert got.files == []
    assert [e.rsplit(": ", 1)[1] for e in got.errors] == [
        "no such file or folder", "no file matches this pattern", "folder holds no files"]


def test_transparent_huge_pages_mode():
    assert enhance.transparent_huge_pages() in ("always", "madvise", "never", "unknown")


def test_contact_sheet_grid(tmp_path):
    paths = []
    for i, size in enumerate([(40, 30), (20, 60)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", size, (200, 10 * i, 0)).save(p)
        paths.append(str(p))
    contact_sheet([paths, paths[::-1]], ["input", "result"], tmp_path / "sheet.png", height=50)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.height == 22 + 2 * (50 + 6) + 6  # label row, two rows of thumbnails
    assert sheet.width == 67 + 67 + 3 * 6  # each column as wide as its widest thumbnail (40x30 -> 67x50)
