"""Models with random weights, strong enough that the curves change the image (no files needed)."""
from __future__ import annotations

import pytest
import torch


def random_model(name: str, **kwargs):
    from lowlight_fast.models import build_model

    m = build_model(name, **kwargs)
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.1))
    return m.eval()


@pytest.fixture
def enhancer():
    from lowlight_fast.enhance import Enhancer

    return Enhancer(random_model("zerodce"), device="cpu")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests are about the files around the model: one intra-op thread keeps the tiny images'
    convolutions from waiting on a second thread (slow on a loaded machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
