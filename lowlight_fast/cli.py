"""The ``lowlight-fast`` command: ``enhance``, ``demo``, ``train``, ``benchmark``, ``evaluate``, ``export``,
``info``.

A thin shell: it parses the arguments, shows progress and turns errors into one-line messages and
exit statuses (2: bad arguments, 1: some inputs failed). The work is the library's:
:mod:`lowlight_fast.enhance`, :mod:`lowlight_fast.train`, :mod:`lowlight_fast.benchmark`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (argparse turns the ValueError into a usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def int_between(low: int, high: int):
    """An argparse type: an integer in [low, high]."""
    at_least = int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    parse.__name__ = f"integer in {low}..{high}"
    return parse


def _output_folder_error(path: str) -> str | None:
    """Why ``path`` cannot be the output folder (None when it can): an existing file, or a folder that
    cannot be created or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"-o {path}: exists and is not a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"-o {path}: cannot create the output folder ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"-o {path}: the output folder is not writable"
    return None


# --------------------------------------------------------------------------------------------- enhance
def _enhance_with_progress(files: list[str], outdir: str, enhancer, progress: bool, desc: str,
                           **options) -> tuple[list[str], list[str]]:
    """lowlight_fast.enhance.enhance_files with a progress bar (when ``progress``) and each error
    printed as it happens, above the bar."""
    from tqdm import tqdm

    from lowlight_fast.enhance import enhance_files

    with tqdm(total=len(files), unit="img", desc=desc, disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        return enhance_files(files, outdir, enhancer, on_progress=lambda _: bar.update(1),
                             on_error=lambda msg: bar.write(f"error: {msg}", file=sys.stderr),
                             on_warning=lambda msg: bar.write(f"warning: {msg}", file=sys.stderr), **options)


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # on top of the flushed weights: activations too, where it reaches


def _scaled_models() -> list[str]:
    from lowlight_fast.models import registry

    return [n for n in registry.NAMES if registry.get(n).scale_factor is not None]


def cmd_enhance(args) -> int:
    from lowlight_fast.enhance import MIN_TILE, Enhancer, collect_inputs, output_extension

    try:
        ext = output_extension(args.ext)
    except ValueError as exc:
        _eprint(f"error: --ext {exc}")
        return 2
    if args.scale_factor is not None and args.model not in _scaled_models():
        _eprint(f"error: --scale-factor applies to --model {' or '.join(_scaled_models())} only")
        return 2
    if args.tile and args.tile < MIN_TILE:
        _eprint(f"error: --tile must be at least {MIN_TILE} (got {args.tile})")
        return 2
    problem = _output_folder_error(args.output)
    if problem:
        _eprint(f"error: {problem}")
        return 2
    inputs = collect_inputs(args.inputs)
    for e in inputs.errors:
        _eprint(f"error: {e}")
    from lowlight_fast import video_command
    from lowlight_fast.video import is_video

    videos = [f for f in inputs.files if is_video(f)]
    try:
        video_options = video_command.options_from(args) if videos else None
    except ValueError as exc:
        _eprint(f"error: {exc}")
        return 2
    _setup_threads(args.threads)
    from lowlight_fast.export_command import engine_enhancer

    try:
        enhancer = engine_enhancer(args) or Enhancer(
            args.model, args.weights, args.device, scale_factor=args.scale_factor or None, tile=args.tile or None,
            half=args.half)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _eprint(f"error: {exc}")
        return 2
    t0 = time.perf_counter()
    images = [f for f in inputs.files if not is_video(f)]
    written, errors = _enhance_with_progress(images, args.output, enhancer, not args.quiet and bool(images),
                                             "enhance", ext=ext, quality=args.quality,
                                             png_compression=args.png_compression, max_pixels=args.max_pixels,
                                             io_threads=args.io_threads) if images or not videos else ([], [])
    dt = time.perf_counter() - t0
    if videos:
        t1 = time.perf_counter()
        clips, video_errors, frames = video_command.run(videos, args.output, enhancer, video_options,
                                                        not args.quiet)
        errors += video_errors
        dt_video = time.perf_counter() - t1
    failed = len(errors) + len(inputs.errors)
    if not args.quiet:
        rate = f", {len(written) / dt:.2f} images/s" if written and dt > 0 else ""
        parts = [f"wrote {len(written)} image(s) to {args.output}{rate}"] if images or not videos else []
        if videos:
            rate = f", {frames / dt_video:.1f} frames/s" if frames and dt_video > 0 else ""
            parts.append(f"wrote {len(clips)} video(s) ({frames} frames) to {args.output}{rate}")
        _eprint("; ".join(parts) + (f"; {failed} input(s) failed (see the errors above)" if failed else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from lowlight_fast.contact_sheet import contact_sheet
    from lowlight_fast.device import pick_device
    from lowlight_fast.enhance import Enhancer
    from lowlight_fast.models import registry

    samples = [str(p) for p in registry.bundled_samples()]
    if not samples:
        _eprint(f"error: no bundled samples found in {registry.DATA_DIR / 'samples'}")
        return 1
    _setup_threads(args.threads)
    models = list(registry.NAMES) if args.model == "all" else [args.model]
    scaled = _scaled_models()
    columns = [samples]
    errors: list[str] = []
    try:
        device = pick_device(args.device)
        enhancers = [Enhancer(m, device=device, scale_factor=args.scale_factor if m in scaled else None)
                     for m in models]
    except (ValueError, FileNotFoundError) as exc:
        _eprint(f"error: {exc}")
        return 2
    for m, enhancer in zip(models, enhancers):
        written, errs = _enhance_with_progress(samples, os.path.join(args.output, m), enhancer, not args.quiet, m)
        errors += errs
        columns.append(written)
    if errors:
        return 1
    sheet = os.path.join(args.output, "contact_sheet.png")
    labels = ["input"] + [f"{m} (s={args.scale_factor})" if m in scaled else m for m in models]
    contact_sheet([list(r) for r in zip(*columns)], labels, sheet)
    print(f"wrote {len(samples)} enhanced sample(s) per model under {args.output}/ and the before/after "
          f"contact sheet {sheet}")
    return 0


# --------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    import platform

    import torch

    import lowlight_fast
    from lowlight_fast import _ext
    from lowlight_fast.backend import requested
    from lowlight_fast.enhance import transparent_huge_pages
    from lowlight_fast.models import registry

    bi = _ext.build_info()
    print(f"lowlight_fast {lowlight_fast.__version__}")
    print(f"python        {platform.python_version()} ({sys.executable})")
    built_with = bi.get("torch_version")
    print(f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})"
          + (f"; extension built against torch {built_with}" if built_with else ""))
    if not _ext.available():
        print(f"extension     lowlight_fast._C not loaded; {_ext.BUILD_HINT}")
    print(f"C++ CPU       {'built' if bi.get('cpu') else 'not built'}"
          + (f" (OpenMP {'on' if bi.get('openmp') else 'off'})" if bi.get("cpu") else ""))
    if _ext.available():
        ops = sorted({n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                      if n.startswith("lowlight_fast::") and not n.endswith("_backward")})
        print(f"ops           {', '.join(ops) or 'none'}")
        paths = dict(_ext._C.cpu_paths()) if hasattr(_ext._C, "cpu_paths") else {}
        cap = torch.backends.cpu.get_cpu_capability()
        print(f"CPU paths     torch capability {cap} (ATEN_CPU_CAPABILITY lowers it); per kernel: "
              + (", ".join(f"{k} {v}" for k, v in sorted(paths.items())) or "not reported by this build"))
    print(f"CUDA kernels  {'built' if bi.get('cuda') else 'not built'}"
          + (f" (archs {bi.get('cuda_archs')})" if bi.get("cuda") and bi.get("cuda_archs") else ""))
    try:
        import triton

        print(f"Triton        {triton.__version__} (used on CUDA devices)")
    except ImportError:
        print("Triton        not installed")
    print(f"devices       cpu ({os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"              cuda:{i} {p.name} ({p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor})")
    else:
        print("              no CUDA device visible")
    print(f"backend       {requested()} (LOWLIGHT_FAST_BACKEND)")
    from lowlight_fast import memory

    huge = "off" if os.environ.get("LOWLIGHT_FAST_HUGE_PAGES") == "0" else "on"
    try:
        cache = "on" if memory.keep_freed_memory_wanted(True) else "off"
    except ValueError as exc:
        cache = f"invalid ({exc})"
    if not memory.available():
        cache = "not built"
    pool = "off" if os.environ.get("LOWLIGHT_FAST_OUTPUT_POOL") == "0" else "on"
    print(f"CPU memory    caching allocator for enhance/demo/train: {cache} "
          f"(LOWLIGHT_FAST_KEEP_FREED_MEMORY); huge pages for kernel outputs: {huge} "
          f"(LOWLIGHT_FAST_HUGE_PAGES; system THP: {transparent_huge_pages()}); "
          f"kernel output pool: {pool} (LOWLIGHT_FAST_OUTPUT_POOL)")
    weights = [m for m in registry.NAMES if registry.get(m).bundled_weights.is_file()]
    print(f"bundled       weights: {', '.join(weights) or 'none'}; samples: {len(registry.bundled_samples())}")
    return 0


# --------------------------------------------------------------------------------------------- parser
def _add_device(p) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    from lowlight_fast.enhance import IO_THREADS
    from lowlight_fast.models import registry
    from lowlight_fast.train import add_train_arguments

    parser = argparse.ArgumentParser(
        prog="lowlight-fast",
        description="Fast Zero-DCE, Zero-DCE++ and SCI low-light image enhancement.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("enhance", help="enhance images", description=(
        "Enhance images (files, folders, glob patterns) into OUTDIR/<input stem>.<ext>. "
        "Unreadable files are reported and skipped; the exit status is then 1."))
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--model", choices=registry.NAMES, default=registry.DEFAULT,
                   help=f"network (default: {registry.DEFAULT}, the bundled model)")
    p.add_argument("--weights", metavar="PATH", help=(
        "weights file (.safetensors, or the authors' .pth/.pt as they are); default: the bundled weights"))
    _add_device(p)
    p.add_argument("--scale-factor", type=int_at_least(1), default=None, metavar="S",
                   help="Zero-DCE++ only: predict the curves at 1/S resolution (default 12, as the original)")
    p.add_argument("--ext", default="png", help="output format by extension: png, jpg, webp, tif, ... (default png)")
    p.add_argument("--quality", type=int_between(1, 100), default=95, metavar="1-100",
                   help="JPEG/WebP quality (default 95)")
    p.add_argument("--max-pixels", type=int_at_least(0), default=None, metavar="N", help=(
        "skip (and report) images of more than N pixels, before decoding them (default 268435456, "
        "a 16384 x 16384 image: a guard against decompression bombs); 0: no limit"))
    p.add_argument("--png-compression", type=int, default=1, choices=range(10), metavar="0-9",
                   help=("PNG compression (default 1: our fast coder, Huffman codes and runs only; "
                         "2-9: zlib's levels, as Pillow's compress_level; 0: stored)"))
    p.add_argument("--tile", type=int_at_least(0), default=0, metavar="N", help=(
        "process in N x N tiles (16 px overlap, same pixels as untiled); default: only when the image "
        "does not fit in memory"))
    p.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--half", action="store_true", help=(
        "float16 inference (for GPUs: about half the memory and copies; on the CPU it runs, slowly); its "
        "error against float32 is in benchmarks/RESULTS.md"))
    p.add_argument("--io-threads", type=int_at_least(0), default=IO_THREADS, metavar="N", help=(
        f"N threads decode the next images and N encode the previous results while the model runs "
        f"(default {IO_THREADS}); 0: read, enhance and write one file after the other"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    from lowlight_fast import video_command

    video_command.add_arguments(p)
    from lowlight_fast import export_command

    export_command.add_engine_arguments(p)
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("demo", help="enhance the bundled samples and write a before/after contact sheet")
    p.add_argument("-o", "--output", default="out", metavar="OUTDIR", help="output folder (default ./out)")
    p.add_argument("--model", choices=registry.NAMES + ("all",), default="all", help="model(s) to run (default all)")
    p.add_argument("--scale-factor", type=int_at_least(1), default=1, metavar="S",
                   help="Zero-DCE++ scale factor (default 1)")
    _add_device(p)
    p.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (default: torch's default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model on a folder of images", description=(
        "Train Zero-DCE, Zero-DCE++ or SCI with the original recipes (override with the options)."))
    add_train_arguments(p)
    _add_device(p)

    from lowlight_fast.benchmark import add_benchmark_arguments, cmd_benchmark

    p = sub.add_parser("benchmark", help="time the models on this machine, fused against the reference",
                       description=("Time inference (enhance_image) and one training step (model + loss, "
                                    "forward + backward) of each model; --reference adds the plain-PyTorch "
                                    "reference path and the speed-up."))
    add_benchmark_arguments(p)
    _add_device(p)
    p.set_defaults(func=cmd_benchmark)

    from lowlight_fast import evaluate_command

    p = sub.add_parser("evaluate", help="PSNR/SSIM against references and no-reference figures", description=(
        "Measure enhanced images (PRED) against references (GT, paired by file stem): PSNR and SSIM as "
        "papers compute them, and no-reference figures (brightness, spread, colour cast, noise)."))
    evaluate_command.add_arguments(p)
    _add_device(p)
    p = sub.add_parser("export", help="export a model to ONNX or torch.export, checked against PyTorch",
                       description=("Export a model for deployment: an ONNX file (standard operators; input "
                                    "'image' N x 3 x H x W float32 in [0, 1], output 'enhanced') or a "
                                    "torch.export program, then run it on a random image against PyTorch."))
    export_command.add_arguments(p)

    p = sub.add_parser("info", help="versions, compiled backends and devices")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Image-sized tensors are fresh memory at every image and step, and their page faults cost as much
    # as the convolutions on our CPUs. Transparent huge pages make them cheaper (torch reads the option
    # once, so it is set before importing torch); keeping freed tensors for reuse removes most of them
    # (lowlight_fast.memory, turned on when the command runs).
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("enhance", "demo", "train", "benchmark"):
        from lowlight_fast.memory import keep_freed_memory_by_default

        try:
            keep_freed_memory_by_default(True)  # what each setting costs: benchmarks/RESULTS.md
        except ValueError as exc:
            _eprint(f"error: {exc}")
            return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _eprint("interrupted")
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
