"""Enhancer(half=True) (float16 inference) and Enhancer.stream (a sequence of batches; on CUDA the copies
overlap the model): the same images as the plain float32 calls, on every test device."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lowlight_fast.enhance import Enhancer
from lowlight_fast.models import registry
from tests.enhance.conftest import random_model

MODELS = [("zerodce", {}), ("zerodcepp", {"scale_factor": 12}), ("zerodcepp", {"scale_factor": 1}), ("sci", {})]


def _frames(n: int, h: int = 37, w: int = 53) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return [torch.rand(2, 3, h, w, generator=gen) * 0.6 for _ in range(n)]


@pytest.mark.parametrize("name,kwargs", MODELS, ids=["zerodce", "zerodcepp-s12", "zerodcepp-s1", "sci"])
def test_half_is_float32_to_float16_rounding(name, kwargs, device):
    """The bundled weights on a bundled photo (float16's error grows where curves saturate, as random
    weights make them)."""
    full = Enhancer(name, device=device, **kwargs)
    half = Enhancer(name, device=device, half=True, **kwargs)
    assert all(p.dtype == torch.float16 for p in half.model.parameters())
    photo = Image.open(registry.bundled_samples()[0]).convert("RGB").resize((96, 72), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, np.float32) / 255).permute(2, 0, 1)[None]
    want, got = full(x), half(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == x.shape
    # float16 keeps 11 significant bits: the images agree to a few 1e-3, 8-bit results to a level or two
    assert (got - want).abs().max() < 5e-3
    assert ((got * 255).round() - (want * 255).round()).abs().max() <= 2
    assert not torch.equal(got, want)  # it did run in float16


@pytest.mark.parametrize("half", [False, True])
def test_stream_equals_each_call_in_order(device, half):
    enhancer = Enhancer(random_model("zerodcepp", scale_factor=12), device=device, half=half)
    frames = _frames(4)
    got = list(enhancer.stream(iter(frames)))
    assert len(got) == len(frames)
    for g, x in zip(got, frames):
        assert g.device.type == "cpu" and g.dtype == torch.float32
        torch.testing.assert_close(g, enhancer(x), rtol=0, atol=0)


def test_stream_is_lazy_and_checks_each_batch(device):
    enhancer = Enhancer(random_model("zerodce"), device=device)
    pulled = []

    def source():
        for i, x in enumerate(_frames(3)):
            pulled.append(i)
            yield x
    it = enhancer.stream(source())
    next(it)
    assert len(pulled) <= 2  # at most one batch ahead
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        list(enhancer.stream(iter([torch.full((1, 3, 8, 8), 2.0)])))


def test_stream_tiles_what_needs_tiles(device):
    enhancer = Enhancer(random_model("zerodce"), device=device, tile=64)
    frames = [torch.rand(1, 3, 150, 90), torch.rand(1, 3, 40, 40)]
    for g, x in zip(enhancer.stream(iter(frames)), frames):
        torch.testing.assert_close(g, enhancer(x), rtol=0, atol=0)


def test_cli_half_writes_nearly_the_same_pixels(cli_main, tmp_path):
    src = tmp_path / "in.png"
    arr = (np.random.default_rng(0).random((40, 56, 3)) * 120).astype(np.uint8)
    Image.fromarray(arr).save(src)
    outs = {}
    for flag in ([], ["--half"]):
        out = tmp_path / ("half" if flag else "full")
        code, err = cli_main("enhance", str(src), "-o", str(out), "--device", "cpu", "-q", *flag)
        assert code == 0, err
        outs[bool(flag)] = np.asarray(Image.open(out / "in.png")).astype(int)
    assert np.abs(outs[True] - outs[False]).max() <= 2


def test_cli_half_is_refused_by_the_onnx_engine(cli_main, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    code, err = cli_main("enhance", str(src), "-o", str(tmp_path / "o"), "--engine", "onnxruntime",
                         "--onnx", str(tmp_path / "m.onnx"), "--half")
    assert code == 2 and "--half" in err and "export --fp16" in err
