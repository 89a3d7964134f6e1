"""ONNX exports in onnxruntime: one file per model serves every size and matches the PyTorch output;
float16 exports stay close; the options and the errors."""
from __future__ import annotations

import sys

import pytest
import torch

from lowlight_fast import export
from lowlight_fast.enhance import OnnxEnhancer
from tests.export.conftest import MODELS, SIZES, image, reference

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

STANDARD_DOMAINS = {"", "ai.onnx"}
# float16 weights and activations against the float32 model, max |difference| on images in [0, 1]
# (the measured figures: benchmarks/RESULTS.md)
FP16_BOUND = 5e-3


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_model_at_every_size(onnx_files, name):
    engine = OnnxEnhancer(onnx_files(name), device="cpu")
    model = reference(name)
    for n, h, w in SIZES:
        x = image(n, h, w, seed=h * w)
        with torch.no_grad():
            expected = model.enhance_image(x)
        got = engine(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_file_interface(onnx_files, name):
    proto = onnx.load(str(onnx_files(name)))
    onnx.checker.check_model(proto)
    (inp,), outputs = proto.graph.input, proto.graph.output
    assert inp.name == export.INPUT_NAME and outputs[0].name == export.OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in outputs[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 3, "height", "width"]
    # standard operators only: the fused ops are lowered, no custom domain or function is left
    assert {node.domain for node in proto.graph.node} <= STANDARD_DOMAINS
    assert not proto.functions
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["lowlight_fast.model"] == name
    assert meta["lowlight_fast.precision"] == "float32"
    assert ("lowlight_fast.scale_factor" in meta) == (name == "zerodcepp")
    assert OnnxEnhancer(onnx_files(name), device="cpu").name == name


def test_fp16_error_is_bounded(tmp_path):
    """The float16 export against the float32 PyTorch model: close, but really float16 inside."""
    path = export.export_onnx(tmp_path / "sci16.onnx", "sci", fp16=True)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in proto.graph.initializer if len(t.dims) == 4} == {onnx.TensorProto.FLOAT16}
    engine = OnnxEnhancer(path, device="cpu")
    assert engine.metadata["precision"] == "float16"
    model = reference("sci")
    errors = []
    for n, h, w in SIZES[:4]:
        x = image(n, h, w, seed=3)
        with torch.no_grad():
            errors.append(float((engine(x) - model.enhance_image(x)).abs().max()))
    print(f"sci fp16 max |error| per size: {errors}")
    assert max(errors) < FP16_BOUND
    assert max(errors) > 0  # float16 weights cannot reproduce float32 exactly


def test_static_export_and_opset(tmp_path):
    path = export.export_onnx(tmp_path / "static.onnx", "sci", static="2x16x24", opset=20)
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 16, 24]
    assert {o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS} == {20}
    engine = OnnxEnhancer(path, device="cpu")
    assert engine.metadata["static"] == "2x16x24"
    x = image(2, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(engine(x), reference("sci").enhance_image(x), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match=r"height 17 \(the model takes 16\)"):
        engine(image(2, 17, 24))
    with pytest.raises(RuntimeError, match=r"batch 1 \(the model takes 2\)"):
        engine(image(1, 16, 24))


def test_bad_export_arguments(tmp_path):
    with pytest.raises(ValueError, match="opset: expected an integer"):
        export.export_onnx(tmp_path / "m.onnx", "sci", opset=3)
    with pytest.raises(ValueError, match="does not exist"):
        export.export_onnx(tmp_path / "missing" / "m.onnx", "sci")
    with pytest.raises(ValueError, match="is a folder"):
        export.export_onnx(tmp_path, "sci")
    with pytest.raises(ValueError, match="expected HxW"):
        export.export_onnx(tmp_path / "m.onnx", "sci", static="16")
    with pytest.raises(ValueError, match="model: expected one of"):
        export.export_onnx(tmp_path / "m.onnx", "nosuchmodel")


def test_onnx_enhancer_errors(onnx_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxEnhancer(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        OnnxEnhancer(junk)
    with pytest.raises(ValueError, match="--device tpu"):
        OnnxEnhancer(onnx_files("sci"), device="tpu")
    engine = OnnxEnhancer(onnx_files("sci"), device="cpu")
    with pytest.raises(ValueError, match="expected values in"):
        engine(image(1, 8, 8) * 3)
    with pytest.raises(ValueError, match="3 channels"):
        engine(torch.rand(1, 4, 8, 8))


def test_missing_packages_are_named(monkeypatch, tmp_path):
    """Without onnxruntime / onnx (a None entry in sys.modules makes their import fail)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    needs = r"onnxruntime engine needs the Python package onnxruntime.*\[export\]"
    with pytest.raises(export.MissingDependency, match=needs):
        OnnxEnhancer(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(export.MissingDependency, match=r"ONNX export needs the Python package onnx\b"):
        export.export_onnx(tmp_path / "m.onnx", "sci")
