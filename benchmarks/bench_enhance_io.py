"""Image and video I/O around the model in ``lowlight-fast enhance``, on the CPU.

    PYTHONPATH=$PWD python benchmarks/bench_enhance_io.py [png] [png-filters] [images] [video] [flicker]

- ``png``: PNG encoding of one enhanced 1920x1080 image at each zlib level (``--png-compression``),
  Pillow's encoder beside ours (``lowlight_fast.png``, 1 and 2 threads): ms and MB, best of 3; then the
  file sizes of both on 4K scenes (noisy, smooth) at levels 0, 1, 6, 9.
- ``png-filters``: file sizes with one fixed PNG filter on every row (None, Sub, Up, Average, Paeth)
  against Pillow's per-row choice, on 1080p scenes (noisy, smooth, enhanced), levels 1, 6, 9; and the time
  ``lowlight_fast.png`` takes to filter a 4K frame, with Sub and with Pillow's per-row choice.
- ``images``: 4 1920x1080 and 4 3840x2160 PNGs (made from the bundled samples, with sensor-like
  noise) through Zero-DCE++ (scale factor 12) by ``lowlight_fast.enhance.enhance_files``, sequential
  (io_threads=0) and overlapped (1, 2 threads), each with the PNG encoder deflating on 1 and 2 threads
  (``--png-threads``): wall time, images/s, and the time spent decoding, in
  the model and encoding (summed over threads: with overlap they add up to more than the wall time).
- ``video``: a 1280x720 H.264 clip (generated here with PyAV, 30 fps, AAC audio) through Zero-DCE++
  (scale factor 12) by ``lowlight_fast.video.enhance_video``, end to end, in frames/s, per x264 preset.
- ``flicker``: frame-to-frame change of the mean brightness of a static scene with noise, with and
  without ``--temporal-smoothing`` (bundled weights).

Prints markdown tables. No GPU involved.
"""
from __future__ import annotations

import argparse
import io as pyio
import os
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lowlight_fast import io, png  # noqa: E402
from lowlight_fast.enhance import Enhancer, enhance_files  # noqa: E402
from lowlight_fast.models import registry  # noqa: E402


def _scene(w: int, h: int, seed: int, sample: int = 0) -> np.ndarray:
    """A bundled dark sample resized to w x h with Gaussian noise (sigma 2 levels), uint8."""
    paths = registry.bundled_samples()
    base = np.asarray(Image.open(paths[sample % len(paths)]).convert("RGB").resize((w, h), Image.BICUBIC),
                      np.float32)
    rng = np.random.default_rng(seed)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def _best_ms(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall ms, best CPU ms of the process: all threads, less sensitive to other jobs, result)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return best * 1e3, best_cpu * 1e3, out


def _pillow_png(a: np.ndarray, level: int) -> bytes:
    buf = pyio.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def _one_piece_size(data: bytes, level: int) -> int:
    """The size of the PNG ``data`` were its filtered stream deflated in one piece (same coder and settings)."""
    idat, pos = [], 8
    while pos < len(data):
        n, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    stream = zlib.decompress(b"".join(idat))
    if level == png.FAST_LEVEL:  # our coder (lowlight_fast.ops.deflate), as the encoder runs it
        from lowlight_fast.ops.deflate import deflate_fast

        return len(data) - sum(map(len, idat)) + 2 + len(deflate_fast(stream)) + 4  # zlib header, Adler-32
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    return len(data) - sum(map(len, idat)) + len(z.compress(stream) + z.flush())


def bench_png(enhancer) -> None:
    x = torch.from_numpy(_scene(1920, 1080, 0)).permute(2, 0, 1)[None].float() / 255
    y = enhancer(x)
    q = io.quantize(io.tensor_to_hwc(y), 8)
    print("One enhanced 1920x1080 image; encode ms (best of 3) of the quantized array into memory, wall and "
          "CPU (all threads), and of the whole `write_image` call (rounding and file included)\n")
    print("| zlib level | Pillow ms | Pillow CPU ms | Pillow MB | ours ms, 1 thread | ours ms, 2 threads "
          "| ours CPU ms, 1 / 2 threads | ours MB | write_image ms |\n" + "|---:" * 9 + "|")
    with tempfile.TemporaryDirectory() as d:
        for level in range(10):
            pil_ms, pil_cpu, pil = _best_ms(lambda: _pillow_png(q, level), 3)
            ms1, cpu1, ours = _best_ms(lambda: png.encode(q, level, threads=1), 3)
            ms2, cpu2, ours2 = _best_ms(lambda: png.encode(q, level, threads=2), 3)
            assert ours == ours2
            path = os.path.join(d, "a.png")
            wi_ms, _, _ = _best_ms(lambda: io.write_image(path, y, png_compression=level), 3)
            print(f"| {level} | {pil_ms:.0f} | {pil_cpu:.0f} | {len(pil) / 1e6:.2f} | {ms1:.0f} | {ms2:.0f} "
                  f"| {cpu1:.0f} / {cpu2:.0f} | {len(ours) / 1e6:.2f} | {wi_ms:.0f} |", flush=True)
    scenes = {
        "3840x2160 scene (a sample resized, noise sigma 2: the `images` inputs)": _scene(3840, 2160, 0),
        "3840x2160 sample resized, no noise (smooth)": np.asarray(
            Image.open(registry.bundled_samples()[0]).convert("RGB").resize((3840, 2160), Image.BICUBIC)),
        "1920x1080 enhanced scene (as above)": q,
    }
    print("\nPillow (its per-row filter choice) against ours (level 0: no filter; 1-3: Sub on every row; "
          "4-9: Pillow's per-row choice), 2 threads; one run each\n")
    print("| image | zlib level | Pillow ms | Pillow CPU ms | Pillow MB | ours ms | ours CPU ms | ours MB "
          "| size ours/Pillow | our stream in one piece, MB |\n|---|" + "---:|" * 9)
    for name, a in scenes.items():
        for level in (0, 1, 6, 9):
            pil_ms, pil_cpu, pil = _best_ms(lambda: _pillow_png(a, level), 1)
            ms, cpu, ours = _best_ms(lambda: png.encode(a, level, threads=2), 1)
            print(f"| {name} | {level} | {pil_ms:.0f} | {pil_cpu:.0f} | {len(pil) / 1e6:.2f} | {ms:.0f} "
                  f"| {cpu:.0f} | {len(ours) / 1e6:.2f} | {len(ours) / len(pil):.3f} "
                  f"| {_one_piece_size(ours, level) / 1e6:.2f} |", flush=True)


def _fixed_filter_stream(a: np.ndarray, kind: int) -> bytes:
    """The PNG stream of an 8-bit H x W x C array with one filter (0 None .. 4 Paeth) on every row."""
    h, bpp = a.shape[0], a.shape[2]
    r = a.reshape(h, -1).astype(np.int16)
    left = np.zeros_like(r)
    left[:, bpp:] = r[:, :-bpp]
    up = np.zeros_like(r)
    up[1:] = r[:-1]
    upleft = np.zeros_like(r)
    upleft[1:, bpp:] = r[:-1, :-bpp]
    pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    pred = [np.zeros_like(r), left, up, (left + up) >> 1, paeth][kind]
    rows = ((r - pred) & 0xFF).astype(np.uint8)
    return np.concatenate([np.full((h, 1), kind, np.uint8), rows], axis=1).tobytes()


def bench_png_filters(enhancer) -> None:
    """File sizes with one fixed filter on every row, zlib as Pillow sets it, against Pillow's files."""
    q = io.quantize(io.tensor_to_hwc(enhancer(
        torch.from_numpy(_scene(1920, 1080, 0)).permute(2, 0, 1)[None].float() / 255)), 8)
    scenes = {
        "1920x1080 scene (noise sigma 2)": _scene(1920, 1080, 0),
        "1920x1080 sample resized, no noise": np.asarray(
            Image.open(registry.bundled_samples()[0]).convert("RGB").resize((1920, 1080), Image.BICUBIC)),
        "1920x1080 enhanced scene": q,
    }
    names = ["None", "Sub", "Up", "Average", "Paeth"]
    print("MB; one filter on every row, deflated serially (memLevel 9, Z_FILTERED), against Pillow's file\n")
    print("| image | zlib level | " + " | ".join(names) + " | Pillow |\n|---|---:|" + "---:|" * 6)
    for name, a in scenes.items():
        streams = [_fixed_filter_stream(a, k) for k in range(5)]
        for level in (1, 6, 9):
            sizes = []
            for st in streams:
                z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
                sizes.append(len(z.compress(st) + z.flush()))
            sizes.append(len(_pillow_png(a, level)))
            print(f"| {name} | {level} | " + " | ".join(f"{n / 1e6:.3f}" for n in sizes) + " |", flush=True)
    a = _scene(3840, 2160, 0)
    raw = a.reshape(a.shape[0], -1)
    out = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    block = max(1, png.FILTER_ROWS_BYTES // out.shape[1])
    print("\nFiltering one 3840x2160 scene in lowlight_fast.png (numpy, one thread, blocks of rows), "
          "best of 3:\n")
    print("| filter | ms |\n|---|---:|")
    kinds = {"Sub on every row (levels 1-3)": png.SUB, "Pillow's per-row choice (levels 4-9)": png.ADAPTIVE}
    for label, kind in kinds.items():
        def run():
            for r in range(0, raw.shape[0], block):
                png._filter(raw, out, r, min(raw.shape[0], r + block), kind, 3)
        print(f"| {label} | {_best_ms(run, 3)[0]:.0f} |")


class _Timed:
    """Wraps a function, summing its time over all threads."""

    def __init__(self, fn):
        self.fn, self.total, self.lock = fn, 0.0, threading.Lock()

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            with self.lock:
                self.total += time.perf_counter() - t


def bench_images(enhancer, repeats: int, png_threads: list[int]) -> None:
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, (w, h) in enumerate([(1920, 1080)] * 4 + [(3840, 2160)] * 4):
            files.append(os.path.join(d, f"{i}.png"))
            Image.fromarray(_scene(w, h, i, i)).save(files[-1], compress_level=1)
        mp = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / 1e6
        print(f"{len(files)} PNGs, {mp:.1f} MP; best of {repeats} (by wall time)\n")
        print("| io_threads | PNG deflate threads | wall s | images/s | decode s | model s | encode s |"
              "\n|---:|---:|---:|---:|---:|---:|---:|")
        real_read, real_write, real_threads = io.read_image, io.write_image, png.THREADS
        runs = {(n, t): [] for t in png_threads for n in (0, 1, 2)}
        for _ in range(repeats):
            for n, t in runs:
                read, write, model = _Timed(real_read), _Timed(real_write), _Timed(enhancer)
                io.read_image, io.write_image, png.THREADS = read, write, t
                try:
                    start = time.perf_counter()
                    written, errors = enhance_files(files, os.path.join(d, "out"), model, io_threads=n)
                    wall = time.perf_counter() - start
                finally:
                    io.read_image, io.write_image, png.THREADS = real_read, real_write, real_threads
                assert not errors and len(written) == len(files), errors
                runs[n, t].append((wall, read.total, model.total, write.total))
        for (n, t), rs in runs.items():
            wall, r, m, w = min(rs)
            print(f"| {n} | {t} | {wall:.2f} | {len(files) / wall:.2f} | {r:.2f} | {m:.2f} | {w:.2f} |")


def _make_clip(path: str, frames: int) -> None:
    import av

    with av.open(path, "w") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 1280, 720, "yuv420p"
        v.options = {"crf": "20", "preset": "veryfast"}
        a = out.add_stream("aac", rate=48000)
        base = _scene(1280 + 4 * frames, 720, 0).astype(np.int16)
        rng = np.random.default_rng(1)
        for i in range(frames):  # a slow pan with fresh noise in every frame
            arr = np.clip(base[:, 4 * i:4 * i + 1280] + rng.integers(-3, 4, (720, 1280, 3)), 0, 255)
            f = av.VideoFrame.from_ndarray(arr.astype(np.uint8), format="rgb24")
            f.pts = i
            out.mux(v.encode(f))
        out.mux(v.encode())
        for i in range(frames * 48000 // 30 // 1024):
            af = av.AudioFrame.from_ndarray((rng.standard_normal((1, 1024)) * 0.05).astype(np.float32),
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, 1024 * i
            out.mux(a.encode(af))
        out.mux(a.encode())


def bench_video(enhancer, frames: int, presets: list[str]) -> None:
    from lowlight_fast.video import VideoOptions, enhance_video

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "clip.mp4")
        _make_clip(src, frames)
        print(f"1280x720 H.264 clip, {frames} frames, 30 fps, AAC audio; output libx264 (the input's codec)\n")
        print("| preset | crf | frames/s | MB |\n|---|---:|---:|---:|")
        for preset in presets:
            dst = os.path.join(d, f"out_{preset}.mp4")
            t = time.perf_counter()
            n = enhance_video(src, dst, enhancer, VideoOptions(preset=None if preset == "default" else preset))
            dt = time.perf_counter() - t
            print(f"| {preset} | 23 (x264's) | {n / dt:.1f} | {os.path.getsize(dst) / 1e6:.1f} |")


def bench_flicker() -> None:
    from lowlight_fast.video import TemporalSmoothing

    img = _scene(320, 240, 0, 2).astype(np.float32) / 255
    scene = torch.from_numpy(img).permute(2, 0, 1)[None]
    gen = torch.Generator().manual_seed(0)
    frames = (scene + torch.randn(16, 3, 240, 320, generator=gen) * 0.02).clamp(0, 1)

    def flicker(y):
        return y.mean(dim=(1, 2, 3)).diff().abs().mean().item() * 1e3

    weights = (0.0, 0.5, 0.8, 0.9)
    print("16 frames of one 320x240 scene + Gaussian noise (sigma 0.02); mean |change of the frame's mean "
          "brightness| between consecutive frames, x 1e-3 (input: "
          f"{flicker(frames):.3f})\n")
    print("| model | " + " | ".join(f"A = {a}" for a in weights) + " |\n|---|" + "---:|" * len(weights))
    for name, sf in (("zerodce", None), ("zerodcepp", 12), ("zerodcepp", 1), ("sci", None)):
        e = Enhancer(name, device="cpu", scale_factor=sf)
        row = [flicker(TemporalSmoothing(e, a)(frames)) if a else flicker(e(frames)) for a in weights]
        label = name + (f" (scale factor {sf})" if sf else "")
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="*", default=["png", "images", "video", "flicker"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--png-threads", type=int, nargs="+", default=[1, 2],
                   help="images: the PNG encoder's deflate threads to compare (lowlight_fast.png.THREADS)")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--presets", nargs="+", default=["default", "veryfast", "superfast", "ultrafast"])
    args = p.parse_args()
    from lowlight_fast.memory import keep_freed_memory_by_default

    keep_freed_memory_by_default(True)  # as the command runs
    torch.set_flush_denormal(True)
    enhancer = Enhancer("zerodcepp", device="cpu", scale_factor=12)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    for what in args.what:
        print(f"## {what}\n")
        {"png": lambda: bench_png(enhancer), "png-filters": lambda: bench_png_filters(enhancer),
         "images": lambda: bench_images(enhancer, args.repeats, args.png_threads),
         "video": lambda: bench_video(enhancer, args.frames, args.presets), "flicker": bench_flicker}[what]()
        print(f"\n(load average after: {os.getloadavg()[0]:.1f})\n")


if __name__ == "__main__":
    main()
