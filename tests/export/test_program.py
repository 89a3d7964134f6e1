"""torch.export programs: the fused ops kept, dynamic sizes, the model's output, also after save/load."""
from __future__ import annotations

import pytest
import torch

from lowlight_fast import export
from tests.export.conftest import MODELS, SIZES, image, reference


@pytest.mark.parametrize("name", MODELS)
def test_program_matches_model(programs, name):
    program = programs(name)
    model = reference(name)
    run = program.module()
    for n, h, w in SIZES:
        x = image(n, h, w, seed=w)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model.enhance_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_program_saved_and_loaded(programs, name, tmp_path):
    path = export.save_program(programs(name), tmp_path / f"{name}.pt2")
    loaded = export.load_program(path).module()
    model = reference(name)
    x = image(2, 13, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.enhance_image(x), atol=1e-5, rtol=0)


def test_program_keeps_fused_ops(programs):
    targets = {str(n.target) for n in programs("zerodcepp").graph.nodes}
    assert "lowlight_fast.le_curve_shared.default" in targets
    targets = {str(n.target) for n in programs("zerodce").graph.nodes}
    assert "lowlight_fast.le_curve.default" in targets


def test_load_missing_program(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt2"):
        export.load_program(tmp_path / "nope.pt2")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of"):
        export.export_program("zerodcexx")
    with pytest.raises(ValueError, match="scale_factor applies to"):
        export.export_program("sci", scale_factor=4)
    with pytest.raises(ValueError, match="expected HxW"):
        export.export_program("sci", static="12by5")
    with pytest.raises(FileNotFoundError):
        export.export_program("zerodce", weights=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        export.save_program(None, tmp_path / "no" / "such" / "m.pt2")


@pytest.mark.parametrize("text, sizes", [("64x80", (64, 80)), (" 2 X 16x24 ", (2, 16, 24)),
                                         ("1080x1920", (1080, 1920))])
def test_parse_static(text, sizes):
    assert export.parse_static(text) == sizes


@pytest.mark.parametrize("text", ["", "64", "64x", "0x5", "axb", "1x2x3x4", "-4x5"])
def test_parse_static_rejects(text):
    with pytest.raises(ValueError, match="expected HxW"):
        export.parse_static(text)
