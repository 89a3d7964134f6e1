"""`lowlight-fast enhance` end to end, start-up included, against another checkout of the package.

    PYTHONPATH=$PWD python benchmarks/bench_enhance_cli.py [images] [video] \
        [--baseline /path/to/older/checkout] [--repeats 3] [--frames 150] [--extra-args "--io-threads 2"]

Each run is a fresh `python -m lowlight_fast enhance ...` process (what a user types), timed by wall
clock from spawn to exit; the checkouts run interleaved, round by round, and the best time of each counts.
``--baseline``: a checkout (with its compiled extension built in place) run with the same command, so that
"N x faster than today's enhance" is read from one run on one machine.

- ``images``: 4 1920x1080 + 4 3840x2160 PNGs (the bundled samples resized, with sensor-like noise; the
  inputs of bench_enhance_io.py's ``images``) through Zero-DCE++ at scale factor 12, PNG output at the
  command's defaults.
- ``video``: a 1280x720 H.264 clip (30 fps, AAC audio; bench_enhance_io.py's clip) through Zero-DCE++
  (scale factor 12), x264's default preset and ``--preset veryfast``; frames/s end to end.

Prints markdown tables. No GPU involved (``--device cpu``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_enhance_io import _make_clip, _scene  # noqa: E402


def _run(checkout: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "lowlight_fast", "enhance", "-q", "--device", "cpu", *args]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall


def _compare(name: str, checkouts: dict[str, Path], args_for, repeats: int, unit: float, unit_name: str) -> None:
    best = {label: float("inf") for label in checkouts}
    for _ in range(repeats):
        for label, checkout in checkouts.items():
            with tempfile.TemporaryDirectory() as out:
                best[label] = min(best[label], _run(checkout, args_for(out)))
    base = best.get("baseline")
    print(f"| {name} | " + " | ".join(f"{best[k]:.2f} s, {unit / best[k]:.2f} {unit_name}" for k in checkouts)
          + (f" | {base / best['this checkout']:.2f}x |" if base else " |"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="*", default=["images", "video"])
    p.add_argument("--baseline", type=Path, help="another checkout to run the same commands with")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--extra-args", default="", help="more arguments for both checkouts' enhance")
    a = p.parse_args()
    checkouts = {"this checkout": ROOT}
    if a.baseline:
        checkouts = {"baseline": a.baseline.resolve(), "this checkout": ROOT}
    extra = shlex.split(a.extra_args)
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average before: {load:.1f}; "
          f"best of {a.repeats}, fresh processes, start-up included; extra arguments: {extra or 'none'}\n")
    header = "| case | " + " | ".join(checkouts) + (" | speed-up |" if a.baseline else " |")
    rule = "|---|" + "---:|" * (len(checkouts) + (1 if a.baseline else 0))
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        if "images" in a.what:
            src = Path(d, "images")
            src.mkdir()
            sizes = [(1920, 1080)] * 4 + [(3840, 2160)] * 4
            for i, (w, h) in enumerate(sizes):
                Image.fromarray(_scene(w, h, i, i)).save(src / f"{i}.png", compress_level=1)
            mp = sum(w * h for w, h in sizes) / 1e6
            print(f"## images: 4 x 1920x1080 + 4 x 3840x2160 PNGs ({mp:.1f} MP), Zero-DCE++ scale factor 12\n")
            print(header + "\n" + rule)
            _compare("8 PNGs", checkouts, lambda out: [str(src), "-o", out, "--model", "zerodcepp", *extra],
                     a.repeats, len(sizes), "images/s")
            print()
        if "video" in a.what:
            clip = os.path.join(d, "clip.mp4")
            _make_clip(clip, a.frames)
            print(f"## video: 1280x720 H.264, {a.frames} frames, 30 fps, AAC audio; Zero-DCE++ scale factor 12\n")
            print(header + "\n" + rule)
            for preset in ("default", "veryfast"):
                more = [] if preset == "default" else ["--preset", preset]
                _compare(f"x264 preset {preset}", checkouts,
                         lambda out, more=more: [clip, "-o", out, "--model", "zerodcepp", *more, *extra],
                         a.repeats, a.frames, "frames/s")
            print()
    print(f"(load average after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
