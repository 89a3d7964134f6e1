"""The video options of ``lowlight-fast enhance`` and their handling (the library: lowlight_fast.video)."""
from __future__ import annotations

import argparse
import sys


def _float_in(low: float, high: float, high_open: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, "
                                             f"got {text}")
        return value

    parse.__name__ = "number"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowlight_fast.cli import int_at_least
    from lowlight_fast.video import BATCH, FALLBACK_CODEC

    g = p.add_argument_group("video", (
        "inputs ending in .mp4, .mkv, .mov, .webm, .avi, ... (lowlight_fast.video.VIDEO_EXTENSIONS) are "
        "videos, written as OUTDIR/<same name>; needs PyAV (pip install 'lowlight_fast[video]')"))
    g.add_argument("--codec", default=None, help=(
        f"video encoder (libx264, libx265, libvpx-vp9, ffv1, ...); default: the input's codec when it can "
        f"be encoded into the container, else {FALLBACK_CODEC}"))
    g.add_argument("--crf", type=_float_in(0, 63, False), default=None, metavar="Q",
                   help="constant rate factor of x264/x265/VP9/AV1 (lower: better, larger; "
                        "default: the codec's)")
    g.add_argument("--preset", default=None, help="x264/x265 speed preset (ultrafast ... veryslow; default: "
                                                  "the codec's, medium)")
    g.add_argument("--pix-fmt", default=None, help="output pixel format (default: the input's if the codec "
                                                   "takes it, else yuv420p)")
    g.add_argument("--batch", type=int_at_least(1), default=BATCH, metavar="N",
                   help=f"frames per model call (default {BATCH}; fewer when they would not fit in memory)")
    g.add_argument("--temporal-smoothing", type=_float_in(0, 1, True), default=0.0, metavar="A", help=(
        "average the curve maps over frames, m_t = A m_(t-1) + (1 - A) c_t (0 <= A < 1; default 0: off; "
        "SCI: its estimator's term); on static noisy scenes it does not reduce flicker "
        "(benchmarks/RESULTS.md)"))


def options_from(args):
    """The VideoOptions of the parsed arguments; ValueError for a bad combination."""
    from lowlight_fast.video import VideoOptions

    o = VideoOptions(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
                     batch=args.batch, temporal_smoothing=args.temporal_smoothing)
    o.check()
    return o


def run(files: list[str], outdir: str, enhancer, options, progress: bool) -> tuple[list[str], list[str], int]:
    """lowlight_fast.video.enhance_videos with one progress bar per video, in frames/s, and errors
    printed above it as they happen."""
    from tqdm import tqdm

    from lowlight_fast.video import enhance_videos

    bar = None

    def start(path: str, frames: int | None) -> None:
        nonlocal bar
        close()
        bar = tqdm(total=frames, unit="frame", desc=path, disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)

    def close() -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    def error(message: str) -> None:
        (bar.write if bar is not None else tqdm.write)(f"error: {message}", file=sys.stderr)

    try:
        return enhance_videos(files, outdir, enhancer, options, on_start=start,
                              on_frames=lambda n: bar.update(n) if bar is not None else None,
                              on_progress=lambda _: close(), on_error=error)
    finally:
        close()
