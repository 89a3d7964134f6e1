"""Keep freed CPU tensor memory for reuse, so that image-sized tensors stop page-faulting (opt-in).

PyTorch takes every CPU tensor from malloc, and glibc serves big blocks with a fresh ``mmap`` and unmaps
them on ``free``: every image-sized tensor of every step is new memory, and its first touch costs a page
fault per 4 KiB page, many times the cost of writing memory that is already mapped (benchmarks/RESULTS.md
has the figures). A training step or an image enhancement allocates the same sizes over and over, so that
cost is a large part of their time. (glibc's ``M_MMAP_MAX=0`` does not fix it: the freed block is left a
few bytes too small for the next aligned request of the same size. jemalloc or tcmalloc in ``LD_PRELOAD``
are the usual outside fix.)

:func:`keep_freed_memory` installs lowlight_fast's caching CPU allocator in front of PyTorch's: freed
blocks of 1 MiB or more are kept, up to a limit, and handed out again for requests of the same size
class, as a GPU's caching allocator does; blocks that wait much longer than reused ones do (sizes no
longer asked for) go back to the system. The cost: up to ``limit`` bytes of freed memory stay with the
process (:func:`release_cached_memory` gives them back). The allocator is the compiled module
``lowlight_fast._runtime`` (csrc/runtime), apart from the kernels of ``lowlight_fast._C``.

Apart from it, and always on unless ``LOWLIGHT_FAST_OUTPUT_POOL=0``: the **output pool** of lowlight_fast's
own CPU kernels (csrc/cpu/alloc.h). Their big outputs (4 MiB or more: enhanced images, convolutions, curve and loss
gradients) are taken from a small pool of the blocks that earlier outputs of theirs left behind, so an
output of a size seen before is written without page faults. It holds at most 1 GiB (or an eighth of the
physical memory, if less) of freed blocks, oldest given back first; it stands aside while any other CPU
allocator is installed (the caching allocator above included, which already reuses memory);
:func:`release_cached_memory` gives its blocks back too, and :func:`output_pool_stats` has its counters.
Other tensors are not affected.

The caching allocator is process-wide, so a library only offers it. The environment variable
``LOWLIGHT_FAST_KEEP_FREED_MEMORY`` has one meaning everywhere: ``0`` turns it off, ``1`` turns it on,
unset leaves the caller's default (:func:`keep_freed_memory_by_default`): the ``lowlight-fast`` command
turns it on for itself, the library and the benchmarks leave it off.
"""
from __future__ import annotations

import os

__all__ = [
    "ENV",
    "available",
    "cached_memory_stats",
    "keep_freed_memory",
    "keep_freed_memory_by_default",
    "keep_freed_memory_if_asked",
    "keep_freed_memory_wanted",
    "output_pool_stats",
    "release_cached_memory",
    "stop_keeping_freed_memory",
]

ENV = "LOWLIGHT_FAST_KEEP_FREED_MEMORY"
_OFF = ("0", "off", "no", "false")
_ON = ("1", "on", "yes", "true")


def _runtime():
    from lowlight_fast import _ext  # imports torch

    return _ext._runtime


def available() -> bool:
    """True when the caching allocator is built (the compiled module lowlight_fast._runtime loads)."""
    return _runtime() is not None


def _default_limit() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def keep_freed_memory(limit: int | None = None) -> bool:
    """Turn on the caching CPU allocator: freed CPU tensors of 1 MiB or more are kept (at most ``limit``
    bytes of them; default: half the physical memory) and reused for the next tensors of their size.
    Returns True when it is in effect, False where it cannot be (the compiled runtime is missing, or
    another library installed its own CPU allocator). Calling it again changes the limit."""
    if limit is None:
        limit = _default_limit()
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit: expected a number of bytes >= 0, got {limit!r}")
    rt = _runtime()
    return bool(rt is not None and rt.cache_enable(limit))


def stop_keeping_freed_memory() -> None:
    """Turn caching off and give the cached blocks back (tensors still go through the allocator, uncached)."""
    rt = _runtime()
    if rt is not None:
        rt.cache_disable()


def release_cached_memory() -> None:
    """Give the cached (freed, kept) blocks back to the system: the caching allocator's and the kernels'
    output pool's; both stay on."""
    rt = _runtime()
    if rt is not None:
        rt.cache_empty()
    c = _kernels()
    if c is not None and hasattr(c, "output_pool_release"):
        c.output_pool_release()


def _kernels():
    from lowlight_fast import _ext  # imports torch

    return _ext._C


def output_pool_stats() -> dict:
    """The counters of the CPU kernels' output pool: enabled (LOWLIGHT_FAST_OUTPUT_POOL is not 0),
    cached_bytes, cached_blocks, live_bytes, hits, misses, limit_bytes."""
    c = _kernels()
    if c is None or not hasattr(c, "output_pool_stats"):
        return {"enabled": False}
    return dict(c.output_pool_stats())


def cached_memory_stats() -> dict:
    """The allocator's counters: enabled, cached_bytes, cached_blocks, live_bytes, hits, misses, limit_bytes."""
    rt = _runtime()
    if rt is None:
        return {"enabled": False}
    return dict(rt.cache_stats())


def keep_freed_memory_wanted(default: bool) -> bool:
    """What LOWLIGHT_FAST_KEEP_FREED_MEMORY asks for: ``0`` (or off/no/false) no, ``1`` (or on/yes/true)
    yes, unset or empty ``default``. Reads the environment only (no torch import), so a caller can report
    the setting; another value is a ValueError that names the variable."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return default
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 0 (off) or 1 (on), or unset for the default")


def keep_freed_memory_by_default(default: bool) -> bool:
    """:func:`keep_freed_memory` when :func:`keep_freed_memory_wanted` (``default``: the caller's choice
    when the variable is unset; the command line passes True, the library and benchmarks False).
    Returns True when the allocator is in effect."""
    return keep_freed_memory_wanted(default) and keep_freed_memory()


def keep_freed_memory_if_asked() -> bool:
    """The library's default: :func:`keep_freed_memory` only when LOWLIGHT_FAST_KEEP_FREED_MEMORY turns it
    on (``keep_freed_memory_by_default(False)``)."""
    return keep_freed_memory_by_default(False)
