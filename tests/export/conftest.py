"""Exports shared by the tests of this folder: each model is exported once per session (torch.export,
then ONNX from the same program), as exporting takes seconds."""
from __future__ import annotations

import pytest
import torch

from lowlight_fast.models import registry

# Sizes every export is checked at, from ONE file: odd sides, sides not multiples of Zero-DCE++'s
# scale factor (12) and multiples of it, 1-pixel sides, batch 1 and 2; up to 64x80.
SIZES = [(2, 37, 53), (1, 64, 80), (2, 13, 7), (1, 24, 36), (1, 5, 30), (1, 1, 1)]
MODELS = list(registry.NAMES)


def image(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A random image in [0, 1], darkened as the inputs of these models are."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) ** 2


def reference(name: str, **kwargs):
    """The PyTorch inference model ``enhance_image`` is taken from (bundled weights, CPU)."""
    from lowlight_fast.enhance import Enhancer

    return Enhancer(name, device="cpu", **kwargs).model


@pytest.fixture(scope="session")
def programs():
    """name -> its ExportedProgram (dynamic batch, height and width; fused ops kept), made on first use."""
    from lowlight_fast import export

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = export.export_program(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def onnx_files(programs, tmp_path_factory):
    """name -> the ONNX file exported from ``programs(name)``, made on first use."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from lowlight_fast import export

    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = export.onnx_from_program(
                programs(name), folder / f"{name}.onnx", metadata=export._metadata(name, None, False, None))
        return cache[name]

    return get
