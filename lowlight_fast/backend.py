"""The one switch that chooses how an op runs.

``LOWLIGHT_FAST_BACKEND`` = ``auto`` (default) | ``reference`` | ``cpp`` | ``triton``, or
:func:`use_backend` in code (it wins over the environment while active).

- ``auto``: CUDA tensors use the Triton kernels where the op has them (else the CUDA C++ kernels);
  CPU tensors use the C++ kernels. Falls back to ``reference`` when the extension is not built.
- ``reference``: the pure-PyTorch code in :mod:`lowlight_fast.reference` (what the fused ops are
  tested against).
- ``cpp``: the compiled kernels of ``lowlight_fast._C`` (CPU, and CUDA where built).
- ``triton``: the Triton kernels; on CPU tensors only under ``TRITON_INTERPRET=1`` (how CI tests them).

Also here, as they hold for every op: whether Triton runs interpreted, how Triton launchers wrap their
kernels (:func:`wrap_triton`), and the accumulator dtype (:func:`acc_dtype`). Nothing here imports
triton before :func:`triton_available` is called.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

from lowlight_fast import _ext, _torch_compat

_torch_compat.inductor_cache_per_cpu_capability()  # a forced CPU path never loads another path's kernels

ENV_VAR = "LOWLIGHT_FAST_BACKEND"
CHOICES = ("auto", "reference", "cpp", "triton")
# per thread (and per asyncio task): a use_backend block in one thread is not seen by another
_override: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("lowlight_fast_backend", default=())


def _check(name: str) -> str:
    name = name.strip().lower()
    if name not in CHOICES:
        raise ValueError(f"{ENV_VAR} / use_backend: expected one of {', '.join(CHOICES)}, got {name!r}")
    return name


def requested() -> str:
    """The backend asked for: the innermost :func:`use_backend`, else the environment, else ``auto``."""
    stack = _override.get()
    if stack:
        return stack[-1]
    return _check(os.environ.get(ENV_VAR, "auto"))


# Traced code reads the choice once, as a constant of the graph (Dynamo cannot trace ContextVar.get).
# What torch.compiler.assume_constant_result(requested) sets; calling it would import torch._dynamo,
# and with it triton, at import (tests/ops/test_registry.py checks that the decorator sets this).
requested._dynamo_marked_constant = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with the given backend (``auto``, ``reference``, ``cpp`` or ``triton``).

    The choice holds in the calling thread (and asyncio task) only; other threads keep theirs."""
    token = _override.set(_override.get() + (_check(name),))
    try:
        yield
    finally:
        _override.reset(token)


def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_triton: bool | None = None  # imported on first use: importing triton is slow


def triton_available() -> bool:
    """Triton importable (GPU builds, or TRITON_INTERPRET=1 for CPU tensors)."""
    global _triton
    if _triton is None:
        _triton = _import_triton()
    return _triton


def triton_interpreted() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run through its interpreter, on CPU tensors (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    if not triton_available():
        return False
    if device.type == "cuda":
        return True
    return triton_interpreted()


def wrap_triton(kernel):
    """The kernel as a Triton launcher indexes and calls it, ``wrap_triton(kernel)[grid](...)``.

    On GPUs ``torch.library.wrap_triton(kernel)``: torch.compile then records the launch inside a
    ``triton_op`` and inductor sees the kernel. Under the interpreter the kernel itself: torch 2.11's
    wrap_triton rejects interpreted kernels, and the interpreted ops are opaque custom ops that nothing
    traces into. Named like torch's function because ``triton_op`` finds an op's kernels (for the
    torch.compile cache key) by looking for calls of that name in its launcher.
    """
    if not _torch_compat.launch_through_wrap_triton(triton_interpreted()):
        return kernel
    return torch.library.wrap_triton(kernel)


def on_device(t: torch.Tensor):
    """A context that makes ``t``'s GPU the current one for a kernel launch (Triton launches on the
    current device, which on a multi-GPU machine need not be the tensor's); nothing for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """What every implementation accumulates ``dtype`` tensors in: float64 for float64, else float32
    (float16 and bfloat16 included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def select(op: str, device: torch.device, *, has_triton: bool) -> str:
    """Which implementation runs ``op`` on ``device``: ``reference``, ``cpp`` or ``triton``.

    ``has_triton`` says whether the op has Triton kernels. Raises when an explicit request
    cannot be met, so that a benchmark or test never silently measures the wrong code.
    """
    want = requested()
    if want == "reference":
        return "reference"
    if want == "triton":
        if not has_triton:
            raise RuntimeError(f"{op}: no Triton implementation exists; use auto, cpp or reference")
        if not triton_runs_on(device):
            raise RuntimeError(
                f"{op}: Triton cannot run on {device.type} tensors here "
                "(install triton; for CPU tensors set TRITON_INTERPRET=1 before importing triton)"
            )
        problem = _torch_compat.interpreter_problem() if device.type != "cuda" else None
        if problem:
            raise RuntimeError(f"{op}: {problem}")
        return "triton"
    cpp_ok = _ext.has_op(op) and (device.type == "cpu" or (device.type == "cuda" and _ext.build_info()["cuda"]))
    if want == "cpp":
        if not cpp_ok:
            raise RuntimeError(
                f"{op}: compiled kernel not available for {device.type} tensors "
                f"(extension loaded: {_ext.available()}); {_ext.BUILD_HINT}"
            )
        return "cpp"
    # auto
    if device.type == "cuda" and has_triton and triton_runs_on(device):
        return "triton"
    if cpp_ok:
        return "cpp"
    if device.type == "cpu":
        _ext.warn_if_missing()
    return "reference"
