"""Keep freed CPU tensor memory for reuse, so that image-sized tensors stop page-faulting (opt-in).

PyTorch takes every CPU tensor from malloc, and glibc serves big blocks with a fresh ``mmap`` and unmaps
them on ``free``: every image-sized tensor of every step is new memory, and its first touch costs a page
fault per 4 KiB page. On our CPU machines writing 50 MiB of fresh memory takes 15 ms, writing it again
0.5 ms; a training step or an image enhancement allocates the same sizes over and over, so that cost is
a large part of their time. (glibc's ``M_MMAP_MAX=0`` does not fix it: the freed block is left a few
bytes too small for the next aligned request of the same size. jemalloc or tcmalloc in ``LD_PRELOAD``
are the usual outside fix.)

:func:`keep_freed_memory` installs lowlight_fast's caching CPU allocator (``csrc/cpu/caching_allocator.cpp``)
in front of PyTorch's: freed blocks of 1 MiB or more are kept, up to a limit, and handed out again for
requests of the same size class, as a GPU's caching allocator does; blocks that wait much longer than
reused ones do (sizes no longer asked for) go back to the system. It is process-wide, so a library only
offers it: the ``lowlight-fast`` command turns it on for itself, and the benchmarks turn it on for every
implementation alike when ``LOWLIGHT_FAST_KEEP_FREED_MEMORY=1``. The cost: up to ``limit`` bytes of freed
memory stay with the process (:func:`release_cached_memory` gives them back).
"""
from __future__ import annotations

import os

__all__ = [
    "ENV",
    "cached_memory_stats",
    "keep_freed_memory",
    "keep_freed_memory_if_asked",
    "release_cached_memory",
    "stop_keeping_freed_memory",
]

ENV = "LOWLIGHT_FAST_KEEP_FREED_MEMORY"


def _C():
    from lowlight_fast import _ext  # imports torch

    return _ext._C


def _default_limit() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def keep_freed_memory(limit: int | None = None) -> bool:
    """Turn on the caching CPU allocator: freed CPU tensors of 1 MiB or more are kept (at most ``limit``
    bytes of them; default: half the physical memory) and reused for the next tensors of their size.
    Returns True when it is in effect, False where it cannot be (the compiled extension is missing, or
    another library installed its own CPU allocator). Calling it again changes the limit."""
    if limit is None:
        limit = _default_limit()
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit: expected a number of bytes >= 0, got {limit!r}")
    c = _C()
    return bool(c is not None and c.cpu_cache_enable(limit))


def stop_keeping_freed_memory() -> None:
    """Turn caching off and give the cached blocks back (tensors still go through the allocator, uncached)."""
    c = _C()
    if c is not None:
        c.cpu_cache_disable()


def release_cached_memory() -> None:
    """Give the cached (freed, kept) blocks back to the system; caching stays on."""
    c = _C()
    if c is not None:
        c.cpu_cache_empty()


def cached_memory_stats() -> dict:
    """The allocator's counters: enabled, cached_bytes, cached_blocks, live_bytes, hits, misses, limit_bytes."""
    c = _C()
    if c is None:
        return {"enabled": False}
    return dict(c.cpu_cache_stats())


def keep_freed_memory_if_asked() -> bool:
    """:func:`keep_freed_memory` when the environment variable LOWLIGHT_FAST_KEEP_FREED_MEMORY is 1."""
    return os.environ.get(ENV) == "1" and keep_freed_memory()
