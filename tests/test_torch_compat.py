"""lowlight_fast._torch_compat: the one place that knows what each torch / Triton version supports."""
import os
import subprocess
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


def test_the_inductor_cache_directory_is_found_without_importing_inductor():
    # in a fresh process that forces a path: torch._inductor (Dynamo, SymPy: a second of start-up) stays
    # unloaded, and the directory is the one Inductor itself would pick, suffixed with the path
    code = (
        "import os, sys; import lowlight_fast.backend; "
        "print('torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules, os.environ['TORCHINDUCTOR_CACHE_DIR']); "
        "from torch._inductor.runtime.cache_dir_utils import default_cache_dir; print(default_cache_dir())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["ATEN_CPU_CAPABILITY"] = "avx2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    loaded, cache = out.splitlines()
    assert loaded.split()[:2] == ["False", "False"]
    assert loaded.split()[2] == cache + "_avx2"


def test_a_forced_cpu_capability_gets_its_own_inductor_cache(monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert _torch_compat.inductor_cache_per_cpu_capability() is None  # the machine's own path: Inductor's default
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    path = _torch_compat.inductor_cache_per_cpu_capability()
    assert path == default_cache_dir() + "_avx2"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # the user's own choice is kept
    assert _torch_compat.inductor_cache_per_cpu_capability() is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"


def test_a_process_forced_to_avx2_does_not_share_the_default_inductor_cache():

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["ATEN_CPU_CAPABILITY"] = "avx2"
    code = "import os, lowlight_fast.backend; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("_avx2")
