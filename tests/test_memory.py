"""lowlight_fast.memory: the caching CPU allocator reuses freed image-sized blocks without page faults."""
import subprocess
import sys

import pytest
import torch

from lowlight_fast import _ext, memory

_CHILD = """
import resource, sys
import torch
import lowlight_fast
if sys.argv[1] == "keep":
    assert lowlight_fast.keep_freed_memory() is True
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for step in range(4):  # a training loop: the same sizes, allocated, written and freed every step
    before = faults()
    a = torch.empty(16 * 2**20); a.fill_(1.0)
    b = torch.empty(3 * 2**20 + 5); b.fill_(2.0)
    del a, b
    counts.append(faults() - before)
print(*counts)
"""

PAGES = (64 + 12) * 2**20 // 4096  # the pages of the two tensors


def _faults_per_step(mode: str) -> list[int]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    res = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True, env=env)
    return [int(v) for v in res.stdout.split()]


@pytest.fixture
def cache():
    if not _ext.runtime_available():
        pytest.fail("lowlight_fast._runtime is not built (scripts/setup.sh builds it)")
    yield
    memory.stop_keeping_freed_memory()


def test_freed_blocks_are_reused_without_page_faults():
    kept = _faults_per_step("keep")
    assert max(kept[1:]) < PAGES // 20  # after the first step, the memory is reused: almost no faults
    if _thp_mode() != "always":  # (with THP always on, fresh memory faults once per 2 MiB)
        assert kept[0] > PAGES // 2  # the first step maps the memory, a fault per page
        assert min(_faults_per_step("default")) > PAGES // 2  # without the cache every step does


def test_reuse_counts_and_contents(cache):
    assert memory.keep_freed_memory(limit=64 * 2**20)
    memory.release_cached_memory()
    start = memory.cached_memory_stats()
    a = torch.full((2**20,), 3.0)  # 4 MiB
    ptr = a.data_ptr()
    del a
    stats = memory.cached_memory_stats()
    assert stats["cached_bytes"] == start["cached_bytes"] + 4 * 2**20
    b = torch.empty(2**20 - 7)  # the same size class (at most 1/8 larger)
    assert b.data_ptr() == ptr
    assert memory.cached_memory_stats()["hits"] == start["hits"] + 1
    b.fill_(5.0)
    torch.testing.assert_close(b.sum(), torch.tensor(5.0 * b.numel()), rtol=1e-6, atol=0)
    small = torch.ones(1000)  # small blocks pass through, never cached
    del small, b
    assert memory.cached_memory_stats()["cached_bytes"] == start["cached_bytes"] + 4 * 2**20


def test_limit_evicts_oldest_and_release(cache):
    assert memory.keep_freed_memory(limit=10 * 2**20)
    memory.release_cached_memory()
    blocks = [torch.empty(2**20) for _ in range(4)]  # 4 MiB each
    del blocks
    assert memory.cached_memory_stats()["cached_bytes"] <= 10 * 2**20
    memory.release_cached_memory()
    assert memory.cached_memory_stats()["cached_bytes"] == 0
    memory.stop_keeping_freed_memory()
    x = torch.empty(2**20)
    del x
    stats = memory.cached_memory_stats()
    assert not stats["enabled"] and stats["cached_bytes"] == 0


def test_bad_limit_and_env_switch(monkeypatch):
    with pytest.raises(ValueError, match="limit"):
        memory.keep_freed_memory(limit=-1)
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.keep_freed_memory_if_asked() is False


def test_env_switch_has_one_meaning_whatever_the_default(monkeypatch):
    """LOWLIGHT_FAST_KEEP_FREED_MEMORY: 0 off and 1 on for every caller; unset, the caller's default."""
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda *a, **k: calls.append("on") or True)
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.keep_freed_memory_wanted(True) is True and memory.keep_freed_memory_wanted(False) is False
    assert memory.keep_freed_memory_by_default(False) is False and calls == []
    assert memory.keep_freed_memory_by_default(True) is True and calls == ["on"]
    for off in ("0", "off", " False "):
        monkeypatch.setenv(memory.ENV, off)
        assert memory.keep_freed_memory_by_default(True) is False
        assert memory.keep_freed_memory_if_asked() is False
    assert calls == ["on"]
    for on in ("1", "yes", "TRUE"):
        monkeypatch.setenv(memory.ENV, on)
        assert memory.keep_freed_memory_by_default(False) is True
    assert memory.keep_freed_memory_if_asked() is True
    assert calls == ["on"] * 5
    monkeypatch.setenv(memory.ENV, "sometimes")
    with pytest.raises(ValueError, match="LOWLIGHT_FAST_KEEP_FREED_MEMORY='sometimes'"):
        memory.keep_freed_memory_by_default(True)
    assert calls == ["on"] * 5


def test_allocator_is_its_own_runtime_module(cache):
    """The caching allocator is lowlight_fast._runtime, apart from the kernels: one allocator per process."""
    from lowlight_fast import _runtime

    assert memory.available() and _ext.runtime_available() and _ext.build_info()["runtime"] is True
    assert {"cache_enable", "cache_disable", "cache_empty", "cache_stats"} <= set(dir(_runtime))
    assert memory.keep_freed_memory(limit=8 * 2**20)
    assert _runtime.cache_stats() == memory.cached_memory_stats()
    assert memory.cached_memory_stats()["enabled"] and memory.cached_memory_stats()["limit_bytes"] == 8 * 2**20


def test_command_line_keeps_freed_memory_for_heavy_commands(monkeypatch, tmp_path):
    from lowlight_fast import cli

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda *a, **k: calls.append("on") or True)
    cli.main(["info"])
    assert calls == []
    cli.main(["enhance", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")])  # fails: no such file
    assert calls == ["on"]
    monkeypatch.setenv(memory.ENV, "0")  # the user's opt-out
    cli.main(["enhance", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")])
    assert calls == ["on"]


def test_threads_and_forked_workers(cache):
    """Concurrent allocation from several threads, then a DataLoader that forks workers while blocks are
    cached: every tensor keeps its own values and the workers allocate without deadlock."""
    import threading

    assert memory.keep_freed_memory(limit=256 * 2**20)
    errors = []

    def work(seed):
        try:
            for i in range(20):
                t = torch.full((2**18 + seed * 1000 + i,), float(seed))  # 1 MiB and up: cached sizes
                u = t * 2
                if not (bool((u == 2 * seed).all()) and bool((t == seed).all())):
                    errors.append(seed)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    class Big(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((2**19,), float(i)).sum()  # 2 MiB in the worker

    loader = torch.utils.data.DataLoader(Big(), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    sums = torch.cat(list(loader))
    torch.testing.assert_close(sums, torch.arange(4.0) * 2**19)


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "unavailable"
    return text.split("[")[1].split("]")[0]


_HUGE_CHILD = """
import torch, lowlight_fast.ops
def anon_huge_kib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
x = torch.rand(1, 8, 1024, 2048)  # 64 MiB
before = anon_huge_kib()
loss, grad = torch.ops.lowlight_fast.tv_loss_with_grad(x, 1.0)  # a 64 MiB output
print(anon_huge_kib() - before)
"""


@pytest.mark.skipif(_thp_mode() != "madvise", reason="needs transparent huge pages in madvise mode")
def test_kernel_outputs_get_huge_pages_unless_turned_off():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    run = lambda extra: int(subprocess.run([sys.executable, "-c", _HUGE_CHILD], capture_output=True, text=True,  # noqa: E731
                                           check=True, env={**env, **extra}).stdout.split()[-1])
    assert run({}) >= 4 * 1024  # huge pages (how many depends on the kernel finding free 2 MiB blocks)
    assert run({"LOWLIGHT_FAST_HUGE_PAGES": "0"}) == 0


_OOM_CHILD = """
import resource, torch, lowlight_fast
from lowlight_fast import memory
assert memory.keep_freed_memory(limit=2**40)
def vm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1])
resource.setrlimit(resource.RLIMIT_AS, ((vm_kib() + 600 * 1024) * 1024, resource.RLIM_INFINITY))
a = torch.empty(300 * 2**20, dtype=torch.uint8); a.fill_(1); del a   # 300 MiB, now cached
assert memory.cached_memory_stats()["cached_bytes"] >= 300 * 2**20
b = torch.empty(420 * 2**20, dtype=torch.uint8)  # does not fit beside the cached block
b.fill_(2)
print(memory.cached_memory_stats()["cached_bytes"], int(b[-1]))
"""


def test_out_of_memory_gives_the_cache_back_and_retries():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _OOM_CHILD], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["0", "2"]


def test_blocks_of_sizes_no_longer_used_are_given_back(cache):
    """Images of ever new sizes (a folder of photos): the cache keeps the recent sizes, not every size."""
    assert memory.keep_freed_memory(limit=2**40)
    memory.release_cached_memory()
    mib = 2**20 // 4
    for size in range(100):  # 100 "images", each a new size class, 3 blocks each
        blocks = [torch.empty((8 + size) * mib) for _ in range(3)]
        del blocks
    stats = memory.cached_memory_stats()
    assert stats["cached_blocks"] <= 40  # the blocks of the last dozen sizes at most, not 300
    again = [torch.empty((8 + 99) * mib) for _ in range(3)]  # the last size is still there
    assert memory.cached_memory_stats()["hits"] >= stats["hits"] + 3
    del again


def test_enhancer_gives_back_the_blocks_of_the_previous_image_size(cache):
    """The command line keeps freed blocks while images share a size, and gives them back at a new size."""
    from lowlight_fast.enhance import Enhancer

    assert memory.keep_freed_memory()
    enhancer = Enhancer("zerodce", None, torch.device("cpu"))
    first = torch.rand(1, 3, 120, 160) * 0.3
    enhancer(first)
    enhancer(first)
    same = memory.cached_memory_stats()
    assert same["cached_bytes"] > 0 and same["hits"] > 0  # the second image reused the first one's blocks
    enhancer(torch.rand(1, 3, 240, 200) * 0.3)  # a new size: the 120x160 blocks are given back first
    after = memory.cached_memory_stats()
    assert after["cached_blocks"] <= same["cached_blocks"]
    torch.testing.assert_close(enhancer(first), enhancer.model.enhance_image(first))
