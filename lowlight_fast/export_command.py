"""``lowlight-fast export`` and the ``--engine`` options of ``lowlight-fast enhance``: argument parsing,
messages and exit statuses over :mod:`lowlight_fast.export` and
:class:`lowlight_fast.enhance.OnnxEnhancer` (2: bad arguments or a missing package, 1: the export failed
or did not reproduce the model)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ENGINES = ("torch", "onnxruntime")
# What the check after an export accepts (max |exported - PyTorch| on a random image in [0, 1]): float32
# exports agree to rounding; float16 ones to float16's resolution (benchmarks/RESULTS.md has the figures).
TOLERANCE = {False: 1e-4, True: 1e-2}


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _static(text: str) -> tuple[int, ...]:
    from lowlight_fast.export import parse_static

    try:
        return parse_static(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_static.__name__ = "HxW"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowlight_fast.cli import int_at_least
    from lowlight_fast.export import FORMATS
    from lowlight_fast.models import registry

    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="file to write: model.onnx, or model.pt2 with --format torch-export")
    p.add_argument("--model", choices=registry.NAMES, default=registry.DEFAULT,
                   help=f"network (default: {registry.DEFAULT})")
    p.add_argument("--weights", metavar="PATH", help="weights file (default: the bundled weights)")
    p.add_argument("--scale-factor", type=int_at_least(1), default=None, metavar="S",
                   help="Zero-DCE++ only: predict the curves at 1/S resolution (default 12)")
    p.add_argument("--format", choices=FORMATS, default=None, help=(
        "onnx (standard operators, for onnxruntime and other runtimes) or torch-export (a torch.export "
        "program with the fused ops, saved with torch.export.save); default: torch-export for a .pt2 "
        "file, else onnx"))
    p.add_argument("--opset", type=int_at_least(7), default=None, metavar="N",
                   help="ONNX opset (default: the exporter's)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights and arithmetic; the input and output stay float32")
    p.add_argument("--static", type=_static, default=None, metavar="HxW", help=(
        "fix the image size (NxHxW: the batch too); default: batch, height and width dynamic"))
    p.add_argument("--no-verify", action="store_true", help=(
        "skip the check that runs the written file (in onnxruntime, or torch.export.load) against the "
        "PyTorch model on a random image"))
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=run)


def _verify(args, fmt: str, path: Path) -> tuple[str, float, tuple[int, ...]] | None:
    """(engine, max difference, test shape), or None when onnxruntime is missing for an ONNX file."""
    import torch

    from lowlight_fast import export
    from lowlight_fast.enhance import Enhancer

    static = args.static or ()
    n = static[0] if len(static) == 3 else 2
    h, w = static[-2:] if static else (37, 53)
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))
    reference = Enhancer(args.model, args.weights, "cpu", scale_factor=args.scale_factor).model
    if fmt == "onnx":
        try:
            return "onnxruntime", export.max_difference(path, reference, x), tuple(x.shape)
        except export.MissingDependency:
            return None
    with torch.no_grad():
        got = export.load_program(path).module()(x)
        err = float((got - reference.enhance_image(x)).abs().max())
    return "the loaded program", err, tuple(x.shape)


def run(args) -> int:
    from lowlight_fast import export

    fmt = args.format or ("torch-export" if Path(args.output).suffix == ".pt2" else "onnx")
    if fmt != "onnx" and args.opset is not None:
        _eprint("error: --opset applies to --format onnx only")
        return 2
    t0 = time.perf_counter()
    options = dict(weights=args.weights, scale_factor=args.scale_factor, fp16=args.fp16, static=args.static)
    try:
        if fmt == "onnx":
            path = export.export_onnx(args.output, args.model, opset=args.opset, **options)
        else:
            export.check_output_path(args.output)  # before the slow part
            path = export.save_program(export.export_program(args.model, **options), args.output)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as exc:
        _eprint(f"error: {exc}")
        return 2
    except RuntimeError as exc:
        _eprint(f"error: {exc}")
        return 1
    shape = f"static {'x'.join(map(str, args.static))}" if args.static else "dynamic batch, height, width"
    if not args.quiet:
        _eprint(f"wrote {path} ({fmt}, {args.model}, {'float16' if args.fp16 else 'float32'}, {shape}) "
                f"in {time.perf_counter() - t0:.1f} s")
    if args.no_verify:
        return 0
    checked = _verify(args, fmt, path)
    if checked is None:
        _eprint(f"warning: {path} not verified: onnxruntime is not installed ({export.EXPORT_EXTRA})")
        return 0
    engine, err, test_shape = checked
    tolerance = TOLERANCE[args.fp16]
    if err > tolerance:
        _eprint(f"error: {path} does not reproduce the model: max |{engine} - PyTorch| = {err:.3g} on a "
                f"random {'x'.join(map(str, test_shape))} image (more than {tolerance:g})")
        return 1
    if not args.quiet:
        _eprint(f"verified: max |{engine} - PyTorch| = {err:.2g} on a random "
                f"{'x'.join(map(str, test_shape))} image")
    return 0


# --------------------------------------------------------------------------- enhance --engine
def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--onnx`` for ``lowlight-fast enhance``."""
    p.add_argument("--engine", choices=ENGINES, default="torch", help=(
        "torch (default: the model in PyTorch with the fused kernels) or onnxruntime (an ONNX file "
        "from lowlight-fast export, given with --onnx: to check a deployment artefact on real photos)"))
    p.add_argument("--onnx", metavar="MODEL.onnx", help="the ONNX file --engine onnxruntime runs")


def engine_enhancer(args):
    """None for ``--engine torch``; for ``onnxruntime`` the :class:`OnnxEnhancer` of ``--onnx``. Options
    that do not apply raise ValueError (so do FileNotFoundError and MissingDependency, as
    OnnxEnhancer raises them)."""
    from lowlight_fast.enhance import OnnxEnhancer
    from lowlight_fast.models import registry

    if args.engine != "onnxruntime":
        if args.onnx:
            raise ValueError("--onnx applies to --engine onnxruntime; add that, or drop --onnx")
        return None
    if not args.onnx:
        raise ValueError("--engine onnxruntime needs --onnx MODEL.onnx (write one with lowlight-fast export)")
    given = [flag for flag, value in (("--weights", args.weights), ("--scale-factor", args.scale_factor),
                                      ("--tile", args.tile), ("--half", getattr(args, "half", False)))
             if value]
    if given:
        raise ValueError(f"{', '.join(given)}: not used by --engine onnxruntime, which runs the ONNX file as "
                         "it was exported (give them to lowlight-fast export instead; --half: export --fp16)")
    enhancer = OnnxEnhancer(args.onnx, device=args.device, threads=args.threads)
    held = enhancer.metadata.get("model")
    if args.model != registry.DEFAULT and held is not None and held != args.model:
        raise ValueError(f"--model {args.model}: {args.onnx} holds {held}")
    return enhancer
