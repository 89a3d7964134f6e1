"""Benchmark session set-up: the allocator setting every implementation runs under, shown in the header.

LOWLIGHT_FAST_KEEP_FREED_MEMORY=1 installs lowlight_fast's caching CPU allocator (lowlight_fast.memory)
for the whole run: freed tensors of 1 MiB or more are kept and reused, so no implementation pays page
faults on fresh memory for the sizes it allocates again; unset or 0, the benchmarks run on PyTorch's own
allocator (the library's default). THP_MEM_ALLOC_ENABLE=1 is PyTorch's own huge-page option. Neither
favours one implementation: all run in the same process, under the same setting.
"""
import os

from lowlight_fast import memory

_KEPT = memory.keep_freed_memory_by_default(False)


def pytest_report_header(config):
    return (
        f"allocator: keep freed memory={'yes' if _KEPT else 'no'}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )
