"""Loads the compiled modules once; the package works without them.

- ``lowlight_fast._C``: the ops (``torch.ops.lowlight_fast``) and ``build_info()``;
- ``lowlight_fast._runtime``: the caching CPU allocator (its Python side is lowlight_fast.memory).
"""
from __future__ import annotations

import warnings

import torch  # loads libc10/libtorch, which both modules link against

_C = None
_IMPORT_ERROR: BaseException | None = None
_runtime = None
_RUNTIME_IMPORT_ERROR: BaseException | None = None

try:  # importing _C runs TORCH_LIBRARY and registers torch.ops.lowlight_fast.*
    from lowlight_fast import _C  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # not built, or built against another torch
    _IMPORT_ERROR = exc

try:
    from lowlight_fast import _runtime  # type: ignore[attr-defined,no-redef]
except ImportError as exc:
    _RUNTIME_IMPORT_ERROR = exc

_warned = False

BUILD_HINT = (
    "build it from the source tree with `bash scripts/setup.sh` "
    "or `pip install --no-build-isolation -e .` (see README.md)"
)


def available() -> bool:
    """True when the compiled kernels (lowlight_fast._C) are loaded."""
    return _C is not None


def runtime_available() -> bool:
    """True when the compiled runtime (lowlight_fast._runtime: the caching CPU allocator) is loaded."""
    return _runtime is not None


def warn_if_missing() -> None:
    """Warn once per process that the compiled kernels are missing and the reference path is used."""
    global _warned
    if _C is None and not _warned:
        _warned = True
        warnings.warn(
            f"lowlight_fast: compiled extension not available ({_IMPORT_ERROR}); "
            f"using the pure-PyTorch reference path, which is slower. To get the fast kernels, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )


def build_info() -> dict:
    """What this build contains: version, backends compiled, OpenMP, CUDA archs, and ``runtime``: whether
    lowlight_fast._runtime (the caching CPU allocator) is built."""
    if _C is None:
        info = {"cpu": False, "cuda": False, "openmp": False, "cuda_archs": "", "error": str(_IMPORT_ERROR)}
    else:
        info = dict(_C.build_info())
    info["runtime"] = _runtime is not None
    if _runtime is None:
        info["runtime_error"] = str(_RUNTIME_IMPORT_ERROR)
    return info


def has_op(name: str) -> bool:
    """True when torch.ops.lowlight_fast.<name> is registered (extension built with that op)."""
    if _C is None:
        return False
    return hasattr(torch.ops.lowlight_fast, name)
