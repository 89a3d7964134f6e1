"""The headline benchmarks in one process, for a short GPU run (stage 3 of scripts/gpu_check.sh).

    python benchmarks/headline.py --out DIR [--device cuda|cpu] [--budget SECONDS] [--tiny]
        [--compile-backend inductor|eager] [--only SUBSTRING]

Cases (each: the eager reference, torch.compile(reference) and ours, in that order, in one process):
copy (device-to-device, the bandwidth ceiling), le_curve forward at 4K and forward+backward at
8x3x512x512, SmoothLoss forward+backward at 1080p, the pooled Zero-DCE losses (L_spa + L_color +
L_exp, as the original calls them) forward+backward at 8x3x256x256, one Zero-DCE training step at
8x3x256x256 and one SCI training step (3 stages) at 1x3x400x600, Zero-DCE enhance at 1080p; then frames
from host memory through ``Enhancer`` (Zero-DCE++ at 1080p, Zero-DCE at 4K): the model alone, with the
copies in line, and overlapped by ``Enhancer.stream`` (float32, float16), for frames/s and the copies' share.

Timing: CUDA events around each call after warm-up, the median of the repeats (on the CPU,
perf_counter). "bytes": the fewest bytes the op must move (inputs read once, outputs written once),
so that GB/s against the copy's says how close to the memory floor a case runs. Peak memory:
torch.cuda.max_memory_allocated above what was allocated before the case (CUDA only).

Written as soon as they exist, so that a run cut short still returns what it measured:
DIR/headline.jsonl (one JSON object per measurement or skip), DIR/headline.md (the table so far).
``--tiny`` shrinks every shape (the rehearsal on CPU); ``--budget`` skips what would start after it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lowlight_fast import use_backend  # noqa: E402
from lowlight_fast.losses import L_color, L_exp, L_spa, LossFunction, SmoothLoss, ZeroDCELoss  # noqa: E402
from lowlight_fast.models.sci import SCINetwork  # noqa: E402
from lowlight_fast.models.zerodce import ZeroDCE  # noqa: E402
from lowlight_fast.ops import le_curve as curve_ops  # noqa: E402
from lowlight_fast.reference import curve as curve_ref  # noqa: E402
from lowlight_fast.reference import sci_losses, zerodce_losses  # noqa: E402

F32 = 4
IMPLS = ("eager", "compiled", "ours")


class Case:
    """One benchmark: ``make(impl)`` returns a zero-argument callable that runs one iteration."""

    def __init__(self, name: str, make: Callable[[str], Callable[[], object]], nbytes: int | None = None,
                 impls=IMPLS):
        self.name, self.make, self.nbytes, self.impls = name, make, nbytes, impls


def _shape(full, tiny, is_tiny):
    return tiny if is_tiny else full


def cases(device: str, tiny: bool, compile_backend: str) -> list[Case]:
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, lo=0.0, hi=1.0, grad=False):
        t = (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(dev)
        return t.requires_grad_(grad)

    def compiled(fn):
        return torch.compile(fn, backend=compile_backend, dynamic=False)

    out: list[Case] = []

    # the ceiling: a device-to-device copy (bytes read + bytes written)
    n = 2 ** 18 if tiny else 2 ** 28
    src, dst = rand(n), torch.empty(n, device=dev)
    out.append(Case(f"copy {n * F32 >> 20} MiB", lambda impl: (lambda: dst.copy_(src)), 2 * n * F32, impls=("ours",)))

    # le_curve forward at 4K: read x (3) and r (24), write the two images (3 + 3) per pixel
    b, h, w = _shape((1, 2160, 3840), (1, 36, 64), tiny)
    x, r = rand(b, 3, h, w), rand(b, 24, h, w, lo=-1.0, hi=1.0)
    fwd = {"eager": curve_ref.le_curve, "compiled": compiled(curve_ref.le_curve), "ours": curve_ops.le_curve}

    def make_fwd(impl):
        fn = fwd[impl]
        return lambda: fn(x, r)

    out.append(Case(f"le_curve fwd {b}x3x{h}x{w}", make_fwd, b * h * w * (3 + 24 + 6) * F32))

    # le_curve forward+backward at 8x3x512x512: + read the two output grads, write grad x and grad r
    b, h, w = _shape((8, 512, 512), (2, 32, 48), tiny)
    xg, rg = rand(b, 3, h, w, grad=True), rand(b, 24, h, w, lo=-1.0, hi=1.0, grad=True)
    g4, g8 = rand(b, 3, h, w), rand(b, 3, h, w)
    fb = {"eager": curve_ref.le_curve, "compiled": compiled(curve_ref.le_curve), "ours": curve_ops.le_curve}

    def make_fb(impl):
        fn = fb[impl]

        def step():
            xg.grad = rg.grad = None
            e4, e8 = fn(xg, rg)
            torch.autograd.backward((e4, e8), (g4, g8))
        return step

    out.append(Case(f"le_curve fwd+bwd {b}x3x{h}x{w}", make_fb, b * h * w * (2 * 27 + 12) * F32))

    # SmoothLoss forward+backward at 1080p (SCI): read input and illumination twice, write both grads
    b, h, w = _shape((1, 1080, 1920), (1, 40, 56), tiny)
    si, so = rand(b, 3, h, w, grad=True), rand(b, 3, h, w, lo=1e-4, hi=0.9, grad=True)
    sl = {"eager": sci_losses.smooth_loss, "compiled": compiled(sci_losses.smooth_loss), "ours": SmoothLoss()}

    def make_smooth(impl):
        fn = sl[impl]

        def step():
            si.grad = so.grad = None
            fn(si, so).backward()
        return step

    out.append(Case(f"SmoothLoss fwd+bwd {b}x3x{h}x{w}", make_smooth, b * h * w * 12 * F32))

    # the pooled losses as the original script calls them, forward+backward at 8x3x256x256
    b, h, w = _shape((8, 256, 256), (2, 32, 48), tiny)
    low, enh = rand(b, 3, h, w, hi=0.3), rand(b, 3, h, w, grad=True)
    spa, col, exp = L_spa(), L_color(), L_exp(16, 0.6)

    def pooled_ref(enhanced, org):
        return (torch.mean(zerodce_losses.spatial_consistency(enhanced, org))
                + 5 * torch.mean(zerodce_losses.color_constancy(enhanced))
                + 10 * zerodce_losses.exposure(enhanced, 16, 0.6))

    def pooled_ours(enhanced, org):
        return torch.mean(spa(enhanced, org)) + 5 * torch.mean(col(enhanced)) + 10 * torch.mean(exp(enhanced))

    pl = {"eager": pooled_ref, "compiled": compiled(pooled_ref), "ours": pooled_ours}

    def make_pooled(impl):
        fn = pl[impl]

        def step():
            enh.grad = None
            fn(enh, low).backward()
        return step

    out.append(Case(f"L_spa+L_color+L_exp fwd+bwd {b}x3x{h}x{w}", make_pooled, b * h * w * 9 * F32))

    # one Zero-DCE training step (model + the four losses, forward + backward)
    b, h, w = _shape((8, 256, 256), (2, 32, 48), tiny)
    zlow = rand(b, 3, h, w, hi=0.4)

    def make_zerodce_step(impl):
        torch.manual_seed(0)
        fused = impl == "ours"
        model, loss = ZeroDCE(fused=fused).to(dev), ZeroDCELoss(fused=fused)
        model.check_range = False
        run_model, run_loss = (compiled(model), compiled(loss)) if impl == "compiled" else (model, loss)

        def step():
            model.zero_grad(set_to_none=True)
            _, enhanced, curves = run_model(zlow)
            run_loss(zlow, enhanced, curves).backward()
        return step

    out.append(Case(f"Zero-DCE train step {b}x3x{h}x{w}", make_zerodce_step))

    # one SCI training step (3 stages)
    b, h, w = _shape((1, 400, 600), (1, 24, 32), tiny)
    slow = rand(b, 3, h, w, lo=0.02, hi=0.4)

    def make_sci_step(impl):
        torch.manual_seed(0)
        model = SCINetwork(stage=3).to(dev)
        model.check_range = False
        if impl == "ours":
            model._criterion = LossFunction()
            run = model._loss
        else:
            def reference_loss(x):
                ilist, _, inlist, _ = model(x)
                return sum(sci_losses.sci_loss(inlist[k], ilist[k]) for k in range(model.stage))
            run = compiled(reference_loss) if impl == "compiled" else reference_loss

        def step():
            model.zero_grad(set_to_none=True)
            run(slow).backward()
        return step

    out.append(Case(f"SCI train step (3 stages) {b}x3x{h}x{w}", make_sci_step))

    # enhance at 1080p (Zero-DCE, no gradients)
    b, h, w = _shape((1, 1080, 1920), (1, 36, 64), tiny)
    img = rand(b, 3, h, w, hi=0.4)

    def make_enhance(impl):
        torch.manual_seed(0)
        model = ZeroDCE(fused=impl == "ours").to(dev).eval()
        model.check_range = False
        fn = compiled(model.enhance_image) if impl == "compiled" else model.enhance_image

        def step():
            with torch.inference_mode():
                return fn(img)
        return step

    out.append(Case(f"Zero-DCE enhance {b}x3x{h}x{w}", make_enhance))

    # frames from host memory through lowlight_fast.enhance.Enhancer, back to host memory (the video
    # path): "model" = the model alone on frames already on the device; "call" = Enhancer(x) batch after
    # batch (copies in line); "stream" / "stream fp16" = Enhancer.stream (copies overlapped). frames/s =
    # frames / median; the copies' share of "call" = 1 - model / call.
    from lowlight_fast.enhance import Enhancer
    from lowlight_fast.models.zerodcepp import ZeroDCEPlusPlus

    def frames_case(label, make_model, full_shape, tiny_shape):
        count, fb, fh, fw = tiny_shape if tiny else full_shape
        frames = [rand(fb, 3, fh, fw, hi=0.4).cpu() for _ in range(count)]

        def make_frames(impl):
            torch.manual_seed(0)
            enhancer = Enhancer(make_model(), device=dev, half=impl == "stream fp16")
            if impl == "model":
                on_device = [f.to(dev) for f in frames]

                def step():
                    with torch.inference_mode():
                        return [enhancer.model.enhance_image(f) for f in on_device]
            elif impl == "call":
                def step():
                    return [enhancer(f) for f in frames]
            else:
                def step():
                    return list(enhancer.stream(iter(frames)))
            return step

        return Case(f"{label} frames from host, {count} batches of {fb}x3x{fh}x{fw}", make_frames,
                    impls=("model", "call", "stream", "stream fp16"))

    out.append(frames_case("Zero-DCE++ (scale factor 12)", lambda: ZeroDCEPlusPlus(scale_factor=12),
                           (8, 4, 1080, 1920), (2, 2, 48, 64)))
    out.append(frames_case("Zero-DCE", ZeroDCE, (4, 1, 2160, 3840), (2, 1, 36, 64)))
    return out


class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def measure(fn, timer: Timer, warmup: int, repeats: int, time_left: Callable[[], float]) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    timer.sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        times.append(timer.once(fn))
        if time_left() <= 0 and len(times) >= 3:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times), "warmup_s": warm_s}


def table(rows: list[dict]) -> str:
    copy = [r["gbps"] for r in rows if r.get("case", "").startswith("copy") and r.get("gbps")]
    copy_gbps = max(copy) if copy else None
    lines = []
    if rows:
        lines.append(f"device: {rows[0].get('device_name', '?')}; torch {torch.__version__}")
    if copy_gbps:
        lines.append(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)")
    lines += ["", "| case | impl | median ms | vs eager | vs compiled | GB/s | % of copy | peak MiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["impl"]] = r
    for case, impls in by_case.items():
        for impl, r in impls.items():
            if "skipped" in r or "error" in r:
                lines.append(f"| {case} | {impl} | {r.get('skipped') or 'error: ' + r['error'][:80]} | | | | | |")
                continue
            med = r["median_s"]
            ratio = {k: (f"{impls[k]['median_s'] / med:.2f}x" if "median_s" in impls.get(k, {}) and k != impl else "")
                     for k in ("eager", "compiled")}
            gbps = f"{r['gbps']:.0f}" if r.get("gbps") else ""
            pct = f"{100 * r['gbps'] / copy_gbps:.0f}%" if r.get("gbps") and copy_gbps else ""
            peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else ""
            lines.append(f"| {case} | {impl} | {med * 1e3:.3f} | {ratio['eager']} | {ratio['compiled']} | {gbps} | {pct} | {peak} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds; nothing starts after it")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU rehearsal)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--only", default="", help="run only the cases whose name holds this text")
    args = ap.parse_args(argv)

    deadline = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl, md = args.out / "headline.jsonl", args.out / "headline.md"
    jsonl.write_text("")
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(args.device) if cuda else f"cpu ({os.cpu_count()} cores)"
    timer = Timer(args.device)
    warmup, repeats = (3, 50) if cuda and not args.tiny else (1, 3)
    rows: list[dict] = []
    failed = 0

    def record(row):
        row.setdefault("device_name", name)
        rows.append(row)
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        md.write_text(table(rows))
        print(json.dumps(row), flush=True)

    for case in cases(args.device, args.tiny, args.compile_backend):
        if args.only and args.only not in case.name:
            continue
        for impl in case.impls:
            row = {"case": case.name, "impl": impl, "device": args.device}
            if time.perf_counter() > deadline:
                record({**row, "skipped": "budget"})
                continue
            try:
                with use_backend("reference" if impl in ("eager", "compiled") else "auto"):
                    fn = case.make(impl)
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                        base = torch.cuda.memory_allocated()
                        torch.cuda.reset_peak_memory_stats()
                    row.update(measure(fn, timer, warmup, repeats, lambda: deadline - time.perf_counter()))
                    if cuda:
                        row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                    if case.nbytes:
                        row["bytes"] = case.nbytes
                        row["gbps"] = case.nbytes / row["median_s"] / 1e9
                    del fn
            except Exception as exc:  # noqa: BLE001 -- one failing case must not lose the others
                failed += 1
                row["error"] = f"{type(exc).__name__}: {exc}"
            record(row)
    print(md.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
