"""The run-time instruction-set choice of the CPU kernels (csrc/cpu/dispatch.h) and its report.

Each path is forced in a subprocess with ATEN_CPU_CAPABILITY (the choice is made once per process), and
its results are compared with the float64 reference: the AVX2 and baseline copies both have to be right,
not just the one this machine would pick.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowlight_fast import _ext

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {"le_curve", "le_curve_backward", "le_curve_shared", "le_curve_shared_backward", "tv_loss",
           "smooth_loss", "zerodce_pooled", "zerodce_saturation", "conv3x3_nhwc", "batch_norm_relu_nhwc"}

_CHILD = r"""
import json, torch
import lowlight_fast
from lowlight_fast import _ext
from lowlight_fast.reference import curve, zerodce_losses
OPS = torch.ops.lowlight_fast
torch.manual_seed(0)

def err(got, want):
    return ((got.double() - want).abs() / (want.abs() + 1)).max().item()

errors = {}
# widths that leave vector tails; > 512 elements per plane so that runs of full tiles occur too
x = torch.rand(2, 3, 19, 37, dtype=torch.float64)
r = torch.rand(2, 24, 19, 37, dtype=torch.float64) * 2 - 1
g4, g8 = torch.randn(2, 3, 19, 37, dtype=torch.float64), torch.randn(2, 3, 19, 37, dtype=torch.float64)
o4, o8 = OPS.le_curve(x.float(), r.float())
xd, rd = x.clone().requires_grad_(), r.clone().requires_grad_()
w4, w8 = curve.le_curve(xd, rd)
wx, wr = torch.autograd.grad((w4, w8), (xd, rd), (g4, g8))
gx, gr = OPS.le_curve_backward(x.float(), r.float(), g4.float(), g8.float())
c4, c8 = OPS.le_curve(x.float(), r.float().contiguous(memory_format=torch.channels_last))  # transposed tiles
errors["le_curve"] = max(err(o4, w4), err(o8, w8), err(c4, w4), err(c8, w8))
errors["le_curve_backward"] = max(err(gx, wx), err(gr, wr))

a = torch.rand(2, 3, 5, 7, dtype=torch.float64) * 2 - 1
ad = a.clone().requires_grad_()
xd = x.clone().requires_grad_()
want = curve.le_curve_shared(xd, ad)
wx, wa = torch.autograd.grad(want, (xd, ad), g8)
got = OPS.le_curve_shared(x.float(), a.float())
gx, ga = OPS.le_curve_shared_backward(x.float(), a.float(), g8.float())
errors["le_curve_shared"] = err(got, want)
errors["le_curve_shared_backward"] = max(err(gx, wx), err(ga, wa))

# tv_loss: a small map, and one of 16 MiB (its gradient takes the non-temporal-store branch)
tv = 0.0
for shape in [(2, 24, 19, 37), (1, 4, 1024, 1024)]:
    m = torch.randn(shape, dtype=torch.float64)
    md = m.clone().requires_grad_()
    want = zerodce_losses.illumination_smoothness(md)
    (wg,) = torch.autograd.grad(want * 0.5, md)
    loss, grad = OPS.tv_loss_with_grad(m.float(), 0.5)
    tv = max(tv, err(OPS.tv_loss(m.float()), want), err(loss, want * 0.5), err(grad, wg))
errors["tv_loss"] = tv

# zerodce_pooled (pair and single) and zerodce_saturation: widths leaving vector tails
e = torch.rand(2, 3, 21, 45, dtype=torch.float64)
l = torch.rand(2, 3, 21, 45, dtype=torch.float64)
pe, pl, means = OPS.zerodce_pooled(e.float(), l.float())
ps, ms = OPS.zerodce_pooled_single(e.float())
pool = lambda t: torch.nn.functional.avg_pool2d(t.mean(dim=1, keepdim=True), 4)
errors["zerodce_pooled"] = max(err(pe, pool(e)), err(pl, pool(l)), err(means, e.mean(dim=(2, 3))),
                               err(ps, pool(e)), err(ms, e.mean(dim=(2, 3))))
ed = e.clone().requires_grad_()
want = zerodce_losses.saturation(ed)
(wg,) = torch.autograd.grad(want, ed)
loss, m3, u3 = OPS.zerodce_saturation(e.float())
got = OPS.zerodce_saturation_backward(torch.ones(()), e.float(), m3, u3)
errors["zerodce_saturation"] = max(err(loss, want), err(got, wg))

# conv3x3_nhwc: two inputs of 16 and 5 channels (a full chunk and a tail), odd size; float32 and float64
ca, cb = torch.randn(2, 16, 9, 13, dtype=torch.float64), torch.randn(2, 5, 9, 13, dtype=torch.float64)
cw, cbias = torch.randn(7, 21, 3, 3, dtype=torch.float64) / 9, torch.randn(7, dtype=torch.float64)
want = torch.nn.functional.conv2d(torch.cat([ca, cb], 1), cw, cbias, 1, 1).relu()
tw = torch.tanh(torch.nn.functional.conv2d(torch.cat([ca, cb], 1), cw, cbias, 1, 1))
# and 3 input channels (direct sums) to 40 (blocks of 32 or 16 and a tail)
dw_, db_ = torch.randn(40, 3, 3, 3, dtype=torch.float64) / 5, torch.randn(40, dtype=torch.float64)
dwant = torch.nn.functional.conv2d(ca[:, :3], dw_, db_, 1, 1)
errors["conv3x3_nhwc"] = max(err(OPS.conv3x3_nhwc(ca.float(), cb.float(), cw.float(), cbias.float(), 1), want),
                             err(OPS.conv3x3_nhwc(ca.float(), cb.float(), cw.float(), cbias.float(), 2), tw),
                             err(OPS.conv3x3_nhwc(ca, cb, cw, cbias, 1), want) * 1e6,
                             err(OPS.conv3x3_nhwc(ca[:, :3].float(), None, dw_.float(), db_.float(), 0), dwant),
                             err(OPS.conv3x3_nhwc(ca[:, :3].float(), None, dw_.float(), db_.float(), 2),
                                 torch.tanh(dwant)))
# conv3x3_nhwc_weight_grad: the general kernel (21 channels from two inputs to 7) and the one for a
# few output channels (16 to 3: vectors of 32 and 16 along x's taps; 3 to 3: a vector and an
# overlapping tail), float32
wg = 0.0
for gx_, gx2_, go in [(torch.cat([ca, cb], 1), None, 7), (ca, cb, 7), (ca, None, 3), (ca[:, :3], None, 3)]:
    gg = torch.randn(2, go, 9, 13, dtype=torch.float64)
    cin = gx_.shape[1] + (gx2_.shape[1] if gx2_ is not None else 0)
    full = gx_ if gx2_ is None else torch.cat([gx_, gx2_], 1)
    want_w, want_b = torch.ops.aten.convolution_backward(
        gg, full, torch.zeros(go, cin, 3, 3, dtype=torch.float64), [go], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [False, True, True])[1:]
    got_w, got_b = OPS.conv3x3_nhwc_weight_grad(gg.float(), gx_.float(), None if gx2_ is None else gx2_.float())
    wg = max(wg, err(got_w, want_w), err(got_b, want_b))
errors["conv3x3_nhwc_weight_grad"] = wg
# batch_norm_relu_nhwc: 3 channels (blocks of 48 elements) over two chunks of the sums, 16 channels
# with a tail; forward and backward, float32
bnr = 0.0
for shape in [(1, 3, 150, 160), (2, 16, 5, 7)]:
    bx = (torch.randn(shape, dtype=torch.float64) + 0.5).contiguous(memory_format=torch.channels_last)
    bw, bb = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64) * 0.5
    bg = torch.randn(shape, dtype=torch.float64)
    xd, wd, bd = (t.clone().requires_grad_() for t in (bx, bw, bb))
    want = torch.nn.functional.relu(torch.nn.functional.batch_norm(xd, None, None, wd, bd, True))
    wants = [want, *torch.autograd.grad(want, (xd, wd, bd), bg)]
    y, mean, var = OPS.batch_norm_relu_nhwc(bx.float(), bw.float(), bb.float(), 1e-5)
    gx, gw, gb = OPS.batch_norm_relu_nhwc_backward(bg.float(), bx.float(), bw.float(), bb.float(), mean, var, 1e-5)
    bnr = max([bnr] + [err(got, w) for got, w in zip((y, gx, gw, gb), wants)])
errors["batch_norm_relu_nhwc"] = bnr
print(json.dumps({"paths": dict(_ext._C.cpu_paths()), "capability": torch.backends.cpu.get_cpu_capability(),
                  "errors": errors}))
"""


def _needs_extension():
    if not _ext.has_op("le_curve") or not hasattr(_ext._C, "cpu_paths"):
        pytest.fail("lowlight_fast._C is not built (scripts/setup.sh builds it)")


def _run_child(capability: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine_best() -> str:
    """The path this machine allows, from torch's own (unlowered) capability in this process."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if cap:
        pytest.skip("this test process itself runs with ATEN_CPU_CAPABILITY set")
    cap = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "default")


@pytest.mark.parametrize("forced", ["default", "avx2", None])
def test_forced_path_is_reported_and_correct(forced):
    _needs_extension()
    best = _machine_best()
    rank = ["default", "avx2", "avx512"]
    want = best if forced is None else rank[min(rank.index(forced), rank.index(best))]
    out = _run_child(forced)
    assert set(out["paths"]) >= KERNELS
    assert set(out["paths"].values()) == {want}, out
    # float32 against float64: the copies differ only in rounding (AVX2 contracts multiply-adds)
    for kernel, e in out["errors"].items():
        assert e < 2e-5, (kernel, e, out)


def test_paths_of_this_process_are_a_known_path():
    _needs_extension()
    paths = dict(_ext._C.cpu_paths())
    assert set(paths) >= KERNELS
    assert set(paths.values()) <= {"default", "avx2", "avx512"}


def test_info_names_the_path_of_each_kernel(capsys):
    _needs_extension()
    from lowlight_fast import cli

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("CPU paths"))
    for kernel, path in dict(_ext._C.cpu_paths()).items():
        assert f"{kernel} {path}" in line, line


def test_info_in_a_process_forced_to_the_baseline():
    _needs_extension()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               ATEN_CPU_CAPABILITY="default", LOWLIGHT_FAST_KEEP_FREED_MEMORY="0")
    proc = subprocess.run([sys.executable, "-m", "lowlight_fast", "info"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("CPU paths"))
    for kernel in KERNELS:
        assert f"{kernel} default" in line, line
