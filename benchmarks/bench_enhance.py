"""End-to-end CPU throughput of ``lowlight-fast enhance`` against an original-style Zero-DCE script.

    PYTHONPATH=$PWD python benchmarks/bench_enhance.py --images 16 --subnormal-images 4

What runs, each as a fresh process (start-up included), on the same real-size images (720 x 680,
0.49 megapixel, made from the bundled samples):

1. ``original-style, subnormal weights``: a plain eager script written the way the authors' test
   script works (PIL read, /255, the seven convs, all 8 curve steps with the three outputs, rounding
   save), fed weights holding subnormal values as the released checkpoint does (19,266 of them,
   5,540 in e_conv5). Slow: run on ``--subnormal-images`` images only.
2. ``original-style, flushed weights``: the same script, the same weights with subnormals set to 0.
3. ``lowlight-fast enhance``: the command line, given the subnormal weights file (it flushes them).
4. ``seven convolutions alone``: in one warm process, only the 7 ``conv2d`` calls on every image
   (their real inputs precomputed), best of 3: the floor any implementation built on these convs has.

Also checks that the outputs of 1, 2 and 3 are the same 8-bit pixels. Writes a markdown table
(``--out``, default benchmarks/results/enhance.md). No GPU involved.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORIGINAL_STYLE = textwrap.dedent('''
    """Zero-DCE inference the way the original test script does it (our own code, written from the papers' formulas)."""
    import glob, os, sys, time
    import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
    from PIL import Image

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 32), (32, 32), (64, 32), (64, 32), (64, 24)], 1):
                setattr(self, f"e_conv{i}", nn.Conv2d(cin, cout, 3, 1, 1, bias=True))

        def forward(self, x):
            x1 = F.relu(self.e_conv1(x)); x2 = F.relu(self.e_conv2(x1)); x3 = F.relu(self.e_conv3(x2))
            x4 = F.relu(self.e_conv4(x3)); x5 = F.relu(self.e_conv5(torch.cat([x3, x4], 1)))
            x6 = F.relu(self.e_conv6(torch.cat([x2, x5], 1)))
            r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
            rs = torch.split(r, 3, dim=1)
            for k in range(4):
                x = x + rs[k] * (torch.pow(x, 2) - x)
            e1 = x
            for k in range(4, 8):
                x = x + rs[k] * (torch.pow(x, 2) - x)
            return e1, x, r

    weights, src, dst, flush = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    if flush:
        with torch.no_grad():
            for p in net.parameters():
                p[p.abs() < torch.finfo(p.dtype).tiny] = 0
    os.makedirs(dst, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(src, "*.png"))):
        x = torch.from_numpy(np.asarray(Image.open(path)) / 255.0).float().permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            _, y, _ = net(x)
        y = y[0].mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # torchvision's rounding
        Image.fromarray(y).save(os.path.join(dst, os.path.basename(path)))
''')


def make_images(folder: Path, n: int, width: int, height: int) -> None:
    from lowlight_fast.models.registry import bundled_samples

    samples = bundled_samples()
    if not samples:
        raise SystemExit("no bundled samples found (lowlight_fast/data/samples)")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.open(samples[i % len(samples)]).convert("RGB")
        if (i // len(samples)) % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = max(width / im.width, height / im.height) * (1 + 0.1 * (i // len(samples)))
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        left, top = (im.width - width) // 2, (im.height - height) // 2
        im.crop((left, top, left + width, top + height)).save(folder / f"img{i:03d}.png")


SUBNORMALS = {"e_conv5": 5540}  # as in the released checkpoint; the rest spread over the other convs
SUBNORMAL_TOTAL = 19266


def subnormal_weights(path: Path) -> dict:
    """Zero-DCE weights (the bundled ones, else a seeded init) whose smallest-magnitude weights are replaced
    by subnormal values, 19,266 in all (5,540 in e_conv5), like the authors' released checkpoint."""
    from lowlight_fast.models.registry import bundled_weights
    from lowlight_fast.models import ZeroDCE, read_state_dict

    torch.manual_seed(0)
    sd = read_state_dict(bundled_weights("zerodce")) if bundled_weights("zerodce").is_file() else ZeroDCE().state_dict()
    sd = {k: v.clone() for k, v in sd.items()}
    convs = [f"e_conv{i}" for i in range(1, 8)]
    rest = SUBNORMAL_TOTAL - sum(SUBNORMALS.values())
    other = sum(sd[f"{c}.weight"].numel() for c in convs if c not in SUBNORMALS)
    gen = torch.Generator().manual_seed(1)
    counts = {}
    placed = 0
    for c in convs:
        w = sd[f"{c}.weight"].view(-1)
        k = SUBNORMALS.get(c, round(rest * w.numel() / other))
        if c == convs[-1]:
            k = SUBNORMAL_TOTAL - placed
        placed += k
        idx = w.abs().argsort()[:k]
        mags = torch.exp(torch.empty(k).uniform_(np.log(1.5e-45), np.log(1.1e-38), generator=gen))
        w[idx] = torch.where(w[idx] < 0, -mags, mags).float()
        counts[c] = int(((w != 0) & (w.abs() < torch.finfo(torch.float32).tiny)).sum())
    torch.save(sd, path)
    return counts


def run_timed(cmd: list[str], env=None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return dt


def conv_floor(weights: Path, folder: Path, repeats: int = 3) -> float:
    """Seconds for the 7 conv2d calls alone over all images (inputs precomputed), best of ``repeats``."""
    from lowlight_fast.models import ZeroDCE, load_weights

    m = load_weights(ZeroDCE(fused=False), weights).eval()
    convs = [getattr(m, f"e_conv{i}") for i in range(1, 8)]
    per_image = []
    with torch.inference_mode():
        for p in sorted(folder.glob("*.png")):
            x = torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
            x1 = F.relu(convs[0](x)); x2 = F.relu(convs[1](x1)); x3 = F.relu(convs[2](x2)); x4 = F.relu(convs[3](x3))
            c5 = torch.cat([x3, x4], 1); x5 = F.relu(convs[4](c5)); c6 = torch.cat([x2, x5], 1)
            x6 = F.relu(convs[5](c6)); c7 = torch.cat([x1, x6], 1)
            per_image.append([x, x1, x2, x3, c5, c6, c7])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for inputs in per_image:
                for conv, inp in zip(convs, inputs):
                    F.conv2d(inp, conv.weight, conv.bias, padding=1)
            best = min(best, time.perf_counter() - t0)
    return best


def compare(a: Path, b: Path) -> tuple[int, float]:
    """Largest 8-bit difference and the fraction of samples that differ."""
    worst, differ, total = 0, 0, 0
    for p in sorted(a.glob("*.png")):
        x = np.asarray(Image.open(p)).astype(int)
        y = np.asarray(Image.open(b / p.name)).astype(int)
        worst = max(worst, int(np.abs(x - y).max()))
        differ += int((x != y).sum())
        total += x.size
    return worst, differ / total


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _d(d: tuple[int, float]) -> str:
    return f"{d[0]} ({d[1]:.2e})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--subnormal-images", type=int, default=4,
                    help="images for the slow original-style run with subnormal weights (a subset)")
    ap.add_argument("--size", default="720x680", help="W x H of the test images")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "enhance.md"))
    ap.add_argument("--repeats", type=int, default=3, help="runs of every variant, interleaved; the best counts")
    ap.add_argument("--note", default="", help="machine note for the table (e.g. shared with other jobs)")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    py = sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "all", args.images, width, height)
        sub = tmp / "subset"
        sub.mkdir()
        for p in sorted((tmp / "all").glob("*.png"))[: args.subnormal_images]:
            (sub / p.name).symlink_to(p)
        weights = tmp / "zerodce_subnormal.pth"
        counts = subnormal_weights(weights)
        script = tmp / "original_style.py"
        script.write_text(ORIGINAL_STYLE)
        ours = [py, "-m", "lowlight_fast", "enhance"]

        rows = []

        def record(label, n, seconds, note=""):
            rows.append((label, n, seconds, seconds / n, note))
            print(f"{label:55s} {n:3d} images {seconds:8.2f} s  {seconds / n:7.3f} s/image {note}", flush=True)

        n_sub, n = args.subnormal_images, args.images
        variants = {
            "orig_sub": ([py, str(script), str(weights), str(sub), str(tmp / "o_sub"), "0"], n_sub),
            "flush_sub": ([py, str(script), str(weights), str(sub), str(tmp / "o_flush_sub"), "1"], n_sub),
            "ours_sub": (ours + [str(sub), "-o", str(tmp / "l_sub"), "--weights", str(weights), "--device", "cpu",
                                 "-q"], n_sub),
            "flush": ([py, str(script), str(weights), str(tmp / "all"), str(tmp / "o_flush"), "1"], n),
            "ours": (ours + [str(tmp / "all"), "-o", str(tmp / "l_all"), "--weights", str(weights), "--device", "cpu",
                             "-q"], n),
        }
        best = {k: float("inf") for k in variants}
        for r in range(args.repeats):  # interleaved, so that a burst of load hits every variant alike
            for k, (cmd, _) in variants.items():
                best[k] = min(best[k], run_timed(cmd, env))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), flush=True)
        t_orig_sub, t_flush_sub, t_ours_sub, t_flush, t_ours = (
            best[k] for k in ("orig_sub", "flush_sub", "ours_sub", "flush", "ours"))
        record("original-style script, subnormal weights", n_sub, t_orig_sub)
        record("original-style script, subnormals flushed", n_sub, t_flush_sub)
        record("lowlight-fast enhance", n_sub, t_ours_sub)
        record("original-style script, subnormals flushed", n, t_flush)
        record("lowlight-fast enhance", n, t_ours)
        t_conv = conv_floor(weights, tmp / "all", repeats=args.repeats)
        record("seven convolutions alone (warm, in-process)", n, t_conv)
        t_conv_sub = conv_floor(weights, sub, repeats=args.repeats)
        diff_sub = compare(tmp / "o_sub", tmp / "l_sub")
        diff_flush_sub = compare(tmp / "o_flush_sub", tmp / "l_sub")
        diff_orig = compare(tmp / "o_sub", tmp / "o_flush_sub")
        diff_all = compare(tmp / "o_flush", tmp / "l_all")

    speedup_sub = t_orig_sub / t_ours_sub
    speedup_all = (t_orig_sub / n_sub) / (t_ours / n)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    threads = torch.get_num_threads()
    lines = [
        "# `lowlight-fast enhance` on CPU against an original-style Zero-DCE script",
        "",
        f"Command: `PYTHONPATH=$PWD {Path(py).name} benchmarks/bench_enhance.py --images {n} "
        f"--subnormal-images {n_sub} --size {args.size} --repeats {args.repeats}`  ",
        f"Date: {now}. Machine: {platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({threads} threads){', ' + args.note if args.note else ''}.  ",
        f"Images: {width} x {height} ({width * height / 1e6:.2f} MP) PNG, made from the bundled samples. Weights: "
        f"Zero-DCE with {sum(counts.values())} subnormal float32 weights ({counts['e_conv5']} in e_conv5), like the "
        "authors' released checkpoint, saved as a .pth. Every time is a fresh process, start-up included, "
        "except the convolution floor; every variant ran "
        f"{args.repeats} times, interleaved, and the best time counts. CPU: {_cpu_name()}.",
        "",
        "| run | images | total (s) | s / image |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {k} | {s:.2f} | {s / k:.3f} |" for label, k, s, _, _ in rows]
    lines += [
        "",
        f"- Subnormal-weight effect (original-style script, same {n_sub} images): "
        f"{t_orig_sub:.1f} s with subnormal weights, {t_flush_sub:.1f} s with them flushed "
        f"({t_orig_sub / t_flush_sub:.1f}x).",
        f"- `enhance` vs the original-style script with the subnormal weights, end to end on the same {n_sub} images: "
        f"{speedup_sub:.1f}x faster; per image (original on {n_sub}, ours on {n}, start-up included): "
        f"{speedup_all:.1f}x.",
        f"- `enhance` vs the original-style script with flushed weights ({n} images, end to end): "
        f"{t_flush / t_ours:.2f}x.",
        f"- `enhance` end to end ({n} images, start-up included) / seven convolutions alone: "
        f"{t_ours / t_conv:.2f}x; on the {n_sub}-image subset: {t_ours_sub / t_conv_sub:.2f}x.",
        "- Outputs (largest 8-bit difference, share of samples that differ): original-style with subnormal vs "
        f"flushed weights {_d(diff_orig)}; `enhance` vs original-style with subnormal weights {_d(diff_sub)}, "
        f"with flushed weights {_d(diff_flush_sub)} ({n_sub} images), {_d(diff_all)} ({n} images).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
