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


@pytest.fixture
def cli_main(capsys, monkeypatch):
    """``lowlight-fast ARGS`` run in this process: returns (exit status, stderr). The process-wide
    settings the command makes (flushing denormals, the thread count, the caching CPU allocator) are
    kept from it or undone afterwards, so that they cannot leak into other tests."""
    from lowlight_fast import cli

    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: True)
    monkeypatch.setenv("LOWLIGHT_FAST_KEEP_FREED_MEMORY", "0")
    threads = torch.get_num_threads()

    def run(*args) -> tuple[int, str]:
        try:
            status = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
        finally:
            torch.set_num_threads(threads)
        return status, capsys.readouterr().err

    return run
