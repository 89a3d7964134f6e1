"""Keep freed CPU memory in the process for reuse (glibc), so that image-sized tensors stop page-faulting.

PyTorch's CPU allocator takes every tensor from malloc, and glibc serves large blocks (above 128 KiB to
32 MiB) with a fresh ``mmap`` and returns them to the system on ``free``. Every image-sized tensor of
every step is then new memory, and its first touch costs a page fault per 4 KiB page: on our CPU
machines writing 50 MiB of fresh memory takes 15 ms, writing it again 0.5 ms. The loss gradients and
activations of a training step are the same sizes step after step, so keeping the freed memory turns
that cost into nothing (a GPU caching allocator does the same; on the CPU jemalloc or tcmalloc
preloaded with ``LD_PRELOAD`` are the other usual fix).

:func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (large blocks come from the heap too) and
``M_TRIM_THRESHOLD`` to its maximum (freed memory stays with the process). The cost: the process keeps
its peak resident size until it exits. It is process-wide, so the ``lowlight-fast`` command sets it
for itself and a library only offers it; benchmarks apply it to every implementation alike when
``LOWLIGHT_FAST_KEEP_FREED_MEMORY=1``. Does not import torch.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "ENV"]

ENV = "LOWLIGHT_FAST_KEEP_FREED_MEMORY"

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_MAX = 2**31 - 1  # mallopt takes an int

_applied = False


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it: musl has no mallopt tunables)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse by this process (see the module text). Returns True when
    it is in effect, False where it cannot be done (not Linux with glibc). Calling it again is a no-op."""
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX))
    return _applied


def keep_freed_memory_if_asked() -> bool:
    """:func:`keep_freed_memory` when the environment variable LOWLIGHT_FAST_KEEP_FREED_MEMORY is 1."""
    return os.environ.get(ENV) == "1" and keep_freed_memory()
