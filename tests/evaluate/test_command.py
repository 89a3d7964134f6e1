"""``lowlight-fast evaluate``: pairing, conversions as enhance reads images, errors, CSV, --model."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli._png import write_png16

skm = pytest.importorskip("skimage.metrics")

SSIM_KW = dict(data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _scene(rng, h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([40 + 150 * x / w, 20 + 180 * y / h, 120 + 80 * np.sin(x / 3.0)], axis=2)
    return np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)


def _noisy(rng, a, sigma=15.0):
    return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)


def _read_csv(path):
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _expect(row, pred_rgb, gt_rgb):
    assert float(row["psnr"]) == pytest.approx(skm.peak_signal_noise_ratio(gt_rgb, pred_rgb, data_range=255), abs=1e-4)
    assert float(row["ssim"]) == pytest.approx(skm.structural_similarity(gt_rgb, pred_rgb, **SSIM_KW), abs=1e-4)


def test_conversions_match_skimage_on_what_enhance_reads(tmp_path, cli_main):
    """Grey, RGBA and 16-bit predictions against JPEG/PNG references of other extensions, odd sizes:
    measured on RGB as enhance converts them (grey repeated, alpha dropped, 16 bits rounded to 8)."""
    rng = np.random.default_rng(0)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    expected = {}
    # RGB
    g = _scene(rng, 31, 45)
    p = _noisy(rng, g)
    Image.fromarray(p).save(pred / "rgb.png"), Image.fromarray(g).save(gt / "rgb.bmp")
    expected["rgb.png"] = (p, g)
    # greyscale prediction, RGB reference
    g = _scene(rng, 27, 19)
    pg = _noisy(rng, g[..., 1])
    Image.fromarray(pg, "L").save(pred / "grey.png"), Image.fromarray(g).save(gt / "grey.png")
    expected["grey.png"] = (np.repeat(pg[..., None], 3, axis=2), g)
    # RGBA prediction (alpha not measured), grey+alpha reference
    g = _scene(rng, 22, 33)[..., 0]
    p = _noisy(rng, np.repeat(g[..., None], 3, axis=2))
    alpha = rng.integers(0, 256, g.shape).astype(np.uint8)
    Image.fromarray(np.dstack([p, alpha]), "RGBA").save(pred / "rgba.png")
    Image.fromarray(np.dstack([g, alpha]), "LA").save(gt / "rgba.png")
    expected["rgba.png"] = (p, np.repeat(g[..., None], 3, axis=2))
    # 16-bit RGB prediction: its 8-bit rounding, floor(v / 257 + 0.5), is what is measured
    g = _scene(rng, 25, 29)
    p16 = np.clip(g.astype(np.float64) * 257 + rng.normal(0, 3000, g.shape), 0, 65535).astype(np.uint16)
    write_png16(pred / "deep.png", p16)
    Image.fromarray(g).save(gt / "deep.png")
    expected["deep.png"] = (np.rint(p16 / 257.0).astype(np.uint8), g)

    out = tmp_path / "m.csv"
    status, err = cli_main("evaluate", pred, gt, "--csv", out, "--device", "cpu", "-q")
    assert status == 0, err
    rows = _read_csv(out)
    assert set(rows) == set(expected)
    for name, (p, g) in expected.items():
        _expect(rows[name], p, g)
        assert float(rows[name]["mean"]) == pytest.approx(p.astype(np.float64).mean())
    with open(out) as f:
        header = f.readline().strip().split(",")
    assert {"name", "psnr", "ssim", "mean", "spread", "cast", "noise"} <= set(header)


def test_unpaired_and_mismatched_are_named_others_evaluated(tmp_path, cli_main):
    rng = np.random.default_rng(1)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    g = _scene(rng, 20, 24)
    p = _noisy(rng, g)
    Image.fromarray(p).save(pred / "good.png"), Image.fromarray(g).save(gt / "good.png")
    Image.fromarray(p).save(pred / "orphan.png")                                         # no reference
    Image.fromarray(g).save(gt / "missing.png")                                          # no prediction
    Image.fromarray(p).save(pred / "size.png"), Image.fromarray(g[:, :-3]).save(gt / "size.png")  # 24 vs 21 wide
    (pred / "broken.png").write_bytes(b"not a png"), Image.fromarray(g).save(gt / "broken.png")
    (pred / "notes.txt").write_text("not an image, not a prediction")                    # ignored
    out = tmp_path / "m.csv"
    status, err = cli_main("evaluate", pred, gt, "--csv", out, "--device", "cpu", "-q")
    assert status == 1
    assert "orphan.png: no reference image named orphan.*" in err
    assert "missing.png: no prediction named missing.*" in err
    assert "size.png is 24x20 but its reference" in err and "is 21x20" in err
    assert "broken.png" in err and "Traceback" not in err
    assert "notes.txt" not in err
    rows = _read_csv(out)
    assert list(rows) == ["good.png"]
    _expect(rows["good.png"], p, g)


def test_table_summary_per_folder_and_file_pair(tmp_path, capsys):
    from lowlight_fast import cli

    rng = np.random.default_rng(2)
    gt = tmp_path / "gt"
    gt.mkdir()
    for m in ("a", "b"):
        (tmp_path / "runs" / m).mkdir(parents=True)
    g = _scene(rng, 16, 16)
    Image.fromarray(g).save(gt / "x.png")
    Image.fromarray(_noisy(rng, g, 5)).save(tmp_path / "runs" / "a" / "x.png")
    Image.fromarray(_noisy(rng, g, 40)).save(tmp_path / "runs" / "b" / "x.png")
    assert cli.main(["evaluate", str(tmp_path / "runs"), str(gt), "--device", "cpu", "-q", "--y", "--gt-mean"]) == 0
    out = capsys.readouterr().out
    for word in ("a/x.png", "b/x.png", "mean (2)", "mean a (1)", "mean b (1)", "psnr_y", "ssim_gtmean"):
        assert word in out
    # two files are paired whatever their names; without GT only the no-reference figures
    assert cli.main(["evaluate", str(tmp_path / "runs" / "a" / "x.png"), str(gt / "x.png"), "-q",
                     "--device", "cpu"]) == 0
    assert "psnr" in capsys.readouterr().out
    assert cli.main(["evaluate", str(gt), "-q", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "noise" in out and "psnr" not in out


def test_bad_arguments(tmp_path, cli_main):
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "a.png")
    for args, message in [((tmp_path / "none",), "no such file or folder"),
                          ((tmp_path / "a.png", "--y"), "give GT"),
                          ((tmp_path / "a.png", "--weights", tmp_path / "w.safetensors"), "need --model"),
                          ((tmp_path / "a.png", "--csv", tmp_path / "no" / "m.csv"), "does not exist")]:
        status, err = cli_main("evaluate", *args, "--device", "cpu")
        assert status == 2 and message in err, (args, err)
    (tmp_path / "empty").mkdir()
    status, err = cli_main("evaluate", tmp_path / "empty", "--device", "cpu")
    assert status == 2 and "holds no image files" in err


def test_model_mode_equals_enhance_then_evaluate(tmp_path, cli_main):
    """--model enhances in memory; the figures equal those of enhance's written 8-bit outputs."""
    from lowlight_fast.models import build_model, save_weights

    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(3)
    m = build_model("zerodce")
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.05))
    weights = tmp_path / "w.safetensors"
    save_weights(m, weights)
    low, gt = tmp_path / "low", tmp_path / "gt"
    low.mkdir(), gt.mkdir()
    for i, (h, w) in enumerate([(21, 17), (14, 26)]):
        g = _scene(rng, h, w)
        Image.fromarray(g).save(gt / f"im{i}.png")
        Image.fromarray((g * 0.25).astype(np.uint8)).save(low / f"im{i}.png")
    status, err = cli_main("enhance", low, "-o", tmp_path / "enh", "--weights", weights, "--device", "cpu", "-q")
    assert status == 0, err
    status, err = cli_main("evaluate", tmp_path / "enh", gt, "--csv", tmp_path / "files.csv", "--device", "cpu", "-q")
    assert status == 0, err
    status, err = cli_main("evaluate", low, gt, "--model", "zerodce", "--weights", weights,
                           "--csv", tmp_path / "model.csv", "--device", "cpu", "-q")
    assert status == 0, err
    assert not (low / ".lowlight-fast-claims.json").exists() and sorted(p.name for p in low.iterdir()) == [
        "im0.png", "im1.png"]  # nothing written
    a, b = _read_csv(tmp_path / "files.csv"), _read_csv(tmp_path / "model.csv")
    assert list(a) == list(b)
    for name in a:
        for col in ("psnr", "ssim", "mean", "spread", "cast", "noise"):
            assert float(a[name][col]) == pytest.approx(float(b[name][col]), abs=1e-9), (name, col)
