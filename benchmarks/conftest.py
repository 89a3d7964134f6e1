"""Benchmark session set-up: the allocator setting every implementation runs under, shown in the header.

LOWLIGHT_FAST_KEEP_FREED_MEMORY=1 makes glibc keep freed memory for reuse (lowlight_fast.memory) for the
whole run, so no implementation pays page faults on its fresh tensors; THP_MEM_ALLOC_ENABLE=1 is
PyTorch's own huge-page option. Neither favours one implementation: all run in the same process.
"""
import os

from lowlight_fast import memory

_KEPT = memory.keep_freed_memory_if_asked()


def pytest_report_header(config):
    return (
        f"allocator: keep freed memory={'yes' if _KEPT else 'no'}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )
