"""Loads the compiled extension lowlight_fast._C once; the package works without it."""
from __future__ import annotations

import warnings

import torch  # loads libc10/libtorch, which _C links against

_C = None
_IMPORT_ERROR: BaseException | None = None

try:  # importing _C runs TORCH_LIBRARY and registers torch.ops.lowlight_fast.*
    from lowlight_fast import _C  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # not built, or built against another torch
    _IMPORT_ERROR = exc

_warned = False

BUILD_HINT = (
    "build it from the source tree with `pip install --no-build-isolation -e .` "
    "(see README.md)"
)


def available() -> bool:
    """True when the compiled kernels (lowlight_fast._C) are loaded."""
    return _C is not None


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
    """What this build contains: version, backends compiled, OpenMP, CUDA archs."""
    if _C is None:
        return {"cpu": False, "cuda": False, "openmp": False, "cuda_archs": "", "error": str(_IMPORT_ERROR)}
    return dict(_C.build_info())


def has_op(name: str) -> bool:
    """True when torch.ops.lowlight_fast.<name> is registered (extension built with that op)."""
    if _C is None:
        return False
    return hasattr(torch.ops.lowlight_fast, name)
