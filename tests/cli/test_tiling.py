"""Tiled enhancement: exact against the whole-image run; the out-of-memory fallback."""
import pytest
import torch

from lowlight_fast.enhance import MIN_TILE, Enhancer
from lowlight_fast.models import build_model
from lowlight_fast.tiling import MIN_WINDOW_AREA, _tile_sizes, _window, enhance_tiled


@pytest.mark.parametrize("name,kw", [("zerodce", {}), ("zerodcepp", {"scale_factor": 1}), ("sci", {})])
@pytest.mark.parametrize("shape,tile", [((2, 3, 97, 211), 64), ((1, 3, 150, 129), 70), ((1, 3, 40, 300), 64),
                                        ((1, 3, 131, 157), 65)])
def test_tiled_is_exact(name, kw, shape, tile):
    m = build_model(name, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4)
    x = torch.rand(*shape)
    with torch.inference_mode():
        whole = m.enhance_image(x)
        tiled = enhance_tiled(m.enhance_image, x, tile, align=getattr(m, "tile_alignment", 1))
    assert torch.equal(whole, tiled)
    assert (whole - x).abs().mean() > 0.01


def test_windows_cover_core_with_margin_start_aligned_and_share_one_size():
    """One size; with align 4, up to 3 pixels more where the start was rounded down to a multiple of 4
    (the Winograd convolutions' 4x4 output tiles then fall on the same pixels as in the whole image)."""
    for length in (1, 50, 96, 97, 300, 1001):
        for tile in (64, 65, 100):
            size = min(length, tile + 32)
            for align in (1, 4):
                sizes = set()
                for c0 in range(0, length, tile):
                    c1 = min(c0 + tile, length)
                    a, b = _window(c0, c1, length, size, 16, align)
                    assert 0 <= a <= max(0, c0 - 16) and min(length, c1 + 16) <= b <= length
                    assert a % align == 0
                    sizes.add(b - a)
                assert sizes <= set(range(size, size + align)) and size in sizes


@pytest.mark.parametrize("h,w", [(40, 300), (300, 40), (97, 211), (1000, 1000), (5, 5000)])
def test_windows_are_never_tiny(h, w):
    th, tw = _tile_sizes(h, w, 64, 16)
    assert min(h, th + 32) * min(w, tw + 32) >= min(h * w, MIN_WINDOW_AREA)


def test_bad_tile_size():
    with pytest.raises(ValueError, match="tile must be positive"):
        enhance_tiled(lambda t: t, torch.rand(1, 3, 8, 8), 0)


def test_out_of_memory_falls_back_to_tiles(tmp_path, weights_dir, monkeypatch):
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", torch.device("cpu"))
    x = torch.rand(1, 3, 200, 260)
    with torch.inference_mode():
        expected = e.model.enhance_image(x)
    real = e.model.enhance_image
    seen = []

    def limited(t):
        seen.append(tuple(t.shape[-2:]))
        if t.shape[-2] * t.shape[-1] > 130 * 130:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(t)

    monkeypatch.setattr(e.model, "enhance_image", limited)
    got = e(x)
    assert torch.equal(got, expected)
    assert seen[0] == (200, 260) and len(seen) > 2  # tried whole, then tiles
    assert all(h * w < 200 * 260 for h, w in seen[1:]) and min(seen[1:]) >= (MIN_TILE, MIN_TILE)


def test_other_errors_are_not_retried(weights_dir, monkeypatch):
    e = Enhancer("zerodce", weights_dir / "zerodce.safetensors", torch.device("cpu"))
    monkeypatch.setattr(e.model, "enhance_image", lambda t: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        e(torch.rand(1, 3, 10, 10))
