"""lowlight_fast.ops._registry and what every op shares from lowlight_fast.backend: the accumulator
dtype, the launch wrapper, and the Triton ops defined on first use, also inside a torch.compile trace.

The GPU form of the Triton ops (torch.library.triton_op) is checked without a GPU too: defining the
ops, finding their kernels, and tracing into them are CPU work; only running the kernels needs a GPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowlight_fast import backend
from lowlight_fast.ops import _registry

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.mark.parametrize(
    "dtype,acc",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_acc_dtype(dtype, acc):
    assert backend.acc_dtype(dtype) == acc


def test_wrap_triton_hands_interpreted_kernels_over_unwrapped(monkeypatch):
    # triton imported here, as the suite set TRITON_INTERPRET: Triton 3.6 imported while it is 0 leaves its
    # interpreter broken for the rest of the process ("Cannot call @triton.jit'd outside of ... a kernel")
    pytest.importorskip("triton")
    kernel = object()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.wrap_triton(kernel) is kernel
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="wrap_triton only works"):  # torch.library.wrap_triton's check
        backend.wrap_triton(kernel)


def test_use_triton_is_marked_as_assume_constant_result_marks():
    def probe():
        return 0

    marked = torch.compiler.assume_constant_result(probe)
    assert getattr(marked, "_dynamo_marked_constant", False)
    assert getattr(_registry.use_triton, "_dynamo_marked_constant", False)


def test_register_cpp_skips_ops_the_extension_lacks():
    _registry.register_cpp("no_such_op", fake=lambda x: x)  # would raise if it registered
    assert not hasattr(torch.ops.lowlight_fast, "no_such_op")


_FIRST_USE_UNDER_COMPILE = r"""
import torch
from lowlight_fast import use_backend
from lowlight_fast.ops import le_curve, tv_loss, zerodce_losses
from lowlight_fast.reference import curve, zerodce_losses as ref

assert not hasattr(torch.ops.lowlight_fast, "tv_loss_triton")

def f(x, r, a):
    o4, o8 = le_curve.le_curve(x, r)
    pe, pl, means = zerodce_losses.pooled_stats(o8, x)
    return tv_loss.tv_loss(r) + o4.sum() + le_curve.le_curve_shared(x, a).sum() + pe.sum() + means.sum()

def g(x, r, a):
    o4, o8 = curve.le_curve(x, r)
    pe = torch.nn.functional.avg_pool2d(o8.mean(dim=1, keepdim=True), 4)
    means = o8.mean(dim=(2, 3))
    shared = curve.le_curve_shared(x, a)
    return ref.illumination_smoothness(r) + o4.sum() + shared.sum() + pe.sum() + means.sum()

x = torch.rand(1, 3, 8, 9, dtype=torch.float64)
r = (torch.rand(1, 24, 8, 9, dtype=torch.float64) - 0.5).requires_grad_()
a = (torch.rand(1, 3, 3, 4, dtype=torch.float64) - 0.5).requires_grad_()
with use_backend("triton"):
    got = torch.compile(f, fullgraph=True)(x, r, a)
got_grads = torch.autograd.grad(got, (r, a))
want = g(x, r, a)
want_grads = torch.autograd.grad(want, (r, a))
torch.testing.assert_close(got, want)
for h, w in zip(got_grads, want_grads):
    torch.testing.assert_close(h, w)
print("ok")
"""


def test_triton_ops_are_defined_on_first_use_inside_a_compile_trace():
    """A fresh process whose first use of the triton backend is inside torch.compile(fullgraph=True):
    the ops are defined while Dynamo traces, and the compiled result and gradients are right."""
    pytest.importorskip("triton")
    assert _run(_FIRST_USE_UNDER_COMPILE, TRITON_INTERPRET="1").split()[-1] == "ok"


_GPU_FORM = r"""
import torch
from torch._functorch.aot_autograd import aot_module_simplified
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._library.triton import get_triton_kernels_for_op
from lowlight_fast.ops import _registry

@torch.compile(fullgraph=True)
def first_use(x):
    for kernels in ("le_curve", "tv_loss", "zerodce_losses"):
        _registry.use_triton(kernels)
    return x + 1

assert first_use(torch.zeros(2)).tolist() == [1.0, 1.0]
ops = torch.ops.lowlight_fast
names = ["le_curve", "le_curve_shared", "tv_loss", "zerodce_pooled"]
for name in names + [n + "_backward" for n in names]:
    op = name.replace("_backward", "_triton_backward") if name.endswith("_backward") else name + "_triton"
    print("found", op, *sorted(k.fn.__name__ for k in get_triton_kernels_for_op("lowlight_fast::" + op)))

traced = []
def capture(gm, example_inputs):
    def compiler(graph, inputs):
        traced.extend(
            kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__
            for n in graph.graph.nodes if "triton_kernel_wrapper" in str(n.target)
        )
        raise RuntimeError("traced")  # running the kernels needs a GPU
    return aot_module_simplified(gm, example_inputs, fw_compiler=compiler)

def every_op(x, r, a, g, m):
    out = list(ops.le_curve_triton(x, r)) + list(ops.le_curve_triton_backward(x, r, g, None))
    out += [ops.le_curve_shared_triton(x, a)] + list(ops.le_curve_shared_triton_backward(x, a, g))
    out += [ops.tv_loss_triton(r), ops.tv_loss_triton_backward(m.sum(), r)]
    pooled = ops.zerodce_pooled_triton(x, g)
    out += list(pooled) + list(ops.zerodce_pooled_triton_backward(pooled[0], pooled[1], pooled[2], x, True))
    return [o.sum() for o in out]

try:
    torch.compile(every_op, backend=capture, fullgraph=True)(
        torch.rand(2, 3, 8, 9), torch.rand(2, 24, 8, 9), torch.rand(2, 3, 3, 4), torch.rand(2, 3, 8, 9),
        torch.rand(()),
    )
except Exception as exc:
    assert "traced" in str(exc), exc
print("traced", *sorted(traced))
"""

_KERNELS = {
    "le_curve_triton": "_le_curve_fwd_kernel",
    "le_curve_triton_backward": "_le_curve_bwd_kernel",
    "le_curve_shared_triton": "_le_curve_shared_fwd_kernel",
    "le_curve_shared_triton_backward": "_le_curve_shared_bwd_kernel",
    "tv_loss_triton": "_tv_forward_kernel",
    "tv_loss_triton_backward": "_tv_backward_kernel",
    "zerodce_pooled_triton": "_pooled_forward_kernel",
    "zerodce_pooled_triton_backward": "_pooled_backward_kernel",
}


def test_gpu_form_is_a_triton_op_that_compile_traces_into():
    """Without TRITON_INTERPRET every Triton op is a torch.library.triton_op: defined on first use
    inside a trace, its kernels found for the compile cache key, and each kernel launch recorded in
    the graph that AOTAutograd hands to inductor."""
    pytest.importorskip("triton")
    lines = [line.split() for line in _run(_GPU_FORM).splitlines()]
    found = {words[1]: words[2:] for words in lines if words[:1] == ["found"]}
    assert found == {op: [kernel] for op, kernel in _KERNELS.items()}
    traced = next(words[1:] for words in lines if words[:1] == ["traced"])
    assert sorted(traced) == sorted(_KERNELS.values())
