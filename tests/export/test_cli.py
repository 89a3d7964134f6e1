"""``lowlight-fast export`` and ``enhance --engine onnxruntime``: the round trip and the errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from tests.export.conftest import image


def _photos(folder, sizes=((45, 61), (32, 20))):
    """Small dark RGB images with structure (gradients and noise), as PNG files."""
    folder.mkdir()
    paths = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        rng = np.random.default_rng(i)
        rgb = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 0.35 + rng.random((h, w, 3)) * 0.1
        path = folder / f"photo{i}.png"
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_round_trip_writes_the_same_images(cli_main, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = tmp_path / "sci.onnx"
    status, err = cli_main("export", "--model", "sci", "-o", model)
    assert status == 0, err
    assert "verified: max |onnxruntime - PyTorch|" in err and model.is_file()
    photos = _photos(tmp_path / "in")
    status, err = cli_main("enhance", *photos, "-o", tmp_path / "ort", "--engine", "onnxruntime",
                           "--onnx", model, "-q")
    assert status == 0, err
    status, err = cli_main("enhance", *photos, "-o", tmp_path / "torch", "--model", "sci", "-q")
    assert status == 0, err
    for p in photos:
        a = np.asarray(Image.open(tmp_path / "ort" / p.name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "torch" / p.name)).astype(int)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1
        assert np.abs(b - np.asarray(Image.open(p)).astype(int)).max() > 10  # it did enhance


def test_torch_export_format(cli_main, tmp_path):
    import torch

    from lowlight_fast import export
    from tests.export.conftest import reference

    path = tmp_path / "sci.pt2"
    status, err = cli_main("export", "--model", "sci", "-o", path)  # the format from the extension
    assert status == 0, err
    assert "torch-export" in err and "verified: max |the loaded program - PyTorch|" in err
    x = image(1, 9, 14)
    with torch.no_grad():
        torch.testing.assert_close(export.load_program(path).module()(x), reference("sci").enhance_image(x),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch"], "invalid choice: 'nosuch'"),
    (["--static", "12by5"], "argument --static: expected HxW"),
    (["--static", "0x5"], "argument --static: expected HxW"),
    (["--format", "torch-export", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--format", "torch-export", "--model", "sci", "--scale-factor", "4"], "scale_factor applies to zerodcepp only"),
    (["--format", "torch-export", "--weights", "missing.safetensors"], "weights file not found"),
])
def test_export_bad_arguments(cli_main, tmp_path, args, message):
    status, err = cli_main("export", "-o", tmp_path / "m.onnx", *args)
    assert status == 2
    assert message in err and "Traceback" not in err


def test_export_into_missing_folder(cli_main, tmp_path):
    status, err = cli_main("export", "-o", tmp_path / "no" / "m.pt2")
    assert status == 2 and "does not exist" in err


def test_export_without_onnx(cli_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    status, err = cli_main("export", "-o", tmp_path / "m.onnx")
    assert status == 2
    assert "needs the Python package onnx" in err and "lowlight_fast[export]" in err


@pytest.mark.parametrize("args, message", [
    (["--engine", "onnxruntime"], "--engine onnxruntime needs --onnx"),
    (["--engine", "onnxruntime", "--onnx", "missing.onnx"], "ONNX model not found: missing.onnx"),
    (["--onnx", "missing.onnx"], "--onnx applies to --engine onnxruntime"),
    (["--engine", "onnxruntime", "--onnx", "m.onnx", "--scale-factor", "4", "--model", "zerodcepp"],
     "--scale-factor: not used by --engine onnxruntime"),
])
def test_enhance_engine_bad_arguments(cli_main, tmp_path, args, message):
    pytest.importorskip("onnxruntime")
    photos = _photos(tmp_path / "in", sizes=((8, 8),))
    status, err = cli_main("enhance", *photos, "-o", tmp_path / "out", *args)
    assert status == 2
    assert message in err and "Traceback" not in err


def test_enhance_without_onnxruntime(cli_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    photos = _photos(tmp_path / "in", sizes=((8, 8),))
    status, err = cli_main("enhance", *photos, "-o", tmp_path / "out", "--engine", "onnxruntime",
                           "--onnx", "m.onnx")
    assert status == 2
    assert "the onnxruntime engine needs the Python package onnxruntime" in err and "Traceback" not in err
