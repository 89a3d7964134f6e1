"""One 1080p image through each model four ways, in one run: our fused path, the eager PyTorch
reference, and the exported ONNX file in onnxruntime (CPU provider), float32 and --fp16.

    PYTHONPATH=$PWD nice -n 10 python -m pytest benchmarks/bench_export.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds --benchmark-group-by=group

- ``fused``: ``Enhancer(model).model.enhance_image`` (the fused curve ops, channels-last convolutions).
- ``reference``: the same model with ``fused=False`` (the plain-PyTorch curve of lowlight_fast.reference).
- ``onnxruntime``, ``onnxruntime fp16``: :func:`lowlight_fast.export.export_onnx` files (dynamic sizes)
  run by :class:`lowlight_fast.enhance.OnnxEnhancer` on the CPU, with as many intra-op threads as torch.

Zero-DCE++ runs at its default scale factor (12). Each case records in extra_info its largest difference
from the fused path's output (``max_abs_diff_vs_fused``) and the thread count. The ONNX files are
exported once per session (not timed). CPU only.
"""
from __future__ import annotations

import pytest
import torch

from lowlight_fast.enhance import Enhancer
from lowlight_fast.models import registry

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

VARIANTS = ["fused", "reference", "onnxruntime", "onnxruntime fp16"]
H, W = 1080, 1920
ROUNDS = 3


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)) ** 2


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from lowlight_fast.export import export_onnx

    folder = tmp_path_factory.mktemp("bench_export")
    cache = {}

    def get(name, fp16):
        if (name, fp16) not in cache:
            cache[name, fp16] = export_onnx(folder / f"{name}{'_fp16' if fp16 else ''}.onnx", name, fp16=fp16)
        return cache[name, fp16]

    return get


@pytest.fixture(scope="module")
def fused_outputs(image):
    cache = {}

    def get(name):
        if name not in cache:
            with torch.inference_mode():
                cache[name] = Enhancer(name, device="cpu").model.enhance_image(image)
        return cache[name]

    return get


def _runner(name, variant, onnx_file):
    from lowlight_fast.enhance import OnnxEnhancer

    if variant.startswith("onnxruntime"):
        engine = OnnxEnhancer(onnx_file(name, variant.endswith("fp16")), device="cpu",
                              threads=torch.get_num_threads())
        return engine
    model = Enhancer(name, device="cpu").model
    model.fused = variant == "fused"

    def run(x):
        with torch.inference_mode():
            return model.enhance_image(x)

    return run


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(registry.NAMES))
def test_inference_1080p(benchmark, name, variant, image, onnx_file, fused_outputs):
    benchmark.group = f"{name} 1080p inference, cpu"
    run = _runner(name, variant, onnx_file)
    out = run(image)  # warm-up, and the output compared
    benchmark.extra_info["max_abs_diff_vs_fused"] = float((out - fused_outputs(name)).abs().max())
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(run, args=(image,), rounds=ROUNDS, warmup_rounds=0, iterations=1)
