"""Test-wide setup. Triton kernels run on CPU tensors through the interpreter unless a GPU run is asked for
(LOWLIGHT_FAST_TEST_DEVICE=cuda); TRITON_INTERPRET must be set before triton is first imported."""
import os

if os.environ.get("LOWLIGHT_FAST_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def test_devices() -> list[str]:
    """cpu always; cuda as well when LOWLIGHT_FAST_TEST_DEVICE=cuda and a GPU is present."""
    devs = ["cpu"]
    if os.environ.get("LOWLIGHT_FAST_TEST_DEVICE") == "cuda":
        assert torch.cuda.is_available(), "LOWLIGHT_FAST_TEST_DEVICE=cuda but no GPU is visible"
        devs.append("cuda")
    return devs


test_devices.__test__ = False  # a helper, not a test


@pytest.fixture(params=test_devices())
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
