"""The ``lowlight-fast`` command: ``enhance``, ``demo``, ``train``, ``info``."""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("zerodce", "zerodcepp", "sci")
DEFAULT_MODEL = "zerodce"
DATA_DIR = Path(__file__).resolve().parent / "data"
MIN_TILE = 64  # tiles smaller than this would make the convolutions pick other algorithms (tiling.py)
BYTES_PER_PIXEL = {"zerodce": 1200, "zerodcepp": 1200, "sci": 160}  # generous inference working sets


def bundled_weights(model: str) -> Path:
    return DATA_DIR / "weights" / f"{model}.safetensors"


def bundled_samples() -> list[Path]:
    return sorted((DATA_DIR / "samples").glob("*.png"))


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def collect_inputs(specs: list[str]) -> Inputs:
    """Files, folders (their non-hidden files, sorted) and glob patterns -> the ordered list of files.

    A spec that names nothing is an error; every file of a folder is tried (a non-image file there
    is reported like any unreadable file)."""
    out = Inputs()
    seen: set[str] = set()

    def add(p: str) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.files.append(p)

    for spec in specs:
        if os.path.isdir(spec):
            names = sorted(n for n in os.listdir(spec) if not n.startswith("."))
            files = [os.path.join(spec, n) for n in names if os.path.isfile(os.path.join(spec, n))]
            if not files:
                out.errors.append(f"{spec}: folder holds no files")
            for f in files:
                add(f)
        elif os.path.exists(spec):
            add(spec)
        elif glob.has_magic(spec):
            matches = sorted(m for m in glob.glob(spec, recursive=True) if os.path.isfile(m))
            if not matches:
                out.errors.append(f"{spec}: no file matches this pattern")
            for m in matches:
                add(m)
        else:
            out.errors.append(f"{spec}: no such file or folder")
    return out


# --------------------------------------------------------------------------------------------- model
def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device (try --device cpu)")
    return dev


def _available_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


class Enhancer:
    """One model on one device; enhances a 1x3xHxW CPU tensor, in tiles when it would not fit."""

    def __init__(self, model: str, weights: str | os.PathLike | None, device, scale_factor: int = 12,
                 tile: int | None = None):
        import torch

        from lowlight_fast.models import build_model, load_weights

        self.name = model
        self.device = device
        kwargs = {"scale_factor": scale_factor} if model == "zerodcepp" else {}
        self.model = build_model(model, **kwargs)
        path = Path(weights) if weights is not None else bundled_weights(model)
        if weights is None and not path.is_file():
            raise SystemExit(f"error: the bundled weights for {model} are missing ({path}); pass --weights")
        try:
            load_weights(self.model, path)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"error: {exc}") from None
        self.model.eval().to(device)
        self.local = model != "zerodcepp" or scale_factor == 1  # see lowlight_fast.tiling
        self.tile = tile
        self._torch = torch
        self._last_size: tuple[int, int] | None = None

    def _run(self, x):
        return self.model.enhance_image(x.to(self.device, non_blocking=True))

    def _auto_tile(self, h: int, w: int) -> int | None:
        budget = _available_bytes(self.device) // 2
        need = h * w * BYTES_PER_PIXEL[self.name]
        if not self.local or need <= budget:
            return None
        side = int((budget / BYTES_PER_PIXEL[self.name]) ** 0.5) - 2 * 16
        return max(MIN_TILE, side // 64 * 64)

    def __call__(self, x):
        from lowlight_fast.tiling import enhance_tiled, is_out_of_memory

        torch = self._torch
        h, w = x.shape[-2:]
        if self._last_size not in (None, (h, w)) and self.device.type == "cpu":
            # a new size: the freed blocks kept for the previous one (lowlight_fast.memory) would not be
            # reused and would only add to the peak memory
            from lowlight_fast.memory import release_cached_memory

            release_cached_memory()
        self._last_size = (h, w)
        tile = self.tile if self.tile else self._auto_tile(h, w)
        with torch.inference_mode():
            while True:
                try:
                    if tile and self.local and (h > tile or w > tile):
                        return enhance_tiled(self._run, x, tile, out_device="cpu")
                    return self._run(x).cpu()
                except Exception as exc:  # noqa: BLE001 - only memory errors are retried
                    if not is_out_of_memory(exc):
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if not self.local:
                        raise RuntimeError(
                            f"out of memory enhancing a {w}x{h} image with {self.name} at this scale factor, "
                            "which cannot be tiled; use a larger --scale-factor or --device cpu") from exc
                    if tile == MIN_TILE:
                        raise
                    tile = max(MIN_TILE, min(tile or max(h, w), max(h, w)) // 2)


# --------------------------------------------------------------------------------------------- enhance
def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def enhance_files(files: list[str], outdir: str, enhancer: Enhancer, ext: str = "png", quality: int = 95,
                  png_compression: int = 1, progress: bool = True, desc: str = "enhance") -> tuple[list[str], list[str]]:
    """Enhance ``files`` into ``outdir/<stem>.<ext>``; returns (written paths, error messages).

    Reading the next image and writing the previous one overlap with the model."""
    from lowlight_fast import io

    os.makedirs(outdir, exist_ok=True)
    written: list[str] = []
    errors: list[str] = []
    claimed: dict[str, str] = {}
    ext = ext.lower().lstrip(".")

    def read(p):
        return io.read_image(p)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, \
            _progress(len(files), progress, desc) as bar:
        pending_writes: list[tuple[str, str, Future]] = []
        nxt = reader.submit(read, files[0]) if files else None
        for i, src in enumerate(files):
            fut = nxt
            nxt = reader.submit(read, files[i + 1]) if i + 1 < len(files) else None
            dst = os.path.join(outdir, f"{Path(src).stem}.{ext}")
            try:
                img = fut.result()
                key = os.path.realpath(dst)
                if key in claimed:
                    raise ValueError(f"{src}: its output {dst} would overwrite the result of {claimed[key]}; "
                                     "rename one of them or enhance them into separate folders")
                claimed[key] = src
                y = enhancer(img.to_tensor())
                pending_writes.append((src, dst, writer.submit(
                    io.write_image, dst, y, bits=img.bits, alpha=img.alpha, quality=quality,
                    png_compression=png_compression)))
            except (io.ImageReadError, ValueError) as exc:
                errors.append(str(exc))
                bar.write(f"error: {exc}", file=sys.stderr)
            except RuntimeError as exc:
                errors.append(f"{src}: {exc}")
                bar.write(f"error: {src}: {exc}", file=sys.stderr)
            bar.update(1)
        for src, dst, fut in pending_writes:
            try:
                fut.result()
                written.append(dst)
            except Exception as exc:  # noqa: BLE001 - report and go on with the batch
                errors.append(f"{src}: cannot write {dst}: {exc}")
                _eprint(f"error: {src}: cannot write {dst}: {exc}")
    return written, errors


def _setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # on top of the flushed weights: activations too, where it reaches


def cmd_enhance(args) -> int:
    from lowlight_fast import io

    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in io.image_extensions():
        _eprint(f"error: --ext {args.ext}: not an image format Pillow can write")
        return 2
    if args.scale_factor is not None and args.model != "zerodcepp":
        _eprint("error: --scale-factor applies to --model zerodcepp only")
        return 2
    if args.tile and args.tile < MIN_TILE:
        _eprint(f"error: --tile must be at least {MIN_TILE} (got {args.tile})")
        return 2
    inputs = collect_inputs(args.inputs)
    for e in inputs.errors:
        _eprint(f"error: {e}")
    _setup_threads(args.threads)
    device = pick_device(args.device)
    enhancer = Enhancer(args.model, args.weights, device, scale_factor=args.scale_factor or 12,
                        tile=args.tile or None)
    t0 = time.perf_counter()
    written, errors = enhance_files(inputs.files, args.output, enhancer, ext=ext, quality=args.quality,
                                    png_compression=args.png_compression, progress=not args.quiet)
    dt = time.perf_counter() - t0
    failed = len(errors) + len(inputs.errors)
    if not args.quiet:
        rate = f", {len(written) / dt:.2f} images/s" if written and dt > 0 else ""
        _eprint(f"wrote {len(written)} image(s) to {args.output}{rate}"
                + (f"; {failed} input(s) failed (see the errors above)" if failed else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------- demo
def contact_sheet(rows: list[list[str]], labels: list[str], path: str, height: int = 180) -> None:
    """A grid image: one row per sample, one column per label (input, then each model's result)."""
    from PIL import Image, ImageDraw, ImageOps

    thumbs = []
    for row in rows:
        t = []
        for p in row:
            with Image.open(p) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                w = max(1, round(im.width * height / im.height))
                t.append(im.resize((w, height), Image.Resampling.LANCZOS))
        thumbs.append(t)
    colw = [max(r[c].width for r in thumbs) for c in range(len(labels))]
    pad, top = 6, 22
    sheet = Image.new("RGB", (sum(colw) + pad * (len(colw) + 1), top + len(rows) * (height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for c, label in enumerate(labels):
        draw.text((x, 5), label, fill="black")
        for r, t in enumerate(thumbs):
            sheet.paste(t[c], (x, top + r * (height + pad)))
        x += colw[c] + pad
    sheet.save(path)


def cmd_demo(args) -> int:
    samples = [str(p) for p in bundled_samples()]
    if not samples:
        _eprint(f"error: no bundled samples found in {DATA_DIR / 'samples'}")
        return 1
    _setup_threads(args.threads)
    device = pick_device(args.device)
    models = list(MODELS) if args.model == "all" else [args.model]
    columns = [samples]
    errors: list[str] = []
    for m in models:
        enhancer = Enhancer(m, None, device, scale_factor=args.scale_factor)
        outdir = os.path.join(args.output, m)
        written, errs = enhance_files(samples, outdir, enhancer, progress=not args.quiet, desc=m)
        errors += errs
        columns.append(written)
    if errors:
        return 1
    sheet = os.path.join(args.output, "contact_sheet.png")
    labels = ["input"] + [m if m != "zerodcepp" else f"zerodcepp (s={args.scale_factor})" for m in models]
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
    from lowlight_fast.backend import requested

    print(f"backend       {requested()} (LOWLIGHT_FAST_BACKEND)")
    thp = "unknown"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        pass
    huge = "off" if os.environ.get("LOWLIGHT_FAST_HUGE_PAGES") == "0" else "on"
    print(f"CPU memory    caching allocator for enhance/demo/train: "
          f"{'off' if os.environ.get('LOWLIGHT_FAST_KEEP_FREED_MEMORY') == '0' else 'on'} "
          f"(LOWLIGHT_FAST_KEEP_FREED_MEMORY); huge pages for kernel outputs: {huge} "
          f"(LOWLIGHT_FAST_HUGE_PAGES; system THP: {thp})")
    weights = [m for m in MODELS if bundled_weights(m).is_file()]
    print(f"bundled       weights: {', '.join(weights) or 'none'}; samples: {len(bundled_samples())}")
    return 0


# --------------------------------------------------------------------------------------------- parser
def _add_device(p) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                   help=f"network (default: {DEFAULT_MODEL}, the bundled model)")
    p.add_argument("--weights", metavar="PATH", help=(
        "weights file (.safetensors, or the authors' .pth/.pt as they are); default: the bundled weights"))
    _add_device(p)
    p.add_argument("--scale-factor", type=int, default=None, metavar="S",
                   help="Zero-DCE++ only: predict the curves at 1/S resolution (default 12, as the original)")
    p.add_argument("--ext", default="png", help="output format by extension: png, jpg, webp, tif, ... (default png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--png-compression", type=int, default=1, choices=range(10), metavar="0-9",
                   help="zlib level of PNG results (default 1: fast; 6 is Pillow's default, a little smaller)")
    p.add_argument("--tile", type=int, default=0, metavar="N", help=(
        "process in N x N tiles (16 px overlap, same pixels as untiled); default: only when the image "
        "does not fit in memory"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("demo", help="enhance the bundled samples and write a before/after contact sheet")
    p.add_argument("-o", "--output", default="out", metavar="OUTDIR", help="output folder (default ./out)")
    p.add_argument("--model", choices=MODELS + ("all",), default="all", help="model(s) to run (default all)")
    p.add_argument("--scale-factor", type=int, default=1, metavar="S", help="Zero-DCE++ scale factor (default 1)")
    _add_device(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
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
    if args.command in ("enhance", "demo", "train", "benchmark") and \
            os.environ.get("LOWLIGHT_FAST_KEEP_FREED_MEMORY") != "0":
        from lowlight_fast.memory import keep_freed_memory

        keep_freed_memory()  # Zero-DCE at 720x680: 0.23 s per image; THP alone 0.26-0.50 s, neither 0.46 s
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
