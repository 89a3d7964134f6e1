"""lowlight_fast._torch_compat: the one place that knows what each torch / Triton version supports."""
import sys
import types

import pytest

from lowlight_fast import _torch_compat, backend


@pytest.mark.parametrize("text, expected", [("2.11.0+cu130", (2, 11, 0)), ("2.13.0+cpu", (2, 13, 0)),
                                            ("3.6.0", (3, 6, 0)), ("2.4.0rc1", (2, 4, 0)), ("1.26", (1, 26))])
def test_version_tuple(text, expected):
    assert _torch_compat.version_tuple(text) == expected


@pytest.mark.parametrize("triton_v, numpy_v, problem", [("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False),
                                                         ("3.7.0", "2.4.6", False), ("3.9.0", "2.5.2", False)])
def test_interpreter_problem(monkeypatch, triton_v, numpy_v, problem):
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=triton_v))
    monkeypatch.setitem(sys.modules, "numpy", types.SimpleNamespace(__version__=numpy_v))
    msg = _torch_compat.interpreter_problem()
    assert (msg is not None) == problem
    if problem:
        assert "numpy<2.4" in msg and triton_v in msg


def test_interpreted_kernels_are_launched_directly(monkeypatch):
    kernel = object()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.wrap_triton(kernel) is kernel
    assert _torch_compat.launch_through_wrap_triton(False) and not _torch_compat.launch_through_wrap_triton(True)


def test_an_explicit_triton_request_names_the_version_problem(monkeypatch):
    import torch

    monkeypatch.setattr(_torch_compat, "interpreter_problem", lambda: "Triton 3.6.0's interpreter fails with NumPy 2.4.6")
    monkeypatch.setattr(backend, "triton_runs_on", lambda device: True)
    with backend.use_backend("triton"), pytest.raises(RuntimeError, match="le_curve: Triton 3.6.0"):
        backend.select("le_curve", torch.device("cpu"), has_triton=True)
