"""The CPU kernels' output pool (csrc/cpu/alloc.h, lowlight_fast.memory): big outputs reuse the blocks
that earlier outputs left, stay correct on reused (dirty) memory, stay within the limit, stand aside
under another allocator, and are given back on request. Each case runs in a fresh process: the pool is
process-wide and reads its environment once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowlight_fast import _ext

ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = r"""
import json, torch
from lowlight_fast import memory
from lowlight_fast.ops import le_curve as le_curve_op  # loads the kernels
from lowlight_fast.reference import curve
OPS = torch.ops.lowlight_fast
torch.manual_seed(0)
H, W = 512, 768  # each 3-channel float32 output: 4.5 MiB, above the pool's 4 MiB threshold

def inputs():
    return torch.rand(1, 3, H, W), torch.rand(1, 24, H, W) * 2 - 1

def check(x, r, o4, o8):
    w4, w8 = curve.le_curve(x.double(), r.double())
    torch.testing.assert_close(o4.double(), w4, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o8.double(), w8, rtol=1e-5, atol=1e-6)
"""

_REUSE = _PRELUDE + r"""
out = {}
x, r = inputs()
o4, o8 = OPS.le_curve(x, r)
check(x, r, o4, o8)
ptrs = {o4.data_ptr(), o8.data_ptr()}
out["first"] = memory.output_pool_stats()
del o4, o8
out["freed"] = memory.output_pool_stats()
x, r = inputs()  # new values: the reused blocks still hold the old outputs
o4, o8 = OPS.le_curve(x, r)
check(x, r, o4, o8)
out["same_blocks"] = {o4.data_ptr(), o8.data_ptr()} == ptrs
out["second"] = memory.output_pool_stats()
# a pooled tensor behaves like any other: resized beyond its block, it keeps its values
keep = o8.clone()
o8.resize_(2, 3, H, W)
out["resized_keeps_values"] = bool(torch.equal(o8[:1], keep))
# gradients (grad_x, grad_r) through autograd come from the pool too
xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
g = torch.randn(1, 3, H, W)
_, y8 = le_curve_op.le_curve(xg, rg)
gx, gr = torch.autograd.grad(y8, (xg, rg), g)
xd, rd = x.double().requires_grad_(), r.double().requires_grad_()
_, w8 = curve.le_curve(xd, rd)
wx, wr = torch.autograd.grad(w8, (xd, rd), g.double())
torch.testing.assert_close(gx.double(), wx, rtol=1e-4, atol=1e-5)
torch.testing.assert_close(gr.double(), wr, rtol=1e-4, atol=1e-5)
del o4, o8, y8, gx, gr, _
out["before_release"] = memory.output_pool_stats()
memory.release_cached_memory()
out["released"] = memory.output_pool_stats()
print(json.dumps(out))
"""

_LIMIT = _PRELUDE + r"""
sizes = []
for k in range(4):  # outputs of 4.5, 6.75, 9, 11.25 MiB (blocks of 6, 8, 10, 12 MiB), each freed at once
    o = OPS.le_curve_shared(torch.rand(1, 3, H + 256 * k, W), torch.rand(1, 3, 4, 4))
    del o
    sizes.append(memory.output_pool_stats())
print(json.dumps(sizes))
"""

_CONV = _PRELUDE + r"""
import lowlight_fast.ops.conv3x3  # noqa: F401 (loads the kernel)
out = {}
w, b = torch.randn(16, 16, 3, 3) / 12, torch.randn(16)
def conv():  # a 16-to-16 channel output of 4.8 MiB
    x = torch.randn(1, 16, 260, 300).contiguous(memory_format=torch.channels_last)
    y = OPS.conv3x3_nhwc(x, None, w, b, 1)
    want = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1).relu()
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    return y
y = conv()
out["channels_last"] = y.is_contiguous(memory_format=torch.channels_last) and y.shape == (1, 16, 260, 300)
ptr, before = y.data_ptr(), memory.output_pool_stats()
del y
y = conv()  # the same block again, holding the first output's values
out["same_block"] = y.data_ptr() == ptr
out["hits"] = memory.output_pool_stats()["hits"] - before["hits"]
print(json.dumps(out))
"""

_ASIDE = _PRELUDE + r"""
on = memory.keep_freed_memory(256 * 2**20)  # another CPU allocator in place: the pool stands aside
x, r = inputs()
o4, o8 = OPS.le_curve(x, r)
check(x, r, o4, o8)
print(json.dumps({"caching_allocator": on, "pool": memory.output_pool_stats()}))
"""


def _run(script: str, **env_vars) -> dict:
    if not _ext.has_op("le_curve") or not hasattr(_ext._C, "output_pool_stats"):
        pytest.fail("lowlight_fast._C is not built (scripts/setup.sh builds it)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for name in ("LOWLIGHT_FAST_OUTPUT_POOL", "LOWLIGHT_FAST_OUTPUT_POOL_MB", "LOWLIGHT_FAST_KEEP_FREED_MEMORY"):
        env.pop(name, None)
    env.update(env_vars)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_outputs_reuse_freed_blocks_and_stay_right():
    out = _run(_REUSE)
    first, freed, second = out["first"], out["freed"], out["second"]
    assert first["enabled"] and first["misses"] == 2 and first["hits"] == 0 and first["live_bytes"] > 0
    assert freed["cached_blocks"] == 2 and freed["live_bytes"] == 0
    assert out["same_blocks"] and second["hits"] == 2 and second["misses"] == 2
    assert out["resized_keeps_values"]
    assert out["before_release"]["cached_bytes"] > 0
    assert out["released"]["cached_bytes"] == 0 and out["released"]["cached_blocks"] == 0


def test_pool_keeps_at_most_its_limit():
    stats = _run(_LIMIT, LOWLIGHT_FAST_OUTPUT_POOL_MB="10")
    assert stats[-1]["limit_bytes"] == 10 * 2**20
    assert all(s["cached_bytes"] <= s["limit_bytes"] for s in stats)
    # each new block pushes the older one out (6 + 8 > 10 MiB), and a block above the limit is not kept
    assert [s["cached_blocks"] for s in stats] == [1, 1, 1, 1]
    assert [s["cached_bytes"] >> 20 for s in stats] == [6, 8, 10, 10]
    assert [s["misses"] for s in stats] == [1, 2, 3, 4]


def test_switched_off_every_output_is_fresh():
    out = _run(_REUSE, LOWLIGHT_FAST_OUTPUT_POOL="0")
    assert not out["first"]["enabled"]
    assert out["second"]["hits"] == 0 and out["second"]["misses"] == 0 and out["freed"]["cached_bytes"] == 0


def test_pool_stands_aside_under_another_allocator():
    out = _run(_ASIDE)
    if not out["caching_allocator"]:
        pytest.skip("the caching CPU allocator could not be installed here")
    assert out["pool"]["misses"] == 0 and out["pool"]["hits"] == 0


def test_convolution_outputs_come_from_the_pool():
    """conv3x3_nhwc's channels-last output is a pooled block too: reused when freed, right on dirty memory."""
    out = _run(_CONV)
    assert out["channels_last"] and out["same_block"] and out["hits"] == 1
