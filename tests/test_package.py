"""The package imports, reports its build, and runs on the reference path when the extension is absent."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lowlight_fast
from lowlight_fast import backend

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_reports_cpu_kernels():
    info = lowlight_fast.build_info()
    assert info["cpu"] is True, info
    assert info["version"] == lowlight_fast.__version__


def test_C_module_holds_build_facts_only():
    """Ops are reached through torch.ops.lowlight_fast; the caching allocator is lowlight_fast._runtime.
    Beside the build facts, _C reports which instruction-set copy its kernels run (cpu_paths) and the
    state of its kernels' own output pool (the pool lives with the kernels that allocate from it)."""
    from lowlight_fast import _ext

    assert _ext.available()
    assert sorted(name for name in dir(_ext._C) if not name.startswith("_")) == [
        "build_info", "cpu_paths", "output_pool_release", "output_pool_stats"]
    assert lowlight_fast.build_info()["runtime"] is True


def _inputs_hash(root, **env):
    res = subprocess.run([sys.executable, "setup.py", "--inputs-hash"], cwd=root, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_inputs_hash_follows_sources_and_build_settings(tmp_path):
    """scripts/setup.sh skips the build when this hash matches the one the last build stored: it must
    change with any build input (csrc/**, setup.py, pyproject.toml, the CUDA settings) and only then."""
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    env = {"LOWLIGHT_FAST_CUDA": "", "TORCH_CUDA_ARCH_LIST": ""}
    first = _inputs_hash(tmp_path, **env)
    assert len(first) == 64 and _inputs_hash(tmp_path, **env) == first
    assert _inputs_hash(tmp_path, **{**env, "LOWLIGHT_FAST_CUDA": "0"}) != first
    assert _inputs_hash(tmp_path, **{**env, "TORCH_CUDA_ARCH_LIST": "9.0"}) != first
    header = tmp_path / "csrc" / "common" / "tv_loss.h"
    header.write_text(header.read_text() + "\n")
    edited = _inputs_hash(tmp_path, **env)
    assert edited != first
    (tmp_path / "csrc" / "runtime" / "new.cpp").write_text("")
    assert _inputs_hash(tmp_path, **env) not in (first, edited)


def test_backend_switch_rejects_unknown_name(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="LOWLIGHT_FAST_BACKEND"):
        backend.requested()


def test_use_backend_overrides_environment(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    with lowlight_fast.use_backend("reference"):
        assert backend.requested() == "reference"
        assert backend.select("anything", torch.device("cpu"), has_triton=False) == "reference"
    assert backend.requested() == "cpp"


def test_explicit_triton_without_kernels_is_an_error():
    with lowlight_fast.use_backend("triton"), pytest.raises(RuntimeError, match="no Triton"):
        backend.select("anything", torch.device("cpu"), has_triton=False)


def test_import_without_extension_warns_and_falls_back():
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["lowlight_fast._C"] = None  # as if the extension had never been built
        import torch
        import lowlight_fast
        from lowlight_fast import backend
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            choice = backend.select("tv_loss", torch.device("cpu"), has_triton=False)
        assert choice == "reference", choice
        assert any("compiled extension not available" in str(x.message) for x in w), [str(x.message) for x in w]
        assert lowlight_fast.build_info()["cpu"] is False
        # models and losses still compute, on the reference path
        from lowlight_fast.models import ZeroDCE, SCINetwork
        from lowlight_fast.losses import ZeroDCELoss
        torch.manual_seed(0)
        x = torch.rand(1, 3, 32, 32)
        _, enhanced, r = ZeroDCE()(x)
        loss = ZeroDCELoss()(x, enhanced, r)
        loss.backward()
        sci = SCINetwork(stage=2)._loss(x)
        assert torch.isfinite(loss) and torch.isfinite(sci)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_importing_the_package_does_not_import_torch():
    """The command line sets torch's allocator options (THP_MEM_ALLOC_ENABLE) before torch is imported."""
    code = "import sys, lowlight_fast, lowlight_fast.cli; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_use_backend_is_per_thread():
    import threading

    from lowlight_fast import backend

    inside, entered, release = [], threading.Event(), threading.Event()

    def other():
        with backend.use_backend("reference"):
            entered.set()
            release.wait(10)
            inside.append(backend.requested())
        inside.append(backend.requested())

    t = threading.Thread(target=other)
    with backend.use_backend("cpp"):
        t.start()
        entered.wait(10)
        assert backend.requested() == "cpp"  # the other thread's block is not seen here
        release.set()
        t.join(10)
        assert backend.requested() == "cpp"  # nor did its exit pop ours
    assert inside == ["reference", backend.requested()]
    assert backend.requested() == backend._check(__import__("os").environ.get(backend.ENV_VAR, "auto"))
