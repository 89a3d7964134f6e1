"""Each instruction-set path of the float32 CPU smooth_loss kernel against the float64 reference.

The CPU kernel picks its pair loops from torch's CPU capability (AVX-512, AVX2 with intrinsics, or the
generic loops the compiler vectorises for SSE2); ATEN_CPU_CAPABILITY lowers it, so a subprocess per
capability exercises each path on any machine that has it. Sizes are odd and chosen so that rows end
in a partial vector (the masked tail of the AVX2 loop), span several 128-pixel blocks and several
16-row chunks. A NaN in the image must give a NaN loss on every path (the exp clamp keeps NaN).
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

pytestmark = pytest.mark.skipif(
    not _ext.has_op("smooth_loss"), reason="lowlight_fast._C not built (python setup.py build_ext --inplace)"
)

ROOT = Path(__file__).resolve().parents[2]

# (shape, ycbcr, sigma, grad scale for smooth_loss_backward)
CASES = [
    ((1, 3, 3, 3), "faithful", 10.0, 1.0),
    ((2, 3, 7, 13), "per_pixel", 10.0, -2.5),
    ((1, 3, 19, 141), "faithful", 0.4, 1.0),
    ((1, 3, 35, 263), "per_pixel", 0.4, 0.5),
    ((2, 3, 18, 130), "faithful", 0.03, 1.0),
]

_CHILD = r"""
import json, sys, torch
import lowlight_fast.ops
from lowlight_fast.reference import sci_losses as ref

OPS = torch.ops.lowlight_fast
cases = json.loads(sys.argv[1])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "cases": []}

def rel(a, b):
    a, b = a.double(), b.double()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)

for i, (shape, ycbcr, sigma, scale) in enumerate(cases):
    g = torch.Generator().manual_seed(100 + i)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    o = torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 1e-4
    faithful = ycbcr == "faithful"
    loss, gi, go = OPS.smooth_loss_with_grad(x.float(), o.float(), sigma, faithful)
    loss_only = OPS.smooth_loss(x.float(), o.float(), sigma, faithful)
    bgi, bgo = OPS.smooth_loss_backward(torch.tensor(scale), x.float(), o.float(), sigma, faithful)
    xr, orr = x.clone().requires_grad_(), o.clone().requires_grad_()
    rloss = ref.smooth_loss(xr, orr, sigma, ycbcr)
    rgi, rgo = torch.autograd.grad(rloss, (xr, orr))
    out["cases"].append({
        "loss": rel(loss, rloss), "loss_only": rel(loss_only, rloss),
        "grad_input": rel(gi, rgi), "grad_output": rel(go, rgo),
        "scaled_grad_input": rel(bgi, scale * rgi), "scaled_grad_output": rel(bgo, scale * rgo),
        "dtypes": [str(t.dtype) for t in (loss, gi, go)],
    })

x = torch.rand((1, 3, 9, 21), generator=g)
o = torch.rand((1, 3, 9, 21), generator=g)
x[0, 1, 4, 10] = float("nan")
out["nan_loss"] = [OPS.smooth_loss(x, o, 10.0, True).item(), OPS.smooth_loss_with_grad(x, o, 10.0, False)[0].item()]
print(json.dumps(out))
"""


def _cpu_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return " avx2" in flags and " fma" in flags


def _run_child(capability: str) -> dict:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(CASES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_path_matches_reference(capability):
    if capability == "avx2" and not _cpu_has_avx2():
        pytest.skip("this CPU has no AVX2/FMA")
    res = _run_child(capability)
    assert res["capability"] == capability.upper()  # the knob the kernel's pick_rows_f32 reads took effect
    for (shape, ycbcr, sigma, scale), errs in zip(CASES, res["cases"]):
        what = f"{capability} {shape} {ycbcr} sigma={sigma} scale={scale}"
        assert errs["dtypes"] == ["torch.float32"] * 3, what
        assert errs["loss"] <= 2e-6 and errs["loss_only"] <= 2e-6, (what, errs)
        for key in ("grad_input", "grad_output", "scaled_grad_input", "scaled_grad_output"):
            assert errs[key] <= 1e-5, (what, key, errs)
    assert all(v != v for v in res["nan_loss"]), res["nan_loss"]  # NaN in the image: NaN loss
