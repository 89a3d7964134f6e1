"""Training data for the tests of lowlight_fast.train."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Seven dark images of different sizes (one in a subfolder)."""
    rng = np.random.default_rng(21)
    d = tmp_path_factory.mktemp("data")
    (d / "sub").mkdir()
    for i in range(7):
        h, w = 40 + 3 * i, 52 - 2 * i
        name = f"sub/img{i}.png" if i == 6 else f"img{i}.png"
        Image.fromarray(rng.integers(0, 90, (h, w, 3)).astype(np.uint8)).save(d / name)
    (d / "readme.txt").write_text("ignored: not an image extension")
    return d
