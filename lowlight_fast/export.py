"""Export for deployment: ONNX (run with onnxruntime) and ``torch.export``.

- :class:`ExportableEnhancer`: a module whose ``forward(x)`` is a model's ``enhance_image(x)``, written
  so that one graph holds for every N, H and W: Zero-DCE++'s padding to a multiple of its scale factor,
  and the crop back, are index arithmetic on the size instead of Python branches on it.
- :func:`export_program`: a ``torch.export.ExportedProgram`` of it with the fused ops kept (they have
  fake implementations, so they trace); :func:`save_program` writes one with ``torch.export.save``.
- :func:`export_onnx` / :func:`onnx_from_program`: an ONNX file with one input, ``image``
  (N, 3, H, W) float32 in [0, 1], and one output, ``enhanced``, the image ``enhance_image`` returns;
  N, H and W dynamic unless ``static`` is given. The fused ops are lowered to standard operators
  through their export decompositions (``export_decompositions()`` in each ``lowlight_fast.ops``
  module; :func:`decompositions` collects them). ``fp16``: float16 weights and graph, the input and
  output still float32 (casts at both ends), so a caller sees the same interface.
- :func:`max_difference`: the largest difference between an ONNX file's output in onnxruntime and
  the model's own, on one image (what ``lowlight-fast export`` checks after writing).

The ONNX file is written by torch.onnx's dynamo exporter, from the ExportedProgram. The
TorchScript-based exporter (``dynamo=False``) also runs, but it records Python branches on the size
as constants of the example it traces: Zero-DCE++ exported from an example whose sides are multiples
of the scale factor then skips the padding for every other size, and gives wrong images or fails in
onnxruntime. torch.export instead proves the shape logic for the whole range of sizes, or refuses.

Needs the ``export`` extra (onnx, onnxscript, onnxruntime) for ONNX; ``torch.export`` needs nothing
beyond torch. A missing package raises :class:`MissingDependency` naming it.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import pkgutil
import re
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportableEnhancer", "MissingDependency", "decompositions",
    "export_onnx", "export_program", "exportable", "load_program", "lower_custom_ops", "max_difference",
    "onnx_from_program", "parse_static", "save_program",
]

FORMATS = ("onnx", "torch-export")
INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"
METADATA_PREFIX = "lowlight_fast."
EXPORT_EXTRA = "pip install 'lowlight_fast[export]' (onnx, onnxscript, onnxruntime)"
# The example the dynamic graph is traced with: batch and sides above 1 (size-1 dimensions would be
# specialised), sides odd and not multiples of any small scale factor.
_EXAMPLE = (2, 37, 53)


class MissingDependency(ImportError):
    """An optional package that export or the onnxruntime engine needs is not installed."""


def require(module: str, purpose: str):
    """``import module``, or a :class:`MissingDependency` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{purpose} needs the Python package {module}, which is not installed "
                                f"({exc}); {EXPORT_EXTRA}") from None


# --------------------------------------------------------------------------------- the exported module
def _downscale(x: torch.Tensor, dim: int, s: int, k: int) -> torch.Tensor:
    """Bilinear downscaling (align_corners=False) by exactly ``s`` along ``dim`` of ``x`` padded by edge
    replication to ``k * s``: output j samples the padded input at (j + 1/2) s - 1/2, between pixels
    j s + (s - 1) // 2 and the next one, with weights 1/2 each for an even ``s`` (an odd ``s`` hits
    the pixel). Indices past the edge are clamped to it, which is the replication."""
    n = x.shape[dim]
    i0 = torch.arange(k, device=x.device) * s + (s - 1) // 2
    first = x.index_select(dim, i0.clamp(max=n - 1))
    if s % 2:
        return first
    return first * 0.5 + x.index_select(dim, (i0 + 1).clamp(max=n - 1)) * 0.5


def _upsample_crop(a: torch.Tensor, dim: int, size: int, keep: int) -> torch.Tensor:
    """Bilinear upsampling (align_corners=True) of ``a`` along ``dim`` to ``size``, of which only the
    first ``keep`` outputs are computed (the crop back to the image): output i samples ``a`` at
    i (k - 1) / (size - 1), k being a's size along ``dim``."""
    k = a.shape[dim]
    src = torch.arange(keep, device=a.device, dtype=torch.float32) * ((k - 1) / (size - 1))
    i0 = src.to(torch.int64)  # src >= 0: truncation is floor
    frac = (src - i0).to(a.dtype).view([keep if d == dim % a.dim() else 1 for d in range(a.dim())])
    i1 = (i0 + 1).clamp(max=k - 1)
    return a.index_select(dim, i0) * (1 - frac) + a.index_select(dim, i1) * frac


def _zerodcepp_enhance(m, x: torch.Tensor) -> torch.Tensor:
    """``ZeroDCEPlusPlus.enhance_image`` at scale factor s > 1 for any size, without branching on it:
    the map is predicted from the image padded (edge replication) to multiples of s and downscaled by
    s, upsampled to the padded size and cropped back; as the curve is per pixel, it is applied to the
    image itself with the cropped map (what padding, enhancing and cropping the image computes)."""
    from lowlight_fast.models._common import curve_ops, dce_trunk

    s = m.scale_factor
    h, w = x.shape[-2:]
    kh, kw = (h + s - 1) // s, (w + s - 1) // s
    x_down = _downscale(_downscale(x, 2, s, kh), 3, s, kw)
    a = torch.tanh(dce_trunk(m, x_down))
    a = _upsample_crop(_upsample_crop(a, 2, kh * s, h), 3, kw * s, w)
    return curve_ops(m.fused).le_curve_shared(x, a)


class ExportableEnhancer(nn.Module):
    """``forward(x)``: ``model.enhance_image(x)`` for a float32 (N, 3, H, W) image in [0, 1], as one graph
    for every size (see :func:`_zerodcepp_enhance`). ``dtype``: what the weights and the arithmetic use
    (float16 for an fp16 export); the input is cast to it and the output back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

        self.model = model.to(dtype)
        self.dtype = dtype
        # Zero-DCE++ above scale factor 1 pads: through _zerodcepp_enhance, exported size-obliviously
        self.pads = isinstance(model, ZeroDCEPlusPlus) and model.scale_factor > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.pads:
            y = _zerodcepp_enhance(self.model, x)
        else:
            y = self.model.enhance_image(x)
        return y.to(torch.float32)


def exportable(model="zerodce", *, weights: str | os.PathLike | None = None, scale_factor: int | None = None,
               fp16: bool = False) -> ExportableEnhancer:
    """The :class:`ExportableEnhancer` of ``model``: a registry name (its inference model with
    ``weights``, by default the bundled ones; ``scale_factor`` for Zero-DCE++) or an EnhancementModel
    (copied: the caller's module is left as it is). Errors as :class:`lowlight_fast.enhance.Enhancer`'s."""
    from lowlight_fast.enhance import Enhancer

    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    module = Enhancer(model, weights, device="cpu", scale_factor=scale_factor).model
    return ExportableEnhancer(module, torch.float16 if fp16 else torch.float32).eval()


def parse_static(text: str) -> tuple[int, ...]:
    """``"HxW"`` (batch stays dynamic) or ``"NxHxW"`` (all fixed) -> the tuple of positive ints; a
    ValueError saying the expected form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text or "")
    sizes = tuple(int(g) for g in m.groups() if g is not None) if m else ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"expected HxW (such as 1080x1920) or NxHxW, positive integers, got {text!r}")
    return sizes


def _static_shape(static) -> tuple[int, ...] | None:
    if static is None:
        return None
    sizes = parse_static(static) if isinstance(static, str) else tuple(int(v) for v in static)
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise ValueError(f"static: expected (H, W) or (N, H, W) of positive integers, got {static!r}")
    return sizes


def _example_and_dims(static) -> tuple[torch.Tensor, dict]:
    from torch.export import Dim

    sizes = _static_shape(static)
    batch = Dim("batch", min=1)
    if sizes is None:
        n, h, w = _EXAMPLE
        dims = {0: batch, 2: Dim("height", min=1), 3: Dim("width", min=1)}
    elif len(sizes) == 2:
        n, (h, w) = _EXAMPLE[0], sizes
        dims = {0: batch}
    else:
        (n, h, w), dims = sizes, {}
    example = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0))
    return example, {"x": dims or None}


def export_program(model="zerodce", *, weights=None, scale_factor: int | None = None, fp16: bool = False,
                   static=None) -> torch.export.ExportedProgram:
    """``torch.export`` of :func:`exportable(model, ...) <exportable>`, the fused ops kept as
    ``torch.ops.lowlight_fast.*`` calls. Its input is (N, 3, H, W) float32, N, H and W dynamic (from
    1 up); ``static``: "HxW" / (H, W) fixes the sides, "NxHxW" / (N, H, W) the batch too. Run it with
    ``program.module()(x)``."""
    module = exportable(model, weights=weights, scale_factor=scale_factor, fp16=fp16)
    example, dims = _example_and_dims(static)
    with torch.no_grad(), _quiet(), _size_oblivious(module.pads):
        return torch.export.export(module, (example,), dynamic_shapes=dims)


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation notices and log lines about packages we do not use (torchvision's
    ops), which say nothing about the export, kept off the user's terminal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _size_oblivious(on: bool):
    """Zero-DCE++'s curve map is ceil(H / s) x ceil(W / s): tracing it, torch asks whether those sides
    are 1 (for layouts and broadcasting), a question no range of H answers, and refuses to export for
    images of s pixels or fewer. torch's ``backed_size_oblivious`` answers it as for any size, which
    holds here (nothing broadcasts over those sides); tests/export checks images from 1x1 up. The
    steps after torch.export (decompositions, ONNX) trace the program again and use it for every model,
    as a program does not say which model it came from."""
    from torch.fx.experimental import _config

    if not on or not hasattr(_config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return _config.patch(backed_size_oblivious=True)


def _atomic(path: Path, write, suffix: str = "") -> Path:
    """``write(tmp)`` then ``tmp`` renamed to ``path``; ``suffix``: what the temporary name must end with
    (torch.export.save wants .pt2)."""
    from lowlight_fast.io import temporary_path

    tmp = temporary_path(str(path)) + suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the file to write")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    return path


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """``torch.export.save`` to ``path`` (atomically). Load it with :func:`load_program`."""
    path = check_output_path(path)
    return _atomic(path, lambda tmp: torch.export.save(program, tmp), suffix=".pt2")


def load_program(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """``torch.export.load``, after registering the fused ops it may call (their fake implementations)."""
    import lowlight_fast.ops  # noqa: F401  (registration)

    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"exported program not found: {path}")
    return torch.export.load(path)


# --------------------------------------------------------------------------------------------- ONNX
def decompositions() -> dict:
    """The export decompositions of every fused op: ``export_decompositions()`` of each
    ``lowlight_fast.ops`` module that has one (the ops an inference graph can hold)."""
    import lowlight_fast.ops as ops

    table = {}
    for info in pkgutil.iter_modules(ops.__path__):
        module = importlib.import_module(f"{ops.__name__}.{info.name}")
        if hasattr(module, "export_decompositions"):
            table.update(module.export_decompositions())
    return table


def lower_custom_ops(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with each fused op replaced by its decomposition (standard ATen operators); a
    RuntimeError naming any lowlight_fast op that has none."""
    with _quiet(), _size_oblivious(True):  # it traces again (see _size_oblivious)
        lowered = program.run_decompositions(decompositions())  # only these: torch.onnx runs its own after
    left = sorted({str(n.target) for n in lowered.graph.nodes
                   if n.op == "call_function" and str(n.target).startswith("lowlight_fast.")})
    if left:
        raise RuntimeError(f"no export decomposition for {', '.join(left)}; add export_decompositions() "
                           "to its module in lowlight_fast/ops")
    return lowered


def _float_clamp_bounds(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``clamp(t, 0.0001, 1)`` (SCI's) with the integer bound made a float, in place: torch.onnx's type
    promotion otherwise turns the mixed bounds into a tensor that no clamp overload takes, and the
    export fails. The same values, so the same results."""
    def as_float(a):
        return float(a) if isinstance(a, int) and not isinstance(a, bool) else a

    clamp = torch.ops.aten.clamp.default
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target is clamp
             and any(as_float(a) is not a for a in n.args[1:])]
    for node in nodes:
        node.args = (node.args[0],) + tuple(as_float(a) for a in node.args[1:])
    if nodes:
        program.graph_module.recompile()
    return program


def _name_dims(proto) -> None:
    """The input's dynamic dimensions renamed batch, height, width (the exporter names them after its
    symbols), in every shape of the graph that uses them."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(dims, ("batch", None, "height", "width"))
             if new and d.dim_param}
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    graph = proto.graph
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)


def _metadata(model, scale_factor, fp16: bool, static) -> dict[str, str]:
    import lowlight_fast
    from lowlight_fast.models import registry

    module = model.model if isinstance(model, ExportableEnhancer) else model
    spec = registry.spec_for(module) if isinstance(module, nn.Module) else registry.get(model)
    if isinstance(module, nn.Module):
        scale_factor = getattr(module, "scale_factor", None)
    elif spec.scale_factor is not None and scale_factor is None:
        scale_factor = spec.scale_factor
    meta = {"model": spec.name if spec else type(module).__name__, "version": lowlight_fast.__version__,
            "precision": "float16" if fp16 else "float32", "torch": torch.__version__}
    if scale_factor is not None:
        meta["scale_factor"] = str(scale_factor)
    if static is not None:
        meta["static"] = "x".join(map(str, _static_shape(static)))
    return {METADATA_PREFIX + k: v for k, v in meta.items()}


def _check_onnx_arguments(path, opset):
    """The onnx module, after checking what an ONNX export needs before its slow part: the packages,
    the opset, the output path."""
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export (torch.onnx's dynamo exporter)")
    top = onnx.defs.onnx_opset_version()
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= top):
        raise ValueError(f"opset: expected an integer in 7..{top} (the installed onnx's range), "
                         f"got {opset!r}")
    check_output_path(path)
    return onnx


def onnx_from_program(program: torch.export.ExportedProgram, path: str | os.PathLike, *,
                      opset: int | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write ``program`` (from :func:`export_program`) as an ONNX file: the fused ops lowered
    (:func:`lower_custom_ops`), input ``image``, output ``enhanced``, ``opset`` (default: the
    exporter's), ``metadata`` as the model's metadata_props; checked with ``onnx.checker``."""
    onnx = _check_onnx_arguments(path, opset)
    path = check_output_path(path)
    lowered = _float_clamp_bounds(lower_custom_ops(program))
    try:
        with _quiet(), _size_oblivious(True):
            onnx_program = torch.onnx.export(lowered, dynamo=True, input_names=[INPUT_NAME],
                                             output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    except Exception as exc:  # the exporter's errors are long reports; the first line says what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"ONNX export failed{f' at opset {opset}' if opset else ''}: {first}") from exc
    proto = onnx_program.model_proto
    _name_dims(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic(path, write)


def export_onnx(path: str | os.PathLike, model="zerodce", *, weights=None, scale_factor: int | None = None,
                opset: int | None = None, fp16: bool = False, static=None) -> Path:
    """Export ``model`` (a registry name or an EnhancementModel; see :func:`exportable`) to the ONNX
    file ``path``: input ``image`` (N, 3, H, W) float32 in [0, 1], output ``enhanced`` (what
    ``enhance_image`` returns). N, H, W dynamic unless ``static`` ("HxW" or "NxHxW"); ``fp16``:
    float16 weights and arithmetic (float32 input and output); ``opset``: the ONNX opset. Returns
    the path. The file's metadata_props name the model, its scale factor and the precision."""
    _check_onnx_arguments(path, opset)  # what can be wrong is reported before the slow part
    _static_shape(static)
    program = export_program(model, weights=weights, scale_factor=scale_factor, fp16=fp16, static=static)
    metadata = _metadata(model, scale_factor, fp16, static)
    return onnx_from_program(program, path, opset=opset, metadata=metadata)


def max_difference(onnx_path: str | os.PathLike, reference: nn.Module, x: torch.Tensor) -> float:
    """max |onnxruntime's output - reference.enhance_image(x)| for the ONNX file at ``onnx_path`` (CPU)."""
    from lowlight_fast.enhance import OnnxEnhancer

    with torch.no_grad():
        expected = reference.enhance_image(x).float()
    got = OnnxEnhancer(onnx_path, device="cpu")(x)
    return float((got - expected).abs().max())
