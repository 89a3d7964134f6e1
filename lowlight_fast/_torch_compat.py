"""What differs between the torch and Triton versions we test, in one place.

Tested: torch 2.13.0 (CPU build, Triton 3.9; CI) and torch 2.11.0 (CUDA 13 build, Triton 3.6; our GPU
machine). benchmarks/RESULTS.md records the command and the result of the whole suite on each.

- ``torch.library.wrap_triton`` of torch 2.11 rejects a kernel that runs under ``TRITON_INTERPRET=1``
  ("wrap_triton only works on functions annotated with triton.jit"); 2.13 accepts it. Under the
  interpreter our Triton ops are opaque custom ops that nothing traces into, so on every version the
  launchers call an interpreted kernel directly (:func:`launch_through_wrap_triton`).
- Triton's interpreter before 3.7 turns a kernel's integer argument into a one-element array and
  converts it with ``int()``, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to
  Python scalars"): every kernel that loops over a runtime bound fails. Interpreted Triton on
  Triton < 3.7 needs NumPy < 2.4 (:func:`interpreter_problem` says so; scripts/setup.sh installs it).
  Compiled kernels on GPUs are not affected.
- Inductor's cache (torch 2.13 seen) does not key the C++ kernels it compiles for the CPU on
  ``ATEN_CPU_CAPABILITY``: a process forced to AVX2 and one on the machine's own AVX-512 path reuse each
  other's kernels, and the mismatch corrupts the heap ("double free or corruption", "corrupted size vs.
  prev_size"; reproduced on an AVX-512 machine, benchmarks/RESULTS.md). A process that forces a
  capability gets a cache directory of its own (:func:`inductor_cache_per_cpu_capability`, applied when
  :mod:`lowlight_fast.backend` is imported).
"""
from __future__ import annotations

import os
import re

import torch


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.11.0+cu130"`` -> ``(2, 11, 0)``."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


TORCH = version_tuple(torch.__version__)


def launch_through_wrap_triton(interpreted: bool) -> bool:
    """Whether Triton launchers go through ``torch.library.wrap_triton``: on GPUs, so that torch.compile
    sees the kernels inside our ``triton_op``s; never under the interpreter (torch < 2.13 rejects
    interpreted kernels there, and the interpreted ops are opaque anyway)."""
    return not interpreted


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run our kernels with the installed versions, or None."""
    try:
        import numpy
        import triton
    except ImportError:
        return None
    if version_tuple(triton.__version__) < (3, 7) and version_tuple(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter fails with NumPy {numpy.__version__} (it converts "
                "one-element arrays with int(), which NumPy 2.4 refuses): install numpy<2.4, or Triton 3.7 or newer")
    return None


def _inductor_default_cache_dir():
    """``torch._inductor.runtime.cache_dir_utils.default_cache_dir``, without importing the package
    ``torch._inductor`` (its ``__init__`` loads Dynamo and SymPy: about a second at start-up, paid by
    every process that forces ATEN_CPU_CAPABILITY). That file depends on ``torch._environment`` only,
    so it is loaded on its own; None where it is not there."""
    import importlib.util
    import sys

    name = "torch._inductor.runtime.cache_dir_utils"
    if name in sys.modules:
        return sys.modules[name].default_cache_dir
    path = os.path.join(os.path.dirname(torch.__file__), "_inductor", "runtime", "cache_dir_utils.py")
    spec = importlib.util.spec_from_file_location("_lowlight_fast_inductor_cache_dir_utils", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - another torch layout: leave Inductor as it is
        return None
    return getattr(module, "default_cache_dir", None)


def inductor_cache_per_cpu_capability() -> str | None:
    """Where ``ATEN_CPU_CAPABILITY`` forces an instruction-set path and ``TORCHINDUCTOR_CACHE_DIR`` is not
    set, sets the latter to Inductor's default directory suffixed with the capability, so that kernels
    compiled for one path are never loaded by a process on another (see the module docstring). Returns
    the directory set, or None when nothing changed. Inductor reads the variable when it first compiles."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not capability or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    default_cache_dir = _inductor_default_cache_dir()
    if default_cache_dir is None:  # another layout of torch's internals: leave Inductor as it is
        return None
    path = f"{default_cache_dir()}_{re.sub(r'[^a-z0-9_]', '_', capability)}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path
