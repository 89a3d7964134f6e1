"""Builds the two compiled modules of lowlight_fast.

- ``lowlight_fast._C``: the ops (csrc/ops.cpp, csrc/cpu, and csrc/cuda when possible); its pybind
  module holds build facts only (``build_info``).
- ``lowlight_fast._runtime``: process-wide facilities that are not ops (csrc/runtime: the caching CPU
  allocator behind lowlight_fast.memory); C++ only, small, independent of the kernels.

LOWLIGHT_FAST_CUDA=auto (default): CUDA kernels when torch is a CUDA build and a CUDA toolkit is found.
LOWLIGHT_FAST_CUDA=1 (or FORCE_CUDA=1, as torchvision spells it) forces them (error if impossible);
LOWLIGHT_FAST_CUDA=0 skips them.

CUDA on a build machine without a GPU (a container, a CI box):
- TORCH_CUDA_ARCH_LIST chooses the GPU architectures, as for every torch extension. Unset, torch builds
  for the visible GPUs; with none visible, we build for DEFAULT_ARCHS (sm_80 and sm_90, and sm_100 and
  sm_120 where nvcc has them, PTX of the newest so that later GPUs JIT-compile it) instead of failing.
- CUDA_HOME (or CUDA_PATH) names the toolkit. Unset, torch guesses it from where ``nvcc`` is on PATH,
  which is wrong when that nvcc is a wrapper script (e.g. /usr/local/bin/nvcc running
  /usr/local/cuda-13.0/bin/nvcc): then we ask nvcc itself where it lives (``nvcc --dryrun``) and use
  the toolkit that holds the CUDA runtime library, or stop with a message saying to set CUDA_HOME.
Build without isolation so the extensions are compiled against the torch already installed:
    pip install --no-build-isolation -e .

An in-place build (editable install, or ``build_ext --inplace``) writes a hash of its inputs next to the
modules (lowlight_fast/.build-inputs.sha256); ``python setup.py --inputs-hash`` prints the hash the
sources give now, so scripts/setup.sh can tell an up-to-date build from a stale one without compiling.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup
from torch.utils import cpp_extension as ce
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
STAMP = os.path.join(ROOT, "lowlight_fast", ".build-inputs.sha256")
# Environment variables that change what is compiled or how.
BUILD_ENV = ("LOWLIGHT_FAST_CUDA", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CXX", "CC", "CFLAGS", "CXXFLAGS", "LDFLAGS")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "on", "yes", "true", "force")


def _has_cudart(home: str) -> bool:
    """Whether a CUDA toolkit at ``home`` holds the runtime library the link needs."""
    return any(glob.glob(os.path.join(home, sub, "libcudart.so*"))
               for sub in ("lib64", "lib", os.path.join("targets", "*", "lib")))


def _nvcc_home(nvcc: str) -> str | None:
    """The toolkit an nvcc belongs to, as nvcc itself reports it (``_HERE_`` of ``--dryrun``): right
    also when the nvcc on PATH is a wrapper script or a symlink farm."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.dirname(m.group(1).strip()) if m else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with, None when there is none (see the module docstring)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return ce.CUDA_HOME  # the user's choice, as torch reads it
    guess = ce.CUDA_HOME
    if guess and _has_cudart(guess):
        return guess
    nvcc = shutil.which("nvcc") or (guess and os.path.join(guess, "bin", "nvcc"))
    candidates = [_nvcc_home(nvcc)] if nvcc and os.path.exists(nvcc) else []
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if home and _has_cudart(home) and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if nvcc:
        raise RuntimeError(
            f"found nvcc ({nvcc}) but no CUDA runtime library (libcudart) beside it or in /usr/local/cuda*: "
            "set CUDA_HOME to the CUDA toolkit's directory (the one holding bin/nvcc and lib64/), "
            "or LOWLIGHT_FAST_CUDA=0 to build without the CUDA kernels")
    return None


def nvcc_version(home: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def default_archs(version: tuple[int, int] | None) -> str:
    """The architectures of a build for no particular GPU: Ampere (sm_80) and Hopper (sm_90), Blackwell
    (sm_100, sm_120) where nvcc knows them (CUDA 12.8+), PTX of the newest for GPUs after it."""
    archs = ["8.0", "9.0"]
    if version is not None and version >= (12, 8):
        archs += ["10.0", "12.0"]
    return ";".join(archs) + "+PTX"


def inputs_hash() -> str:
    """A hash of everything the compiled modules depend on: every file under csrc/, this file,
    the torch and Python builds, the CUDA toolkit found and the build variables. Not pyproject.toml: its
    metadata and extras change no compiled code, and a new optional dependency must not force a rebuild."""
    h = hashlib.sha256()
    files = [p for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True) if os.path.isfile(p)]
    for path in sorted(files) + [os.path.join(ROOT, "setup.py")]:
        h.update(os.path.relpath(path, ROOT).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    facts = [torch.__version__, str(torch.version.cuda), str(ce.CUDA_HOME), sysconfig.get_config_var("EXT_SUFFIX")]
    facts += [f"{name}={os.environ.get(name, '')}" for name in BUILD_ENV]
    h.update("\0".join(facts).encode())
    return h.hexdigest()


def _want_cuda() -> bool:
    flag = os.environ.get("LOWLIGHT_FAST_CUDA", "auto").strip().lower()
    if flag in ("0", "off", "no", "false"):
        return False
    possible = torch.version.cuda is not None and ce.CUDA_HOME is not None
    if _truthy(flag) or _truthy(os.environ.get("FORCE_CUDA")):
        if not possible:
            raise RuntimeError(
                "LOWLIGHT_FAST_CUDA=1 but CUDA kernels cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={ce.CUDA_HOME!r}"
            )
        return True
    return possible


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _configure_cuda() -> None:
    """Point torch's extension builder at the right toolkit and, with no GPU visible and no
    TORCH_CUDA_ARCH_LIST, at the default architectures. Before the inputs hash: both enter it."""
    if torch.version.cuda is None or os.environ.get("LOWLIGHT_FAST_CUDA", "").strip().lower() in ("0", "off", "no", "false"):
        return
    ce.CUDA_HOME = find_cuda_home()
    if ce.CUDA_HOME and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_archs(nvcc_version(ce.CUDA_HOME))


def _built_archs() -> str:
    """The architectures the CUDA kernels are compiled for, as TORCH_CUDA_ARCH_LIST spells them."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def extensions():
    with_cuda = _want_cuda()
    sources = ["csrc/ops.cpp"] + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-DLOWLIGHT_FAST_VERSION=\"0.1.0\""]
    macros = []
    kwargs = {}
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu")
        macros.append(("LOWLIGHT_FAST_WITH_CUDA", None))
        cxx = cxx + [f'-DLOWLIGHT_FAST_CUDA_ARCHS="{_built_archs()}"']  # for build_info()
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]}
        ext_cls = ce.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = ce.CppExtension
    include_dirs = [os.path.join(ROOT, "csrc")]
    return [
        ext_cls(
            "lowlight_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_link_args=["-fopenmp"],
            **kwargs,
        ),
        ce.CppExtension(
            "lowlight_fast._runtime",
            _sources("csrc/runtime/*.cpp"),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": ["-O2"]},
        ),
    ]


class BuildExtension(ce.BuildExtension):
    """torch's build_ext (ninja), plus the inputs stamp of an in-place build: removed before compiling,
    written once every module is built, so a failed or interrupted build never looks up to date."""

    def run(self):
        digest = inputs_hash()  # the sources as they are when the build starts
        if self.inplace and os.path.exists(STAMP):
            os.remove(STAMP)
        super().run()
        if self.inplace:
            with open(STAMP, "w") as f:
                f.write(digest + "\n")


_configure_cuda()

if __name__ == "__main__" and sys.argv[1:] == ["--inputs-hash"]:
    print(inputs_hash())
    sys.exit(0)

setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
