"""Image enhancement, the library behind ``lowlight-fast enhance`` and ``demo``.

- :class:`Enhancer`: one model on one device; call it on a (B, 3, H, W) image in [0, 1] to get the
  enhanced image, computed in tiles when the image would not fit in memory (the same pixels as the
  whole-image run: :mod:`lowlight_fast.tiling`).
- :func:`collect_inputs`: files, folders and glob patterns -> the ordered list of files.
- :func:`enhance_files`: enhance files into a folder, reading the next image and writing the previous
  one while the model runs. It never writes over one of its inputs, and it claims each output name
  in the folder (:class:`OutputClaims`) so that two processes writing into one folder never replace
  each other's results without saying so.

Nothing here prints: errors are exceptions (or, per file, returned messages), progress is a callback.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from lowlight_fast import _validate
from lowlight_fast.device import pick_device
from lowlight_fast.models import registry
from lowlight_fast.models._common import EnhancementModel
from lowlight_fast.tiling import MARGIN, enhance_tiled, is_out_of_memory

__all__ = ["IO_THREADS", "MIN_TILE", "Enhancer", "Inputs", "OutputClaims", "collect_inputs", "enhance_files",
           "output_extension", "transparent_huge_pages"]

MIN_TILE = 64  # tiles smaller than this would make the convolutions pick other algorithms (tiling.py)


# ------------------------------------------------------------------------------------------ memory
def _available_bytes(device: torch.device) -> int:
    """Memory free for a new image on ``device``: CUDA's free memory, or the kernel's MemAvailable."""
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


def transparent_huge_pages() -> str:
    """The system's transparent-huge-page mode (always, madvise or never), or "unknown" where the
    kernel does not say (not Linux, or no THP support)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


# ------------------------------------------------------------------------------------------ model
class Enhancer:
    """One model on one device, enhancing (B, 3, H, W) images; in tiles when an image would not fit.

    ``model``: a name from :mod:`lowlight_fast.models.registry` (its inference model is built and
    ``weights`` loaded, by default the bundled weights), or an :class:`EnhancementModel` (``weights``,
    when given, are loaded into it). The model is put in eval mode and moved to ``device`` ("auto":
    CUDA when torch sees it, else the CPU; see :func:`lowlight_fast.device.pick_device`), and its own
    range check is turned off: the enhancer checks each whole image once, where the model would check
    every tile.

    ``scale_factor``: Zero-DCE++'s (default: the registry's); only with the name of a model that has one.
    ``tile``: enhance in ``tile`` x ``tile`` tiles (at least :data:`MIN_TILE`); None: only when the
    image would not fit in half the memory available on the device. After an out-of-memory error the
    tile side is halved, down to MIN_TILE. A model that is not local (Zero-DCE++ above scale factor 1,
    a module the registry does not know) is never tiled.

    ``half``: run the model in float16 (the weights converted once, each image converted on the
    device); the result is still float32. Meant for GPUs; on the CPU it runs, slowly. Its error against
    float32 is measured in benchmarks/RESULTS.md ("float16 inference").

    Calling it on a floating tensor in [0, 1], on the CPU or on any device, returns the enhanced image
    on the CPU (float32). :meth:`stream` enhances a sequence of batches; on CUDA it overlaps the
    host-device copies with the model. Bad arguments raise ValueError (FileNotFoundError for missing weights, TypeError for a
    ``model`` of another kind); the messages say what to change.

    Attributes: ``model`` (the module), ``device``, ``name`` (the registry name, else the class name),
    ``spec`` (the registry entry, None for a module it does not know), ``local`` (whether it may be
    tiled), ``tile``, ``half``.
    """

    def __init__(self, model: str | EnhancementModel, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "auto", scale_factor: int | None = None,
                 tile: int | None = None, half: bool = False):
        from lowlight_fast.models import load_weights

        if tile is not None and tile < MIN_TILE:
            raise ValueError(f"tile must be at least {MIN_TILE} (got {tile})")
        self.device = pick_device(device)
        if isinstance(model, str):
            spec = registry.get(model)
            kwargs = {}
            if spec.scale_factor is not None:
                kwargs["scale_factor"] = spec.scale_factor if scale_factor is None else scale_factor
            elif scale_factor is not None:
                scaled = ", ".join(n for n in registry.NAMES if registry.get(n).scale_factor is not None)
                raise ValueError(f"scale_factor applies to {scaled} only, not {model}")
            module = spec.inference(**kwargs)
            path = Path(weights) if weights is not None else spec.bundled_weights
            if weights is None and not path.is_file():
                raise FileNotFoundError(
                    f"the bundled weights for {model} are missing ({path}); pass --weights")
            load_weights(module, path)
            self.name = spec.name
            self.local = spec.is_local(kwargs.get("scale_factor"))
        elif isinstance(model, EnhancementModel):
            if scale_factor is not None:
                raise ValueError("scale_factor applies to a model given by name; a module keeps its own "
                                 "(ZeroDCEPlusPlus(scale_factor=...))")
            module = model
            if weights is not None:
                load_weights(module, weights)
            spec = registry.spec_for(module)
            self.name = spec.name if spec else type(module).__name__
            self.local = spec is not None and spec.is_local(getattr(module, "scale_factor", None))
        else:
            raise TypeError(f"model: expected a name ({', '.join(registry.NAMES)}) or an EnhancementModel, "
                            f"got {type(model).__name__}")
        self.spec = spec
        module.check_range = False
        self.half = bool(half)
        self.model = module.eval().to(self.device, torch.float16 if self.half else None)
        self.tile = tile
        self._last_shape: tuple[int, ...] | None = None

    def _untiled_reason(self) -> str:
        if self.spec is None:
            return (", which is not tiled (lowlight_fast.models.registry does not know its receptive field); "
                    "use a smaller image or another device")
        return " at this scale factor, which cannot be tiled; use a larger --scale-factor or --device cpu"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.half:
            return self.model.enhance_image(x.half()).float()
        return self.model.enhance_image(x)

    def _auto_tile(self, b: int, h: int, w: int) -> int | None:
        if not self.local:
            return None
        budget = _available_bytes(self.device) // 2
        per_pixel = b * self.spec.bytes_per_pixel
        if h * w * per_pixel <= budget:
            return None
        side = int((budget / per_pixel) ** 0.5) - 2 * MARGIN
        return max(MIN_TILE, side // 64 * 64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _validate.check_image(x, "x", channels=3)
        _validate.check_unit_range(x, "x")
        b, _, h, w = x.shape
        if self._last_shape not in (None, tuple(x.shape)) and self.device.type == "cpu":
            # a new size: the freed blocks kept for the previous one (lowlight_fast.memory) would not be
            # reused and would only add to the peak memory
            from lowlight_fast.memory import release_cached_memory

            release_cached_memory()
        self._last_shape = tuple(x.shape)
        tile = self.tile if self.tile else self._auto_tile(b, h, w)
        with torch.inference_mode():
            while True:
                try:
                    if tile and self.local and (h > tile or w > tile):
                        return enhance_tiled(self._run, x, tile, out_device="cpu",
                                             align=getattr(self.model, "tile_alignment", 1))
                    return self._run(x).cpu()
                except Exception as exc:  # noqa: BLE001 - only memory errors are retried
                    if not is_out_of_memory(exc):
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if not self.local:
                        raise RuntimeError(f"out of memory enhancing a {w}x{h} image with {self.name}"
                                           + self._untiled_reason()) from exc
                    if tile == MIN_TILE:
                        raise
                    tile = max(MIN_TILE, min(tile or max(h, w), max(h, w)) // 2)

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``self(x)`` for each batch, in order, as a generator. On CUDA the copies overlap the model:
        each batch goes up from pinned host memory on a copy stream while the previous one is enhanced,
        and comes back to pinned memory on that stream while the next one is (one batch in flight each
        way). Batches that need tiles, or that run out of memory, go through ``self(x)``."""
        if self.device.type != "cuda":
            for x in batches:
                yield self(x)
            return
        copy = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

        def finish(item):
            out, done = item
            done.synchronize()
            return out.float() if out.dtype != torch.float32 else out

        for x in batches:
            _validate.check_image(x, "x", channels=3)
            _validate.check_unit_range(x, "x")
            b, _, h, w = x.shape
            if (self.tile or self._auto_tile(b, h, w)) and self.local:
                if pending is not None:
                    yield finish(pending)
                    pending = None
                yield self(x)
                continue
            try:
                with torch.inference_mode():
                    with torch.cuda.stream(copy):
                        host = x if x.device.type != "cpu" or x.is_pinned() else x.pin_memory()
                        xd = host.to(self.device, non_blocking=True)
                        uploaded = torch.cuda.Event()
                        uploaded.record(copy)
                    compute.wait_event(uploaded)
                    xd.record_stream(compute)
                    yd = self.model.enhance_image(xd.half() if self.half else xd)
                    enhanced = torch.cuda.Event()
                    enhanced.record(compute)
                    with torch.cuda.stream(copy):
                        copy.wait_event(enhanced)
                        out = torch.empty(yd.shape, dtype=yd.dtype, pin_memory=True)
                        out.copy_(yd, non_blocking=True)
                        yd.record_stream(copy)
                        downloaded = torch.cuda.Event()
                        downloaded.record(copy)
            except Exception as exc:  # noqa: BLE001 - only memory errors are retried
                if not is_out_of_memory(exc):
                    raise
                torch.cuda.synchronize(self.device)
                if pending is not None:
                    yield finish(pending)
                    pending = None
                yield self(x)  # halves the tile until it fits
                continue
            if pending is not None:
                yield finish(pending)
            pending = (out, downloaded)
        if pending is not None:
            yield finish(pending)


class OnnxEnhancer:
    """The onnxruntime engine: an ONNX file written by :func:`lowlight_fast.export.export_onnx`, called
    like an :class:`Enhancer` (a (B, 3, H, W) tensor in [0, 1] -> the enhanced image, float32, on the
    CPU), so that an exported model can be checked on real photos (``enhance --engine onnxruntime``).

    ``device``: auto (onnxruntime's CUDA provider when it has one, else the CPU), cpu, cuda or cuda:N.
    ``threads``: onnxruntime's intra-op threads (default: its own choice). Never tiled. Attributes:
    ``session``, ``name`` (the model named in the file's metadata, else the file's stem),
    ``metadata`` (the file's lowlight_fast.* metadata, prefix removed), ``providers``.
    Errors: FileNotFoundError (no such file), ValueError (not such a model, an unusable device),
    :class:`lowlight_fast.export.MissingDependency` (onnxruntime not installed); an image the model
    cannot take (another size than a static export's) raises RuntimeError when called.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None):
        from lowlight_fast.export import INPUT_NAME, METADATA_PREFIX, require

        ort = require("onnxruntime", "the onnxruntime engine")
        path = Path(os.fspath(path))
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        name = str(device)
        if name in ("auto", "cpu"):
            use_cuda = name == "auto" and "CUDAExecutionProvider" in available
            providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        elif name == "cuda" or name.startswith("cuda:"):
            if "CUDAExecutionProvider" not in available:
                raise ValueError(f"--device {name}: this onnxruntime has no CUDA provider (it has "
                                 f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu")
            index = name.partition(":")[2] or "0"
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime's own exception types: a corrupt or foreign file
            reason = str(exc).strip()[:300]
            raise ValueError(f"{path}: onnxruntime cannot load it as a model ({reason})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
            desc = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise ValueError(f"{path}: expected one float32 (N, 3, H, W) input (input {INPUT_NAME!r} of an "
                             f"export by lowlight-fast export), got {desc or 'no inputs'}")
        self._input = inputs[0].name
        self._shape = inputs[0].shape  # ints where static, names where dynamic
        self._output = self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(METADATA_PREFIX):]: v for k, v in meta.items()
                         if k.startswith(METADATA_PREFIX)}
        self.name = self.metadata.get("model", path.stem)
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _validate.check_image(x, "x", channels=3)
        _validate.check_unit_range(x, "x")
        wrong = [f"{axis} {got} (the model takes {want})" for axis, want, got in
                 zip(("batch", "channels", "height", "width"), self._shape, x.shape)
                 if isinstance(want, int) and want > 0 and got != want]
        if wrong:
            raise RuntimeError(f"this ONNX model was exported for fixed sizes (--static) and the image has "
                               f"{', '.join(wrong)}; export it without --static to take any size")
        data = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self._output], {self._input: data})[0])


# ------------------------------------------------------------------------------------------ files
@dataclass
class Inputs:
    """What :func:`collect_inputs` found: the files, and one message per spec that named nothing."""

    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def collect_inputs(specs: Sequence[str]) -> Inputs:
    """Files, folders (their non-hidden files, sorted) and glob patterns -> the ordered list of files.

    A spec that names nothing is an error; every file of a folder is tried (a non-image file there
    is reported like any unreadable file). A file named twice is listed once."""
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


def output_extension(ext: str) -> str:
    """``ext`` ("PNG", ".jpg", ...) as a lower-case extension without the dot; a ValueError when Pillow
    cannot write that format (some it reads, such as PSD, it cannot write)."""
    from PIL import Image

    norm = ext.lower().lstrip(".")
    fmt = Image.registered_extensions().get(f".{norm}")
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"{ext}: not an image format Pillow can write")
    return norm


class OutputClaims:
    """The output names that running processes are writing in one folder, shared through a hidden
    file (``.lowlight-fast-claims.json``) under an exclusive ``flock``.

    :meth:`claim` records a name for this process, or returns the pid of another live process that
    holds it; :meth:`release` (or leaving the ``with`` block) drops this process's names. Entries of
    processes that died (killed, crashed) are dropped by the next claim, so nothing stays locked.
    """

    FILE = ".lowlight-fast-claims.json"

    def __init__(self, folder: str | os.PathLike):
        self.path = os.path.join(os.fspath(folder), self.FILE)
        self.pid = os.getpid()
        self._mine: set[str] = set()

    @contextlib.contextmanager
    def _table(self):
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                try:
                    table = {k: int(v) for k, v in json.loads(f.read() or "{}").items()}
                except (ValueError, AttributeError):  # torn by a crash mid-write: start afresh
                    table = {}
                table = {k: v for k, v in table.items() if v == self.pid or _alive(v)}
                yield table
                f.seek(0)
                f.truncate()
                f.write(json.dumps(table))
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def claim(self, name: str) -> int | None:
        """Claim ``name`` for this process: None when it is ours now, else the pid that holds it."""
        with self._table() as table:
            holder = table.get(name)
            if holder is not None and holder != self.pid:
                return holder
            table[name] = self.pid
        self._mine.add(name)
        return None

    def release(self) -> None:
        if not self._mine:
            return
        with self._table() as table:
            for name in self._mine:
                if table.get(name) == self.pid:
                    del table[name]
            empty = not table
        self._mine.clear()
        if empty:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def __enter__(self) -> "OutputClaims":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


IO_THREADS = 1  # decoding threads and encoding threads of enhance_files (the CLI's --io-threads)


@dataclass
class _Decoded:
    """What the model and the writer need of a decoded image (its float copy of the pixels is dropped)."""

    x: torch.Tensor
    bits: int
    alpha: object
    frames: int


@dataclass
class _Done:
    """One input the main loop is done with, waiting (in input order) for its write and its report."""

    src: str
    dst: str
    messages: list[tuple[str, str]] = field(default_factory=list)  # ("error" | "warning", text), in order
    write: Future | None = None
    written: bool = False


def enhance_files(files: Sequence[str], outdir: str | os.PathLike,
                  enhancer: Callable[[torch.Tensor], torch.Tensor], ext: str = "png", quality: int = 95,
                  png_compression: int = 1, *, max_pixels: int | None = None, io_threads: int = IO_THREADS,
                  on_progress: Callable[[str], None] | None = None,
                  on_error: Callable[[str], None] | None = None,
                  on_warning: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """Enhance ``files`` into ``outdir/<stem>.<ext>``; returns (written paths, error messages).

    ``enhancer``: an :class:`Enhancer` (or any callable 1x3xHxW -> CPU image). With ``io_threads``
    N >= 1, N threads decode the next images and N threads encode the previous results while the model
    runs (Pillow's and zlib's codecs release the GIL); at most N images are decoded ahead and at most N
    results wait for their encoding, so memory stays flat whatever the number of files. ``io_threads=0``:
    each file is read, enhanced and written in turn, in the calling thread. Both write the same bytes
    and report the same messages in the same order.

    A file that cannot be read (also: above ``max_pixels``, default :data:`lowlight_fast.io.MAX_PIXELS`;
    0: no limit), enhanced (out of memory included) or written is skipped and its message (naming the
    file) returned; the others go on. So is a file whose output would be one of the inputs, would
    overwrite an earlier one's output, is being written by another process (:class:`OutputClaims`), or
    was written by another process since this call began (an output older than the call is replaced:
    running again over a folder is normal). Outputs are written atomically (a hidden temporary file,
    renamed). Reports come per input, in input order, once the input is done with (its result written
    or not): ``on_warning(message)`` for what is done but not quite as asked (a multi-frame file, of
    which only the first frame is enhanced), ``on_error(message)`` for each error, then
    ``on_progress(path)``; without them nothing is reported until the function returns.

    An exception (KeyboardInterrupt included) stops the reading at once; the results already computed
    are written (whole, atomically) before it propagates, and nothing half-written is left.
    """
    from lowlight_fast import io

    if isinstance(io_threads, bool) or not isinstance(io_threads, int) or io_threads < 0:
        raise ValueError(f"io_threads: expected an integer >= 0, got {io_threads!r}")
    ext = output_extension(ext)
    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    _remove_stale_temporaries(outdir)
    limit = io.MAX_PIXELS if max_pixels is None else max_pixels
    written: list[str] = []
    errors: list[str] = []
    claimed: dict[str, str] = {}
    inputs = {os.path.realpath(f) for f in files}
    started = time.time_ns()  # an output newer than this was written by another run meanwhile

    def read(path: str) -> _Decoded:
        img = io.read_image(path, max_pixels=limit)
        return _Decoded(img.to_tensor(), img.bits, img.alpha, img.frames)

    def write(dst: str, y: torch.Tensor, d: _Decoded) -> None:
        io.write_image(dst, y, bits=d.bits, alpha=d.alpha, quality=quality, png_compression=png_compression)

    def report(done: _Done) -> None:
        if done.write is not None:
            try:
                done.write.result()
                done.written = True
            except Exception as exc:  # noqa: BLE001 - report and go on with the batch
                done.messages.append(("error", _write_error(done.src, done.dst, exc)))
        if done.written:
            written.append(done.dst)
        for kind, message in done.messages:
            if kind == "error":
                errors.append(message)
                if on_error is not None:
                    on_error(message)
            elif on_warning is not None:
                on_warning(message)
        if on_progress is not None:
            on_progress(done.src)

    with OutputClaims(outdir) as claims, _Workers(io_threads) as workers:
        ahead: collections.deque[Future] = collections.deque()  # reads of the next files, in order
        behind: collections.deque[_Done] = collections.deque()  # done with here, not yet reported
        submitted = 0
        for i, src in enumerate(files):
            if workers.reader is not None:
                while submitted < len(files) and submitted <= i + io_threads:
                    ahead.append(workers.reader.submit(read, files[submitted]))
                    submitted += 1
                decoding = ahead.popleft()
            done = _Done(src, os.path.join(outdir, f"{Path(src).stem}.{ext}"))
            dst = done.dst
            try:
                _claim_output(src, dst, inputs, claimed, claims, started)
                d = decoding.result() if workers.reader is not None else read(src)
                if d.frames > 1:
                    done.messages.append(("warning",
                                          f"{src}: holds {d.frames} frames; only the first is enhanced"))
                y = enhancer(d.x)
                d.x = None  # the input's pixels are not needed any more
                if workers.writer is not None:
                    done.write = workers.writer.submit(write, dst, y, d)
                else:
                    try:
                        write(dst, y, d)
                        done.written = True
                    except Exception as exc:  # noqa: BLE001 - report and go on with the batch
                        done.messages.append(("error", _write_error(src, dst, exc)))
            except (io.ImageReadError, ValueError) as exc:
                done.messages.append(("error", str(exc)))
            except MemoryError:
                done.messages.append(("error", f"{src}: not enough memory to enhance it "
                                               "(try --tile, or a smaller image)"))
            except RuntimeError as exc:
                done.messages.append(("error", f"{src}: {exc}"))
            finally:
                decoding = d = y = None  # nothing of this file stays alive here (nor an unused read)
            behind.append(done)
            while behind and (behind[0].write is None or behind[0].write.done()
                              or sum(b.write is not None for b in behind) > io_threads):
                report(behind.popleft())
        while behind:
            report(behind.popleft())
    return written, errors


class _Workers:
    """The reading and writing threads of :func:`enhance_files` (none for ``threads == 0``). Leaving the
    block, however it is left, cancels the reads not yet started and waits for every write submitted:
    an interrupted run writes the results it has, whole, and leaves no file half-written; the threads
    are gone before the output claims are released."""

    def __init__(self, threads: int):
        self.reader = ThreadPoolExecutor(threads, "lowlight-fast-read") if threads else None
        self.writer = ThreadPoolExecutor(threads, "lowlight-fast-write") if threads else None

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)
        if self.writer is not None:
            self.writer.shutdown(wait=True)


def _claim_output(src: str, dst: str, inputs: set[str], claimed: dict[str, str], claims: OutputClaims,
                  started: int) -> None:
    """Claim ``dst`` as the output of ``src``, or raise ValueError saying why it must not be written:
    it is one of the ``inputs`` (real paths), an earlier input's output (``claimed``: real path -> input),
    being written by another process (``claims``), or written by another one since ``started`` (ns)."""
    key = os.path.realpath(dst)
    if key in inputs:
        raise ValueError(f"{src}: its output {dst} is one of the input files, which is never "
                         "written over; choose another output folder (-o) or format (--ext)")
    if key in claimed:
        raise ValueError(f"{src}: its output {dst} would overwrite the result of {claimed[key]}; "
                         "rename one of them or enhance them into separate folders")
    holder = claims.claim(os.path.basename(key))
    if holder is not None:
        raise ValueError(f"{src}: its output {dst} is being written by another process (pid "
                         f"{holder}); wait for it, or enhance into another folder")
    if _written_since(dst, started):
        raise ValueError(f"{src}: its output {dst} was written by another process while this run "
                         "was going; it is left as it is (enhance into another folder, or run again)")
    claimed[key] = src


def _remove_stale_temporaries(folder: str) -> None:
    """Remove the temporary files (``lowlight_fast.io.temporary_path``) that processes which no longer
    run left in ``folder`` (killed while writing); those of live processes are theirs."""
    import re

    for name in os.listdir(folder):
        m = re.fullmatch(r"\..+\.tmp(\d+)", name)
        if m and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def _written_since(path: str, since_ns: int) -> bool:
    try:
        return os.stat(path).st_mtime_ns >= since_ns
    except OSError:
        return False


def _write_error(src: str, dst: str, exc: BaseException) -> str:
    return f"{src}: cannot write {dst}: {_describe_os_error(exc)}"


def _describe_os_error(exc: BaseException) -> str:
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({exc.strerror})"
    return str(exc)
