"""The CUDA kernels of smooth_loss without a GPU.

1. Host emulation: csrc/emulate/smooth_loss_emulate.cpp includes the kernel bodies and the launch
   sequence of csrc/cuda/smooth_loss_kernels.cuh and runs every block and thread in a loop. It is
   built here as a standalone program with AddressSanitizer + UBSan (when the compiler supports them),
   so an out-of-bounds index fails the test; the gradient buffers start as NaN, so an element no
   thread writes shows up; blocks and threads run in order and reversed, which must give the same bits.
2. nvcc: csrc/cuda/smooth_loss.cu is compiled for sm_80 and sm_90 with torch's include paths whenever
   nvcc is on the machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils import cpp_extension

from lowlight_fast.reference import sci_losses as ref

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMULATE_SRC = CSRC / "emulate" / "smooth_loss_emulate.cpp"
CUDA_SRC = CSRC / "cuda" / "smooth_loss.cu"
KERNEL_HEADERS = [CSRC / "cuda" / "smooth_loss_kernels.cuh", CSRC / "common" / "smooth_loss.h"]
DTYPES = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
NP_DTYPES = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": np.uint16}


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on this machine")
    return cxx


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    cxx = _compiler()
    out = tmp_path_factory.mktemp("emulate") / "smooth_loss_emulate"
    base = [cxx, "-std=c++17", "-O1", "-g", f"-I{CSRC}"] + [f"-I{p}" for p in cpp_extension.include_paths()]
    sanitized = base + ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    for cmd in (sanitized, base):
        res = subprocess.run(cmd + [str(EMULATE_SRC), "-o", str(out)], capture_output=True, text=True)
        if res.returncode == 0:
            return out
    raise AssertionError(f"building the CUDA host emulation failed:\n{res.stderr[-4000:]}")


def _to_raw(t: torch.Tensor, dtype: str, path: Path) -> None:
    t = t.detach().to(DTYPES[dtype]).contiguous()
    if dtype == "bf16":
        t = t.view(torch.int16)
    t.numpy().tofile(path)


def _from_raw(path: Path, dtype: str, shape) -> torch.Tensor:
    arr = np.fromfile(path, dtype=NP_DTYPES[dtype]).reshape(shape)
    t = torch.from_numpy(arr.copy())
    return t.view(torch.bfloat16) if dtype == "bf16" else t


def emulate(exe, tmp, x, o, *, dtype="f64", sigma=10.0, faithful=True, with_grad=True, reverse=False, scale=None):
    """Runs the emulated CUDA launch sequence; returns (loss, grad_input, grad_output)."""
    b, _, h, w = x.shape
    _to_raw(x, dtype, tmp / "in.bin")
    _to_raw(o, dtype, tmp / "out.bin")
    prefix = tmp / "res"
    args = [str(exe), dtype, str(b), str(h), str(w), repr(float(sigma)), str(int(faithful)), str(int(with_grad)),
            str(int(reverse)), "none" if scale is None else repr(float(scale)),
            str(tmp / "in.bin"), str(tmp / "out.bin"), str(prefix)]  # fmt: skip
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    res = subprocess.run(args, capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"emulated kernels failed ({res.returncode}):\n{res.stderr[-4000:]}"
    acc = "f64" if dtype == "f64" else "f32"
    loss = _from_raw(Path(f"{prefix}.loss"), acc, ())
    if not with_grad:
        return loss, None, None
    return loss, _from_raw(Path(f"{prefix}.gin"), dtype, x.shape), _from_raw(Path(f"{prefix}.gout"), dtype, x.shape)


def _reference(x, o, sigma=10.0, faithful=True):
    xr = x.detach().double().requires_grad_()
    orr = o.detach().double().requires_grad_()
    loss = ref.smooth_loss(xr, orr, sigma, "faithful" if faithful else "per_pixel")
    gi, go = torch.autograd.grad(loss, (xr, orr))
    return loss, gi, go


def _pair(shape):
    return torch.rand(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64) * 0.9 + 1e-4


def _assert_rel(a, b, rtol, what):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), f"{what}: elements not written (NaN) or not finite"
    err = (a - b).abs().max().item()
    assert err <= rtol * b.abs().max().item(), f"{what}: max |diff| {err:.3g}"


@pytest.mark.parametrize("faithful", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 3, 3), (1, 3, 4, 7), (3, 3, 11, 9), (2, 3, 17, 20)])
def test_emulated_float64_matches_reference(emulator, tmp_path, shape, faithful):
    x, o = _pair(shape)
    loss, gi, go = emulate(emulator, tmp_path, x, o, faithful=faithful)
    rloss, rgi, rgo = _reference(x, o, faithful=faithful)
    torch.testing.assert_close(loss, rloss.detach(), rtol=1e-12, atol=0)
    _assert_rel(gi, rgi, 1e-11, "grad input")
    _assert_rel(go, rgo, 1e-11, "grad output")


@pytest.mark.parametrize("faithful", [True, False])
def test_emulated_launch_order_does_not_matter(emulator, tmp_path, faithful):
    x, o = _pair((2, 3, 13, 29))  # several blocks of 256 threads, a partial last block
    first = emulate(emulator, tmp_path, x, o, dtype="f32", faithful=faithful)
    second = emulate(emulator, tmp_path, x, o, dtype="f32", faithful=faithful, reverse=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sigma", [10.0, 0.4])
@pytest.mark.parametrize("dtype,rtol", [("f32", 1e-5), ("f16", 2e-3), ("bf16", 1e-2)])
def test_emulated_dtypes(emulator, tmp_path, dtype, rtol, sigma):
    x, o = _pair((2, 3, 9, 15))
    x, o = x.to(DTYPES[dtype]).double(), o.to(DTYPES[dtype]).double()  # what the kernel sees
    loss, gi, go = emulate(emulator, tmp_path, x, o, dtype=dtype, sigma=sigma)
    rloss, rgi, rgo = _reference(x, o, sigma=sigma)
    assert gi.dtype == DTYPES[dtype] and go.dtype == DTYPES[dtype]
    torch.testing.assert_close(loss.double(), rloss.detach(), rtol=1e-5, atol=0)
    _assert_rel(gi, rgi, rtol, "grad input")
    _assert_rel(go, rgo, rtol, "grad output")


def test_emulated_loss_only_and_scaled_backward(emulator, tmp_path):
    x, o = _pair((2, 3, 7, 12))
    loss_only, none_i, none_o = emulate(emulator, tmp_path, x, o, with_grad=False, faithful=False)
    assert none_i is None and none_o is None
    loss, gi, go = emulate(emulator, tmp_path, x, o, faithful=False)
    torch.testing.assert_close(loss_only, loss, rtol=0, atol=0)
    _, si, so = emulate(emulator, tmp_path, x, o, faithful=False, scale=-3.25)
    torch.testing.assert_close(si, -3.25 * gi, rtol=1e-14, atol=0)
    torch.testing.assert_close(so, -3.25 * go, rtol=1e-14, atol=0)


def test_emulated_kernels_agree_with_cpu_kernel(emulator, tmp_path):
    from lowlight_fast import _ext

    if not _ext.has_op("smooth_loss"):
        pytest.skip("lowlight_fast._C not built")
    x, o = _pair((2, 3, 21, 18))
    x, o = x.float(), o.float()
    ours = torch.ops.lowlight_fast.smooth_loss_with_grad(x, o, 10.0, True)
    emulated = emulate(emulator, tmp_path, x, o, dtype="f32")
    for a, b in zip(emulated, ours):
        _assert_rel(a, b, 1e-5, "emulated CUDA vs CPU kernel")


# --- nvcc -------------------------------------------------------------------------------------------


def _nvcc() -> str | None:
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")
    candidate = Path(home) / "bin" / "nvcc" if home else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    return shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc not on this machine")
def test_nvcc_compiles_for_sm80_and_sm90(tmp_path):
    includes = [f"-I{CSRC}"] + [f"-I{p}" for p in cpp_extension.include_paths()]
    torch_inc = Path(cpp_extension.include_paths()[0])
    if not (torch_inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # CPU-only torch wheels omit this generated header of the CUDA build; supply its one macro.
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(f"-I{tmp_path / 'stub'}")
    obj = tmp_path / "smooth_loss.o"
    cmd = [
        _nvcc(), "-c", str(CUDA_SRC), "-o", str(obj), "-std=c++20", "-O3", "--threads", "2",
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
        *cpp_extension.COMMON_NVCC_FLAGS, *includes,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{res.stderr[-6000:]}"
    assert obj.stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is not None:  # not in every toolkit install; when present, check both archs are embedded
        listing = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True, check=True)
        assert "sm_80" in listing.stdout and "sm_90" in listing.stdout, listing.stdout


def test_emulation_and_cuda_build_share_the_kernels():
    # what the emulation checks is what nvcc compiles: both include the same kernel header
    assert '#include "cuda/smooth_loss_kernels.cuh"' in EMULATE_SRC.read_text()
    assert '#include "cuda/smooth_loss_kernels.cuh"' in CUDA_SRC.read_text()
    assert "__global__" in KERNEL_HEADERS[0].read_text()
