"""Video enhancement, the library behind ``lowlight-fast enhance clip.mp4 -o out/`` (needs PyAV, the
``video`` extra: ``pip install 'lowlight_fast[video]'``).

- :func:`enhance_video`: one file, any container and codec that FFmpeg (through PyAV) decodes. The first
  video stream is enhanced, in batches of frames, through an :class:`lowlight_fast.enhance.Enhancer`;
  every frame keeps its timestamp (pts and time base), so the frame count, size and frame rate are
  those of the input; audio streams are copied packet for packet (no re-encoding); other streams are
  dropped. Decoding, the model and encoding run in three threads with bounded queues between them.
- :func:`enhance_videos`: files into a folder, ``outdir/<name of the input>``, with the guarantees of
  :func:`lowlight_fast.enhance.enhance_files` (atomic writes, inputs never written over, output names
  claimed against other processes); a file that fails is named and skipped, the others go on.
- :class:`TemporalSmoothing`: an exponential moving average of the model's curve maps across frames
  (SCI: of its illumination), which steadies the brightness of the result from frame to frame.

Nothing here prints: errors are exceptions (per file, returned messages), progress is a callback.
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["BATCH", "VIDEO_EXTENSIONS", "TemporalSmoothing", "VideoError", "VideoOptions", "enhance_video",
           "enhance_videos", "is_video"]

# Containers taken for videos by their extension (others go to the image reader).
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".asf", ".flv", ".mpg", ".mpeg", ".m2v",
    ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".mxf", ".nut", ".y4m", ".dv", ".vob"})
BATCH = 4  # frames per model call (fewer when a batch would not fit in memory)
FALLBACK_CODEC = "libx264"
_QUEUE = 2  # batches waiting between two stages
SWITCH_INTERVAL = float(os.environ.get("LOWLIGHT_FAST_SWITCH_INTERVAL", "0.0005"))  # seconds, see _transcode


class VideoError(ValueError):
    """A video that cannot be read, enhanced or written; the message names the file."""


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is taken for a video (its extension is one of :data:`VIDEO_EXTENSIONS`)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("reading and writing video needs PyAV: pip install 'lowlight_fast[video]' "
                         "(or pip install av)") from None
    return av


@dataclass
class VideoOptions:
    """How the enhanced video is encoded.

    ``codec``: an FFmpeg encoder name (libx264, libx265, libvpx-vp9, ffv1, ...); None: the input's codec
    when FFmpeg can encode it into the output container, else libx264. ``crf``: the constant rate
    factor of codecs that have one (x264/x265/VP9/AV1; lower is better and larger); None: the codec's
    default. A codec without one gets the input's bit rate when the input says it. ``preset``: the
    x264/x265 speed preset (None: the codec's default). ``pix_fmt``: the output pixel format; None:
    the input's when the codec supports it, else yuv420p, else the codec's first.
    ``batch``: frames per model call. ``temporal_smoothing``: the weight A of the past in the moving
    average of the curve maps (:class:`TemporalSmoothing`), 0 <= A < 1; 0: off.
    """

    codec: str | None = None
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    batch: int = BATCH
    temporal_smoothing: float = 0.0

    def check(self) -> None:
        """ValueError for an option out of range or a codec FFmpeg cannot encode with."""
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch: expected an integer >= 1, got {self.batch!r}")
        if not 0.0 <= self.temporal_smoothing < 1.0:
            raise ValueError(f"temporal smoothing: expected 0 <= A < 1, got {self.temporal_smoothing}")
        if self.codec is not None or self.crf is not None or self.preset is not None:
            av = _av()
            name = self.codec or FALLBACK_CODEC
            codec = _encoder(av, name)
            if codec is None:
                raise ValueError(f"codec {name}: FFmpeg (PyAV {av.__version__}) has no video encoder "
                                 "of that name")
            names = _option_names(av, codec.name)
            if self.crf is not None and self.codec is not None and "crf" not in names:
                raise ValueError(f"crf: codec {codec.name} has none")
            if self.preset is not None and self.codec is not None and "preset" not in names:
                raise ValueError(f"preset: codec {codec.name} has none")


def _encoder(av, name: str):
    try:
        codec = av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises several kinds for an unknown name
        return None
    return codec if codec.type == "video" else None


def _option_names(av, codec_name: str) -> set[str]:
    return {o.name for o in av.CodecContext.create(codec_name, "w").supported_options.private}


def _output_format(av, path: str) -> str:
    """The FFmpeg muxer for ``path``'s extension (what ffmpeg guesses; the temporary name hides it)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    candidates = []
    for name in sorted(av.formats_available):
        try:
            fmt = av.ContainerFormat(name, "w")
        except Exception:  # noqa: BLE001 - a demuxer only
            continue
        if ext in fmt.extensions:
            candidates.append(name)
    for preferred in (ext, {"mkv": "matroska", "ts": "mpegts", "mts": "mpegts", "m2ts": "mpegts",
                            "mpg": "mpeg", "m4v": "mp4", "ogv": "ogg", "wmv": "asf"}.get(ext)):
        if preferred in candidates:
            return preferred
    if not candidates:
        raise VideoError(f"{path}: FFmpeg has no muxer for the extension .{ext}")
    return candidates[0]


# ------------------------------------------------------------------------------------------ smoothing
class TemporalSmoothing:
    """The enhancement of consecutive frames with the model's curve maps averaged over time.

    For each frame t the model predicts its maps c_t (Zero-DCE: the 24-channel curve parameters;
    Zero-DCE++: its 3-channel map at the working resolution; SCI, which has no curve: the term its
    estimator adds to the frame to make the illumination it divides the frame by; averaging the
    illumination itself would average the frame's own noise into it, which makes the brightness less
    steady, not more); the frame is enhanced with m_t = A m_{t-1} + (1 - A) c_t (m_0 = c_0). The
    state carries over from one call to the next: call it on the frames of one video in order
    (batches of any size give the same result). A = 0 gives the enhancer's own result.

    The maps follow the picture (Zero-DCE's and SCI's are per pixel, Zero-DCE++'s at 1/scale_factor
    resolution): on moving content a high A leaves a faint trail of the previous frames' maps. Frames
    are not tiled. Only the registry's models have known maps: a
    ValueError for another module.
    """

    def __init__(self, enhancer, weight: float):
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"temporal smoothing: expected 0 <= A < 1, got {weight}")
        spec = getattr(enhancer, "spec", None)
        if spec is None or spec.name not in ("zerodce", "zerodcepp", "sci"):
            name = getattr(enhancer, "name", type(enhancer).__name__)
            raise ValueError(f"temporal smoothing averages the curve maps of zerodce or zerodcepp (the "
                             f"illumination of sci); {name} exposes none: run without it")
        self.enhancer = enhancer
        self.weight = weight
        self.name = spec.name
        self._state: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frames (call between videos)."""
        self._state = None

    def _average(self, maps: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(maps)
        a = self.weight
        for t in range(maps.shape[0]):
            prev = self._state if self._state is not None else maps[t:t + 1]
            self._state = prev * a + maps[t:t + 1] * (1.0 - a)
            out[t:t + 1] = self._state
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from lowlight_fast import _validate
        from lowlight_fast.models._common import curve_ops, inference_layout

        _validate.check_image(x, "x", channels=3)
        model = self.enhancer.model
        with torch.inference_mode():
            x = x.to(self.enhancer.device, non_blocking=True)
            if self.name == "zerodce":
                r = self._average(model.inference_curve_maps(x))
                y = curve_ops(model.fused).le_curve(x, r)[1]
            elif self.name == "zerodcepp":
                a, grid = model.inference_map(x)
                y = curve_ops(model.fused).le_curve_shared(x, self._average(a), grid=grid)
            else:  # SCI's EnhanceNetwork, its output term averaged before the frame is added back
                net = model.enhance
                xl = inference_layout(x)
                fea = net.in_conv(xl)
                for block in net.blocks:
                    fea = fea + block(fea)
                illumination = torch.clamp(self._average(net.out_conv(fea)) + xl, 0.0001, 1)
                y = torch.clamp(xl / illumination, 0, 1).contiguous()
            return y.cpu()


# ------------------------------------------------------------------------------------------ one video
class _Stop(Exception):
    """Raised in a stage when another stage failed (the first error is what is reported)."""


class _Pipe:
    """Bounded queues between the decoding, model and encoding stages, and the first error of any."""

    def __init__(self):
        self.failed = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.failed.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.failed.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue):
        while True:
            if self.failed.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass


def _batch_size(enhancer, requested: int, h: int, w: int) -> int:
    """``requested``, or fewer frames where a batch would not fit in half the free memory."""
    spec = getattr(enhancer, "spec", None)
    device = getattr(enhancer, "device", None)
    if spec is None or device is None:
        return requested
    from lowlight_fast.enhance import _available_bytes

    fits = _available_bytes(device) // 2 // max(1, h * w * spec.bytes_per_pixel)
    return max(1, min(requested, int(fits)))


# The conversions run in the decoding and encoding threads, each in one pass of a single-threaded kernel
# (lowlight_fast.ops.quantize), not with torch's intra-op threads, which would compete with the model's.
def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """H x W x 3 uint8 frames -> (B, 3, H, W) float32 in [0, 1] (x / 255, as images are read)."""
    from lowlight_fast.ops.quantize import dequantize_hwc

    return dequantize_hwc(torch.from_numpy(np.stack(frames)))


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> B x H x W x 3 uint8, rounded as lowlight_fast.io.quantize rounds, so a
    frame gets the pixels an image would."""
    from lowlight_fast.ops.quantize import quantize_hwc

    return quantize_hwc(y.detach().cpu(), 8).numpy()


def _choose_codec(av, options: VideoOptions, src_stream, output) -> str:
    if options.codec is not None:
        codec = _encoder(av, options.codec)
        if codec is None:
            raise ValueError(f"codec {options.codec}: FFmpeg has no video encoder of that name")
        if codec.name not in output.supported_codecs and options.codec not in output.supported_codecs:
            raise ValueError(f"codec {options.codec}: the {output.format.name} container cannot hold it "
                             "(choose another --codec, or another container)")
        return codec.name
    same = _encoder(av, src_stream.codec_context.name)
    if same is not None and (same.name in output.supported_codecs
                             or src_stream.codec_context.name in output.supported_codecs):
        return same.name
    return FALLBACK_CODEC


def _choose_pix_fmt(codec, wanted: str | None, src_fmt: str | None) -> str:
    formats = [f.name for f in (codec.video_formats or [])]
    if wanted is not None:
        if formats and wanted not in formats:
            raise ValueError(f"pixel format {wanted}: codec {codec.name} takes {', '.join(formats)}")
        return wanted
    for fmt in (src_fmt, "yuv420p"):
        if fmt and (not formats or fmt in formats):
            return fmt
    return formats[0]


def enhance_video(src: str | os.PathLike, dst: str | os.PathLike,
                  enhancer: Callable[[torch.Tensor], torch.Tensor], options: VideoOptions | None = None, *,
                  on_frames: Callable[[int], None] | None = None,
                  on_start: Callable[[int | None], None] | None = None) -> int:
    """Enhance the video ``src`` into ``dst`` (atomically: a hidden temporary file, renamed); returns
    the number of frames written. The container follows ``dst``'s extension.

    ``enhancer``: an :class:`lowlight_fast.enhance.Enhancer` (or any callable (B, 3, H, W) -> CPU
    image of the same size). ``on_start(frames)``: called once with the frame count the container
    announces (None when it does not); ``on_frames(n)``: after each batch of n frames is enhanced.
    Raises :class:`VideoError` (naming ``src``) for a file that cannot be read as a video or whose
    result cannot be written, ValueError for options that do not fit the codec or container.
    """
    av = _av()
    options = options or VideoOptions()
    options.check()
    src, dst = os.fspath(src), os.fspath(dst)
    smoother = TemporalSmoothing(enhancer, options.temporal_smoothing) if options.temporal_smoothing else None
    model = smoother or enhancer
    from lowlight_fast import io

    try:
        inp = av.open(src)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot read {src!r} as a video: {_reason(exc)}") from None
    except OSError as exc:
        raise VideoError(f"cannot read {src!r} as a video: {exc.strerror or exc}") from None
    tmp = io.temporary_path(dst)
    try:
        with inp:
            if not inp.streams.video:
                raise VideoError(f"cannot read {src!r} as a video: it holds no video stream")
            vin = inp.streams.video[0]
            ain = list(inp.streams.audio)
            vin.thread_type = "AUTO"
            try:
                out = av.open(tmp, "w", format=_output_format(av, dst))
            except av.FFmpegError as exc:
                raise VideoError(f"{src}: cannot write {dst}: {_reason(exc)}") from None
            try:
                frames = _transcode(av, inp, vin, ain, out, model, enhancer, options, src, on_frames,
                                    on_start)
            except BaseException:
                try:
                    out.close()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise
            out.close()
        os.replace(tmp, dst)
        return frames
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _transcode(av, inp, vin, ain, out, model, enhancer, options: VideoOptions, src: str, on_frames,
               on_start) -> int:
    cin = vin.codec_context
    codec_name = _choose_codec(av, options, vin, out)
    codec = av.Codec(codec_name, "w")
    rate = vin.average_rate or vin.guessed_rate or vin.base_rate or Fraction(25)
    vout = out.add_stream(codec_name, rate=rate)
    vout.width, vout.height = cin.width, cin.height
    vout.pix_fmt = _choose_pix_fmt(codec, options.pix_fmt, cin.pix_fmt)
    vout.time_base = vin.time_base
    vout.codec_context.time_base = vin.time_base
    if cin.sample_aspect_ratio:
        vout.codec_context.sample_aspect_ratio = cin.sample_aspect_ratio
    names = _option_names(av, codec_name)
    opts = {}
    crf = None if options.crf is None else f"{options.crf:g}"
    for key, value in (("crf", crf), ("preset", options.preset)):
        if value is None:
            continue
        if key not in names:
            raise ValueError(f"{key}: codec {codec_name} has none (it is the codec of {src}: give --codec)")
        opts[key] = value
    if "crf" not in names and vin.bit_rate:
        vout.bit_rate = vin.bit_rate  # no quality target: the input's rate, not FFmpeg's low default
    vout.options = opts
    for a in ain:
        if a.codec_context.name not in out.supported_codecs:
            raise VideoError(f"{src}: its {a.codec_context.name} audio cannot be copied into a "
                             f"{out.format.name} file; enhance it into another container")
    aout = {a.index: out.add_stream_from_template(a) for a in ain}
    if on_start is not None:
        on_start(vin.frames or None)

    pipe = _Pipe()
    decoded: queue.Queue = queue.Queue(_QUEUE)
    enhanced: queue.Queue = queue.Queue(_QUEUE)
    batch = _batch_size(enhancer, options.batch, cin.height, cin.width)
    done = object()

    def decode() -> None:  # thread: demux, decode, convert; audio packets pass along in order
        try:
            frames: list[np.ndarray] = []
            stamps: list[tuple[int | None, Fraction | None]] = []
            streams = [vin] + ain
            for packet in inp.demux(streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        pipe.put(decoded, ("audio", packet))
                    continue
                for f in packet.decode():
                    frames.append(f.to_ndarray(format="rgb24"))
                    stamps.append((f.pts, f.time_base))
                    if len(frames) == batch:
                        pipe.put(decoded, ("video", _to_tensor(frames), stamps))
                        frames, stamps = [], []
            if frames:
                pipe.put(decoded, ("video", _to_tensor(frames), stamps))
            pipe.put(decoded, done)
        except _Stop:
            pass
        except av.FFmpegError as exc:
            pipe.fail(VideoError(f"cannot read {src!r} as a video: {_reason(exc)}"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            pipe.fail(exc)

    written = [0]

    def encode() -> None:  # thread: round, encode, mux (the container is used by this thread only)
        try:
            while True:
                item = pipe.get(enhanced)
                if item is done:
                    break
                if item[0] == "audio":
                    packet = item[1]
                    packet.stream = aout[packet.stream.index]
                    out.mux(packet)
                    continue
                _, y, stamps = item
                for frame_rgb, (pts, tb) in zip(_to_uint8(y), stamps):
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
                    vf.pts, vf.time_base = pts, tb
                    out.mux(vout.encode(vf))
                    written[0] += 1
            out.mux(vout.encode(None))
        except _Stop:
            pass
        except av.FFmpegError as exc:
            pipe.fail(VideoError(f"{src}: cannot write the enhanced video: {_reason(exc)}"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            pipe.fail(exc)

    threads = [threading.Thread(target=decode, name="lowlight-fast-video-read", daemon=True),
               threading.Thread(target=encode, name="lowlight-fast-video-write", daemon=True)]
    # PyAV takes the GIL back between its codec calls many times a frame; with three busy threads the
    # interpreter's default switch interval (5 ms) makes each such wait last up to that long
    # (benchmarks/RESULTS.md, "video"): a short interval while the stages run.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
    for t in threads:
        t.start()
    # Batches in flight (an Enhancer's stream keeps one on the GPU while the next is copied): their
    # stamps, shape, and the audio packets (and the end) that followed them, passed on after their frames.
    in_flight: collections.deque = collections.deque()

    def batches():
        while True:
            item = pipe.get(decoded)
            if item is done or item[0] == "audio":
                if in_flight:
                    in_flight[-1][2].append(item)
                else:
                    pipe.put(enhanced, item)
                if item is done:
                    return
                continue
            _, x, stamps = item
            in_flight.append((stamps, tuple(x.shape), []))
            yield x

    stream = getattr(model, "stream", None)
    try:
        for y in (stream(batches()) if stream is not None else map(model, batches())):
            stamps, shape, after = in_flight.popleft()
            if tuple(y.shape) != shape:
                raise VideoError(f"{src}: the model returned {tuple(y.shape)} for frames of {shape}")
            pipe.put(enhanced, ("video", y, stamps))
            if on_frames is not None:
                on_frames(len(stamps))
            for item in after:
                pipe.put(enhanced, item)
    except _Stop:
        pass
    except BaseException as exc:  # noqa: BLE001 - the stages stop, then it is raised
        pipe.fail(exc)
    finally:
        for t in threads:  # a stage that failed stopped the others at their next queue operation
            t.join()
        sys.setswitchinterval(switch)
    if pipe.error is not None:
        raise pipe.error
    return written[0]


# ------------------------------------------------------------------------------------------ many videos
def enhance_videos(files: Sequence[str], outdir: str | os.PathLike,
                   enhancer: Callable[[torch.Tensor], torch.Tensor], options: VideoOptions | None = None, *,
                   on_start: Callable[[str, int | None], None] | None = None,
                   on_frames: Callable[[int], None] | None = None,
                   on_progress: Callable[[str], None] | None = None,
                   on_error: Callable[[str], None] | None = None) -> tuple[list[str], list[str], int]:
    """Enhance the videos ``files`` into ``outdir/<name>`` (same name and container as the input);
    returns (written paths, error messages, frames written).

    The guarantees of :func:`lowlight_fast.enhance.enhance_files` hold: outputs are written atomically,
    never over an input, an earlier input's output, or one that another process is writing or wrote
    during the call. A file that fails is skipped and named in its message; the others go on.
    ``on_start(path, frames)`` before each file (frames: the count its container announces, or None),
    ``on_frames(n)`` as frames are enhanced, ``on_error(message)`` per error, ``on_progress(path)``
    once per file when it is done with. An exception other than a file's failure (KeyboardInterrupt)
    leaves nothing half-written and propagates.
    """
    import time

    from lowlight_fast.enhance import (OutputClaims, _claim_output, _describe_os_error,
                                       _remove_stale_temporaries)

    options = options or VideoOptions()
    options.check()
    if options.temporal_smoothing:
        TemporalSmoothing(enhancer, options.temporal_smoothing)  # refused before any file, not per file
    outdir = os.fspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    _remove_stale_temporaries(outdir)
    written: list[str] = []
    errors: list[str] = []
    claimed: dict[str, str] = {}
    inputs = {os.path.realpath(f) for f in files}
    started = time.time_ns()
    total = 0
    with OutputClaims(outdir) as claims:
        for src in files:
            dst = os.path.join(outdir, Path(src).name)
            try:
                _claim_output(src, dst, inputs, claimed, claims, started)
                n = enhance_video(src, dst, enhancer, options, on_frames=on_frames,
                                  on_start=None if on_start is None else (lambda f, s=src: on_start(s, f)))
                written.append(dst)
                total += n
            except (VideoError, ValueError) as exc:
                _fail(errors, on_error, str(exc))
            except MemoryError:
                _fail(errors, on_error, f"{src}: not enough memory to enhance it (try --batch 1)")
            except RuntimeError as exc:
                _fail(errors, on_error, f"{src}: {exc}")
            except OSError as exc:
                _fail(errors, on_error, f"{src}: cannot write {dst}: {_describe_os_error(exc)}")
            if on_progress is not None:
                on_progress(src)
    return written, errors, total


def _fail(errors: list[str], on_error, message: str) -> None:
    errors.append(message)
    if on_error is not None:
        on_error(message)
