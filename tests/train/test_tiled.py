"""Tiled training steps (lowlight_fast.train.tiled): the gradients, loss values and trained weights of
whole images, from tiles."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lowlight_fast
from lowlight_fast import train as T
from lowlight_fast.models import registry
from lowlight_fast.train import tiled

# (model, model kwargs, image size): odd sizes, sizes not divisible by the pools; Zero-DCE++ at its
# training scale factor 1 and at 4 (one size a multiple of 4, one that the model pads)
CASES = [
    ("zerodce", {}, (37, 45)),
    ("zerodcepp", {}, (37, 45)),
    ("zerodcepp", {"scale_factor": 4}, (36, 44)),
    ("zerodcepp", {"scale_factor": 4}, (37, 47)),
]
# 16: 2 x 3 tiles, the last ones longer (a remainder under 16 joins its neighbour); 32: one tile along
# the height, two along the width
TILES = (16, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: on these tiny tensors a second one only adds OpenMP's waiting (many times the
    work on a loaded machine); the arithmetic compared is the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name, kwargs, dtype):
    torch.manual_seed(3)
    model = registry.get(name).training(**kwargs).to(dtype)
    model.check_range = False
    with torch.no_grad():  # stronger curves than the N(0, 0.02) init, so every term matters
        for p in model.parameters():
            p.mul_(3.0)
    return model


def _batch(size, dtype, b=2):
    g = torch.Generator().manual_seed(11)
    return (torch.rand(b, 3, *size, generator=g, dtype=torch.float64) * 0.5).to(dtype)


def _untiled(model, loss, x):
    model.zero_grad(set_to_none=True)
    enhanced, maps = model(x)[-2:]
    total, terms = loss(x, enhanced, maps, return_terms=True)
    total.backward()
    return total.detach(), terms, {n: p.grad.clone() for n, p in model.named_parameters()}


def _tiled(model, loss, x, tile):
    model.zero_grad(set_to_none=True)
    values = tiled.compute_gradients_tiled(model, SimpleNamespace(loss=loss), x, tile)
    return values, {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_close(got, want, rtol):
    assert got.keys() == want.keys()
    for n in want:
        scale = want[n].abs().max()
        assert scale > 0, n
        err = (got[n] - want[n]).abs().max()
        assert err <= rtol * scale, f"{n}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"


def _check_case(name, kwargs, size, dtype, tiles, rtol):
    model = _model(name, kwargs, dtype)
    loss = registry.get(name).loss()
    x = _batch(size, dtype)
    total, terms, want = _untiled(model, loss, x)
    for tile in tiles:
        values, got = _tiled(model, loss, x, tile)
        _assert_grads_close(got, want, rtol)
        torch.testing.assert_close(values["loss"], total, rtol=rtol, atol=0)
        for k in terms:
            torch.testing.assert_close(values[k], terms[k], rtol=rtol, atol=0)


@pytest.mark.parametrize("name,kwargs,size", CASES)
def test_tiled_gradients_equal_untiled_float64(name, kwargs, size):
    _check_case(name, kwargs, size, torch.float64, TILES, 1e-10)


@pytest.mark.parametrize("name,kwargs,size", CASES[:3])
def test_tiled_gradients_equal_untiled_float32(name, kwargs, size):
    _check_case(name, kwargs, size, torch.float32, TILES, 1e-5)


@pytest.mark.parametrize("name,kwargs", [("zerodce", {}), ("zerodcepp", {}),
                                         ("zerodcepp", {"scale_factor": 4})])
def test_tiled_gradients_equal_untiled_on_the_triton_path(name, kwargs):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    pytest.importorskip("triton")
    with lowlight_fast.use_backend("triton"):
        _check_case(name, kwargs, (17, 36), torch.float64, (16,), 1e-10)


def test_tile_spans_cover_each_row_once_aligned_to_the_patches():
    for length in (16, 17, 31, 32, 33, 47, 48, 100):
        for tile in (16, 32, 48):
            spans = tiled.tile_spans(length, tile)
            assert spans[0][0] == 0 and spans[-1][1] == length
            assert all(a1 == b0 for (_, a1), (b0, _) in zip(spans, spans[1:]))
            assert all(a % 16 == 0 and b - a >= 16 for a, b in spans)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiled.tile_spans(64, 24)


def test_auto_tile_from_the_free_memory():
    per_pixel = tiled.TRAIN_BYTES_PER_PIXEL["zerodce"]
    assert tiled.auto_tile("zerodce", (1, 3, 64, 64), torch.device("cpu"), available=1 << 40) is None
    budget = 2 * per_pixel * 300 * 300  # half of it for a 300 x 300 window
    tile = tiled.auto_tile("zerodce", (1, 3, 2000, 2000), torch.device("cpu"), available=budget)
    assert tile % 16 == 0 and tile + 2 * (tiled.NET_HALO + tiled.LOSS_HALO) <= 300 < tile + 16 + 22
    assert tiled.auto_tile("zerodce", (2, 3, 2000, 2000), torch.device("cpu"), available=budget) < tile


# ---------------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """Four dark images of one odd size (batches of 2 at full size; 2 x 2 tiles of 16)."""
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("odd")
    for i in range(4):
        Image.fromarray(rng.integers(0, 90, (37, 35, 3)).astype(np.uint8)).save(d / f"img{i}.png")
    return d


def _train_args(model, data, out, steps, *extra):
    return ["train", model, data, "-o", out, "--size", 0, "--batch-size", 2, "--steps", steps, "--seed", 7,
            "--checkpoint-every", 10, "-q", *extra]


def _assert_weights_close(a, b, rtol=1e-4):
    """Each weight tensor within ``rtol`` of the other, relative to its norm. (Not element by element:
    Adam divides each gradient by its running RMS, so a weight whose gradient is rounding noise moves by
    up to lr per step whatever computes it, in float32 tiled and untiled alike.)"""
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    for k in a:
        err = float((a[k] - b[k]).norm() / a[k].norm())
        assert err <= rtol, f"{k}: |diff| / |weights| = {err:.3g}"


@pytest.mark.parametrize("model", ["zerodce", "zerodcepp"])
def test_training_with_tiles_ends_with_the_untiled_weights(cli_main, tmp_path, odd_data, model):
    assert cli_main(*_train_args(model, odd_data, tmp_path / "whole", 20))[0] == 0
    assert cli_main(*_train_args(model, odd_data, tmp_path / "tiled", 20, "--tile", 16))[0] == 0
    whole, tiles = (tmp_path / d / f"{model}.safetensors" for d in ("whole", "tiled"))
    _assert_weights_close(whole, tiles)
    # and they moved: the comparison is not of two initialisations
    init = T.build_run(T.TrainConfig.for_model(model, str(odd_data), str(tmp_path / "x"), seed=7)).model
    moved = load_file(tiles)
    assert any(not torch.allclose(p, moved[n]) for n, p in init.state_dict().items())


def test_resume_may_change_the_tile_size(cli_main, tmp_path, odd_data):
    """The tile size is not a setting of the optimisation (the gradients are exact): a run checkpointed
    untiled continues with --tile, or the other way round, and ends where the untiled run ends."""
    assert cli_main(*_train_args("zerodce", odd_data, tmp_path / "whole", 20))[0] == 0
    out = tmp_path / "mixed"
    assert cli_main(*_train_args("zerodce", odd_data, out, 10))[0] == 0
    assert cli_main(*_train_args("zerodce", odd_data, out, 20, "--tile", 32, "--resume"))[0] == 0
    assert T.load_checkpoint(out / "checkpoint.pt")["config"]["tile"] == 32
    _assert_weights_close(tmp_path / "whole" / "zerodce.safetensors", out / "zerodce.safetensors")


def test_tile_auto_trains(cli_main, tmp_path, odd_data, monkeypatch):
    seen = []
    real = tiled.compute_gradients_tiled
    monkeypatch.setattr(tiled, "compute_gradients_tiled", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    # memory for whole images: no tiles
    monkeypatch.setattr(tiled, "_available_bytes", lambda device: 1 << 40)
    assert cli_main(*_train_args("zerodce", odd_data, tmp_path / "whole", 2, "--tile", "auto"))[0] == 0
    assert seen == []
    # so little free memory that a batch of two 37 x 35 images must be tiled, in the smallest tiles
    per_pixel = 2 * tiled.TRAIN_BYTES_PER_PIXEL["zerodce"]
    monkeypatch.setattr(tiled, "_available_bytes", lambda device: 2 * per_pixel * 30 * 30)
    assert cli_main(*_train_args("zerodce", odd_data, tmp_path / "auto", 2, "--tile", "auto"))[0] == 0
    assert seen == [tiled.MIN_AUTO_TILE] * 2


@pytest.mark.parametrize("args,message", [
    (["--tile", "24"], "--tile must be a multiple of 16"),
    (["--tile", "8"], "--tile must be a multiple of 16"),
])
def test_bad_tile_sizes_are_one_line_errors(cli_main, tmp_path, odd_data, args, message):
    status, err = cli_main(*_train_args("zerodce", odd_data, tmp_path / "bad", 2, *args))
    assert status == 2 and message in err and "Traceback" not in err


def test_bad_tile_values_are_usage_errors(cli_main, tmp_path, odd_data):
    status, err = cli_main(*_train_args("zerodce", odd_data, tmp_path / "bad", 2, "--tile", "big"))
    assert status == 2 and "--tile" in err and "Traceback" not in err


def test_sci_with_tiles_is_a_clear_error(cli_main, tmp_path, odd_data):
    status, err = cli_main("train", "sci", odd_data, "-o", tmp_path / "sci", "--steps", 1, "--tile", 64, "-q")
    assert status == 2 and "SCI cannot be trained in tiles" in err and "BatchNorm" in err
    assert "Traceback" not in err


def test_tiles_with_mixed_precision(cli_main, tmp_path, odd_data):
    """--amp (bfloat16 on the CPU) with --tile: the same loss as the untiled --amp run, to bfloat16's
    precision."""
    logs = {}
    for name, extra in (("whole", []), ("tiled", ["--tile", 16])):
        out = tmp_path / name
        assert cli_main(*_train_args("zerodce", odd_data, out, 1, "--amp", *extra))[0] == 0
        rows = (out / "train_log.csv").read_text().splitlines()
        logs[name] = dict(zip(rows[0].split(","), map(float, rows[-1].split(","))))
    for k in ("loss", "tv", "spa", "col", "exp"):
        assert abs(logs["tiled"][k] - logs["whole"][k]) <= 0.05 * abs(logs["whole"][k]), k
