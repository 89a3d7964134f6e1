"""lowlight_fast.memory.keep_freed_memory: freed image-sized tensors are reused without page faults."""
import subprocess
import sys

import pytest

from lowlight_fast import memory

_CHILD = """
import resource, sys
import lowlight_fast
if sys.argv[1] == "keep":
    assert lowlight_fast.keep_freed_memory() is True
    assert lowlight_fast.keep_freed_memory() is True  # again: a no-op
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = torch.empty(16 * 2**20); t.fill_(1.0); del t   # 64 MiB, touched, freed
before = faults()
t = torch.empty(16 * 2**20); t.fill_(2.0)
print(faults() - before)
"""


def _faults_of_second_allocation(mode: str) -> int:
    res = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    return int(res.stdout.split()[-1])


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only: this system has no mallopt")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert _faults_of_second_allocation("default") > pages // 2  # fresh memory: a fault per page
    assert _faults_of_second_allocation("keep") < pages // 20  # the freed block, already mapped


def test_env_switch(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.keep_freed_memory_if_asked() is False
