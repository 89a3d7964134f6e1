"""The fused ops' export decompositions agree with the ops, and the exportable module with the models."""
from __future__ import annotations

import pytest
import torch

from lowlight_fast import export
from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus
from lowlight_fast.ops import le_curve as ops
from tests.export.conftest import MODELS, SIZES, image, reference

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.lowlight_fast, "le_curve"),
                                reason="compiled extension not built: no fused ops to decompose")


def _cases():
    x = image(2, 13, 17)
    r = torch.rand(2, 24, 13, 17) * 2 - 1
    a_full = torch.rand(2, 3, 13, 17) * 2 - 1
    a_small = torch.rand(2, 3, 4, 5) * 2 - 1
    return {
        "le_curve": (torch.ops.lowlight_fast.le_curve.default, (x, r)),
        "le_curve_shared same size": (torch.ops.lowlight_fast.le_curve_shared.default, (x, a_full)),
        "le_curve_shared upsampled": (torch.ops.lowlight_fast.le_curve_shared.default, (x, a_small)),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_decomposition_matches_op(case):
    op, args = _cases()[case]
    table = export.decompositions()
    assert op in table
    expected = op(*args)
    got = table[op](*args)
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_the_table_is_collected_from_the_op_modules():
    assert set(ops.export_decompositions()) <= set(export.decompositions())


@pytest.mark.parametrize("name", MODELS)
def test_every_fused_op_of_a_model_has_a_decomposition(programs, name):
    used = {n.target for n in programs(name).graph.nodes
            if n.op == "call_function" and str(n.target).startswith("lowlight_fast.")}
    if name != "sci":
        assert used, "the program should keep the fused curve op"
    assert used <= set(export.decompositions())


def test_lowered_program_holds_standard_ops_only(programs):
    lowered = export.lower_custom_ops(programs("zerodce"))
    assert not [n for n in lowered.graph.nodes if str(n.target).startswith("lowlight_fast.")]
    x = image(2, 13, 7)
    with torch.no_grad():
        torch.testing.assert_close(lowered.module()(x), programs("zerodce").module()(x), atol=1e-5, rtol=0)


class _Curve(torch.nn.Module):
    def forward(self, x, r):
        return ops.le_curve(x, r)[1]


def test_a_fused_op_without_decomposition_is_named(monkeypatch):
    program = torch.export.export(_Curve(), (image(1, 4, 5), torch.rand(1, 24, 4, 5)))
    monkeypatch.setattr(export, "decompositions", dict)
    with pytest.raises(RuntimeError, match="no export decomposition for lowlight_fast.le_curve.default"):
        export.lower_custom_ops(program)


@pytest.mark.parametrize("s", [2, 3, 12])
def test_exportable_zerodcepp_matches_enhance_image(s):
    """The branch-free padding (index arithmetic) is Zero-DCE++'s padding, for even and odd factors."""
    model = reference("zerodcepp", scale_factor=s)
    module = export.exportable(model)
    assert isinstance(module.model, ZeroDCEPlusPlus) and module.model.scale_factor == s
    for n, h, w in SIZES:
        x = image(n, h, w, seed=h)
        with torch.no_grad():
            torch.testing.assert_close(module(x), model.enhance_image(x), atol=1e-5, rtol=0)


def test_exportable_copies_a_module():
    model = reference("zerodce")
    module = export.exportable(model, fp16=True)
    assert module.model is not model
    assert next(model.parameters()).dtype == torch.float32
    assert next(module.model.parameters()).dtype == torch.float16
