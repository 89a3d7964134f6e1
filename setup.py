"""Builds the two compiled modules of lowlight_fast.

- ``lowlight_fast._C``: the ops (csrc/ops.cpp, csrc/cpu, and csrc/cuda when possible); its pybind
  module holds build facts only (``build_info``).
- ``lowlight_fast._runtime``: process-wide facilities that are not ops (csrc/runtime: the caching CPU
  allocator behind lowlight_fast.memory); C++ only, small, independent of the kernels.

LOWLIGHT_FAST_CUDA=auto (default): CUDA kernels when torch is a CUDA build and a CUDA toolkit is found.
LOWLIGHT_FAST_CUDA=1 forces them (error if impossible); LOWLIGHT_FAST_CUDA=0 skips them.
Build without isolation so the extensions are compiled against the torch already installed:
    pip install --no-build-isolation -e .

An in-place build (editable install, or ``build_ext --inplace``) writes a hash of its inputs next to the
modules (lowlight_fast/.build-inputs.sha256); ``python setup.py --inputs-hash`` prints the hash the
sources give now, so scripts/setup.sh can tell an up-to-date build from a stale one without compiling.
"""
import glob
import hashlib
import os
import sys
import sysconfig

from setuptools import setup
from torch.utils import cpp_extension as ce
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
STAMP = os.path.join(ROOT, "lowlight_fast", ".build-inputs.sha256")
# Environment variables that change what is compiled or how.
BUILD_ENV = ("LOWLIGHT_FAST_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CXX", "CC", "CFLAGS", "CXXFLAGS", "LDFLAGS")


def inputs_hash() -> str:
    """A hash of everything the compiled modules depend on: every file under csrc/, this file,
    pyproject.toml, the torch and Python builds, the CUDA toolkit found and the build variables."""
    h = hashlib.sha256()
    files = [p for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True) if os.path.isfile(p)]
    for path in sorted(files) + [os.path.join(ROOT, "setup.py"), os.path.join(ROOT, "pyproject.toml")]:
        h.update(os.path.relpath(path, ROOT).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    facts = [torch.__version__, str(torch.version.cuda), str(ce.CUDA_HOME), sysconfig.get_config_var("EXT_SUFFIX")]
    facts += [f"{name}={os.environ.get(name, '')}" for name in BUILD_ENV]
    h.update("\0".join(facts).encode())
    return h.hexdigest()


def _want_cuda() -> bool:
    flag = os.environ.get("LOWLIGHT_FAST_CUDA", "auto").strip().lower()
    possible = torch.version.cuda is not None and ce.CUDA_HOME is not None
    if flag in ("0", "off", "no", "false"):
        return False
    if flag in ("1", "on", "yes", "true", "force"):
        if not possible:
            raise RuntimeError(
                "LOWLIGHT_FAST_CUDA=1 but CUDA kernels cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={ce.CUDA_HOME!r}"
            )
        return True
    return possible


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    with_cuda = _want_cuda()
    sources = ["csrc/ops.cpp"] + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-DLOWLIGHT_FAST_VERSION=\"0.1.0\""]
    macros = []
    kwargs = {}
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu")
        macros.append(("LOWLIGHT_FAST_WITH_CUDA", None))
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


if __name__ == "__main__" and sys.argv[1:] == ["--inputs-hash"]:
    print(inputs_hash())
    sys.exit(0)

setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
