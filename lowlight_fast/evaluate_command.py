"""``lowlight-fast evaluate``: its options and the command (parse, call :mod:`lowlight_fast.evaluate`,
print the table, one-line errors)."""
from __future__ import annotations

import argparse
import os
import sys


def _eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowlight_fast.cli import int_at_least
    from lowlight_fast.evaluate import GREY_WEIGHTS
    from lowlight_fast.models import registry

    p.add_argument("pred", metavar="PRED", help=(
        "enhanced image, or folder of them (searched recursively; a summary per sub-folder); with --model: "
        "the low-light INPUT image or folder, enhanced first"))
    p.add_argument("gt", metavar="GT", nargs="?", help=(
        "reference image or folder, paired with PRED by file stem (a.png with a.jpg); without it only "
        "the no-reference figures are computed"))
    p.add_argument("--csv", metavar="FILE", help="also write the per-image figures to FILE (CSV, header row)")
    p.add_argument("--y", action="store_true", help=(
        "also PSNR and SSIM on the luma, MATLAB style: Y of rgb2ycbcr (BT.601, 16-235, not rounded), "
        "as BasicSR's test_y_channel"))
    p.add_argument("--gt-mean", action="store_true", help=(
        "also the GT-mean PSNR and SSIM (KinD, LLFlow, Retinexformer --GT_mean): the prediction scaled to "
        "the reference's mean grey level, clipped, first"))
    p.add_argument("--gt-mean-grey", choices=tuple(GREY_WEIGHTS), default="bt601", help=(
        "grey weights of --gt-mean: bt601 (0.299 R + 0.587 G + 0.114 B, default) or swapped "
        "(0.114 R + 0.587 G + 0.299 B: Retinexformer's script, which applies BGR2GRAY to RGB arrays)"))
    p.add_argument("--model", choices=registry.NAMES, default=None, help=(
        "enhance PRED with this model first (rounded to 8 bits as enhance writes them, nothing written)"))
    p.add_argument("--weights", metavar="PATH", help="with --model: weights file (default: the bundled weights)")
    p.add_argument("--scale-factor", type=int_at_least(1), default=None, metavar="S",
                   help="with --model zerodcepp: its scale factor (default 12, as enhance)")
    p.add_argument("--max-pixels", type=int_at_least(0), default=None, metavar="N",
                   help="skip (and report) images of more than N pixels (default as enhance; 0: no limit)")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="CPU threads (default: torch's default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table (with --csv)")
    p.set_defaults(func=run)


def _csv_error(path: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"--csv {path}: is a folder"
    if not os.path.isdir(folder):
        return f"--csv {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--csv {path}: the folder {folder} is not writable"
    return None


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from lowlight_fast import metrics
    from lowlight_fast.device import pick_device
    from lowlight_fast.evaluate import EvaluateOptions, collect_pairs, columns, evaluate_pairs, format_table, write_csv

    if args.model is None and (args.weights or args.scale_factor):
        _eprint("error: --weights and --scale-factor need --model (to enhance PRED first)")
        return 2
    if args.gt is None and (args.y or args.gt_mean):
        _eprint("error: --y and --gt-mean compare with a reference: give GT")
        return 2
    if args.csv and _csv_error(args.csv):
        _eprint(f"error: {_csv_error(args.csv)}")
        return 2
    try:
        pairing = collect_pairs(args.pred, args.gt)
        device = pick_device(args.device)
    except ValueError as exc:
        _eprint(f"error: {exc}")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load_pred = None
    if args.model is not None:
        from lowlight_fast.enhance import Enhancer
        from lowlight_fast.io import MAX_PIXELS, read_image

        try:
            enhancer = Enhancer(args.model, args.weights, device, scale_factor=args.scale_factor)
        except (ValueError, FileNotFoundError) as exc:
            _eprint(f"error: {exc}")
            return 2
        limit = MAX_PIXELS if args.max_pixels is None else args.max_pixels

        def enhanced(path: str) -> torch.Tensor:
            return metrics.to_levels(enhancer(read_image(path, max_pixels=limit).to_tensor()))

        load_pred = enhanced

    options = EvaluateOptions(y=args.y, gt_mean=args.gt_mean, gt_mean_grey=args.gt_mean_grey)
    for e in pairing.errors:
        _eprint(f"error: {e}")
    with tqdm(total=len(pairing.pairs), unit="img", desc="evaluate", disable=args.quiet, file=sys.stderr,
              dynamic_ncols=True) as bar:
        rows, errors = evaluate_pairs(pairing.pairs, device, options, load_pred, max_pixels=args.max_pixels,
                                      on_progress=lambda _: bar.update(1),
                                      on_error=lambda m: bar.write(f"error: {m}", file=sys.stderr))
    cols = columns(options, reference=args.gt is not None)
    shown = cols if args.gt is not None else [c for c in cols if c not in ("psnr", "ssim")]
    if rows and not (args.quiet and args.csv):
        print(format_table(rows, shown), flush=True)
    if args.csv:
        try:
            write_csv(args.csv, rows, cols)
        except OSError as exc:
            _eprint(f"error: cannot write {args.csv}: {exc.strerror or exc}")
            return 1
    failed = len(pairing.errors) + len(errors)
    if failed and not args.quiet:
        _eprint(f"evaluated {len(rows)} image(s); {failed} problem(s) (see the errors above)")
    return 1 if failed else 0
