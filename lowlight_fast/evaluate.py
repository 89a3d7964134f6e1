"""Evaluating enhanced images, the library behind ``lowlight-fast evaluate``.

- :func:`collect_pairs`: predictions (a file or a folder, searched recursively) paired with their
  references (a file or a folder) by file stem; what cannot be paired is returned as messages.
- :func:`evaluate_pairs`: read (or enhance) each prediction, read its reference, and measure it with
  :mod:`lowlight_fast.metrics` on the chosen device: one :class:`Row` per pair.
- :func:`summarise`, :func:`format_table`, :func:`write_csv`: the mean of every column (over all rows
  and per folder), a printable table, and a CSV file.

Images are read by :func:`lowlight_fast.io.read_image`, as ``enhance`` reads them (grey, palette and
CMYK become RGB, alpha is set aside and not measured, EXIF orientation applied, 16-bit samples kept),
and measured as 8-bit levels (:func:`lowlight_fast.metrics.to_levels`). Nothing here prints.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from lowlight_fast import io, metrics

__all__ = ["GREY_WEIGHTS", "EvaluateOptions", "Pair", "Pairing", "Row", "collect_pairs", "columns",
           "evaluate_pairs", "format_table", "image_files", "measure", "read_levels", "summarise",
           "write_csv"]

GREY_WEIGHTS = {"bt601": metrics.GREY_BT601, "swapped": metrics.GREY_SWAPPED}
NO_REFERENCE = ("mean", "spread", "cast", "noise", "clipped")


@dataclass(frozen=True)
class EvaluateOptions:
    """Which variants to compute: ``y`` adds PSNR and SSIM on MATLAB's BT.601 Y (``psnr_y``, ``ssim_y``);
    ``gt_mean`` adds the GT-mean PSNR and SSIM (``psnr_gtmean``, ``ssim_gtmean``) with the grey weights
    ``gt_mean_grey`` ("bt601" or "swapped", :data:`GREY_WEIGHTS`)."""

    y: bool = False
    gt_mean: bool = False
    gt_mean_grey: str = "bt601"


def columns(options: EvaluateOptions, reference: bool = True) -> list[str]:
    """The value columns of a row, in order (the CSV always has ``psnr`` and ``ssim``, empty without a
    reference)."""
    cols = ["psnr", "ssim"]
    if reference and options.y:
        cols += ["psnr_y", "ssim_y"]
    if reference and options.gt_mean:
        cols += ["psnr_gtmean", "ssim_gtmean"]
    return cols + list(NO_REFERENCE)


@dataclass(frozen=True)
class Pair:
    """A prediction (``pred``), its reference (``gt``, None without one), and its ``name`` (the path
    relative to the prediction folder) and ``folder`` (that name's folder, "." at the top)."""

    name: str
    folder: str
    pred: str
    gt: str | None = None


@dataclass
class Pairing:
    pairs: list[Pair] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Row:
    name: str
    folder: str
    width: int
    height: int
    values: dict[str, float]


def image_files(folder: str) -> list[str]:
    """The image files under ``folder`` (by extension, those Pillow opens), recursively, sorted;
    hidden files and folders are left out."""
    exts = io.image_extensions()
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts:
                found.append(os.path.join(root, f))
    return found


def _listing(spec: str, what: str) -> list[tuple[str, str]]:
    """(name relative to ``spec``, path) of the images ``spec`` names: a file, or a folder's images."""
    if os.path.isdir(spec):
        files = image_files(spec)
        if not files:
            raise ValueError(f"{what} {spec}: the folder holds no image files")
        return [(os.path.relpath(f, spec), f) for f in files]
    if os.path.isfile(spec):
        return [(os.path.basename(spec), spec)]
    raise ValueError(f"{what} {spec}: no such file or folder")


def collect_pairs(pred: str, gt: str | None = None) -> Pairing:
    """Pair the images of ``pred`` with those of ``gt`` by file stem (``a.png`` with ``a.jpg``).

    Two files are paired as they are. Every prediction without exactly one reference of its stem, and
    every reference that a folder of predictions lacks, is an error message (naming the files); the
    other pairs are returned. A ``pred`` or ``gt`` that names nothing raises ValueError."""
    preds = _listing(pred, "PRED")
    out = Pairing()
    if gt is None:
        out.pairs = [Pair(n, os.path.dirname(n) or ".", p) for n, p in preds]
        return out
    refs = _listing(gt, "GT")
    if os.path.isfile(pred) and os.path.isfile(gt):
        out.pairs = [Pair(preds[0][0], ".", preds[0][1], refs[0][1])]
        return out
    by_stem: dict[str, list[str]] = {}
    for _, path in refs:
        by_stem.setdefault(Path(path).stem, []).append(path)
    seen: dict[str, set[str]] = {}
    for name, path in preds:
        stem, folder = Path(path).stem, os.path.dirname(name) or "."
        seen.setdefault(folder, set()).add(stem)
        found = by_stem.get(stem, [])
        if not found:
            out.errors.append(f"{path}: no reference image named {stem}.* in {gt}; not evaluated")
        elif len(found) > 1:
            out.errors.append(f"{path}: several references named {stem}.* ({', '.join(found)}); not evaluated")
        else:
            out.pairs.append(Pair(name, folder, path, found[0]))
    for folder, stems in seen.items():
        where = pred if folder == "." else os.path.join(pred, folder)
        for stem, found in sorted(by_stem.items()):
            if stem not in stems:
                out.errors.append(f"{found[0]}: no prediction named {stem}.* in {where}; "
                                  "the mean leaves it out")
    return out


def read_levels(path: str, device: torch.device | str = "cpu", max_pixels: int | None = None) -> torch.Tensor:
    """Read an image as ``enhance`` does; (1, 3, H, W) 8-bit levels (float64) on ``device``."""
    img = io.read_image(path, max_pixels=io.MAX_PIXELS if max_pixels is None else max_pixels)
    return metrics.to_levels(img.to_tensor()).to(device)


def measure(pred: torch.Tensor, gt: torch.Tensor | None, options: EvaluateOptions = EvaluateOptions()
            ) -> list[dict[str, float]]:
    """The metrics of a batch of predictions (and references), as levels (B, 3, H, W): one dict per
    image, keyed by :func:`columns` (the full-reference ones only with ``gt``)."""
    vals: dict[str, torch.Tensor] = {}
    if gt is not None:
        vals["psnr"] = metrics.psnr(pred, gt)
        vals["ssim"] = metrics.ssim(pred, gt)
        if options.y:
            py, gy = metrics.rgb_to_y(pred), metrics.rgb_to_y(gt)
            vals["psnr_y"] = metrics.psnr(py, gy)
            vals["ssim_y"] = metrics.ssim(py, gy)
        if options.gt_mean:
            scaled = metrics.gt_mean_scale(pred, gt, GREY_WEIGHTS[options.gt_mean_grey])
            vals["psnr_gtmean"] = metrics.psnr(scaled, gt)
            vals["ssim_gtmean"] = metrics.ssim(metrics.round_levels(scaled), gt)
    vals["mean"] = metrics.brightness(pred)
    vals["spread"] = metrics.exposure_spread(pred)
    vals["cast"] = metrics.colour_cast(pred)
    vals["noise"] = metrics.noise_sigma(pred)
    vals["clipped"] = metrics.clipped_fraction(pred)
    host = {k: v.cpu().tolist() for k, v in vals.items()}
    return [{k: host[k][i] for k in host} for i in range(pred.shape[0])]


def evaluate_pairs(pairs: Sequence[Pair], device: torch.device | str = "cpu",
                   options: EvaluateOptions = EvaluateOptions(),
                   load_pred: Callable[[str], torch.Tensor] | None = None, *, max_pixels: int | None = None,
                   on_progress: Callable[[str], None] | None = None,
                   on_error: Callable[[str], None] | None = None) -> tuple[list[Row], list[str]]:
    """Measure every pair; returns (rows, error messages). ``load_pred(path)`` gives a prediction as
    (1, 3, H, W) levels (default: :func:`read_levels`; ``lowlight-fast evaluate --model`` enhances the
    file instead). A pair that cannot be read, whose sizes differ, or that is too small for a metric
    (SSIM needs 11 x 11) is an error naming the files; the others go on."""
    device = torch.device(device)
    load_pred = load_pred or (lambda p: read_levels(p, device, max_pixels))
    rows: list[Row] = []
    errors: list[str] = []

    def fail(message: str) -> None:
        errors.append(message)
        if on_error is not None:
            on_error(message)

    for pair in pairs:
        try:
            pred = load_pred(pair.pred).to(device)
            gt = read_levels(pair.gt, device, max_pixels) if pair.gt is not None else None
            h, w = pred.shape[-2:]
            if gt is not None and gt.shape != pred.shape:
                gh, gw = gt.shape[-2:]
                raise ValueError(f"{pair.pred} is {w}x{h} but its reference {pair.gt} is {gw}x{gh}; "
                                 "not evaluated")
            if gt is not None and min(h, w) < 11:
                raise ValueError(f"{pair.pred}: {w}x{h} is smaller than the 11x11 window of SSIM; not evaluated")
            if min(h, w) < 3:
                raise ValueError(f"{pair.pred}: {w}x{h} is smaller than the 3x3 of the noise estimate; "
                                 "not evaluated")
            rows.append(Row(pair.name, pair.folder, int(w), int(h), measure(pred, gt, options)[0]))
        except (io.ImageReadError, ValueError) as exc:
            fail(str(exc))
        except MemoryError:
            fail(f"{pair.pred}: not enough memory to evaluate it")
        except RuntimeError as exc:  # e.g. out of memory on the device, or in the model
            fail(f"{pair.pred}: {exc}")
        if on_progress is not None:
            on_progress(pair.pred)
    return rows, errors


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def summarise(rows: Sequence[Row], cols: Sequence[str]) -> list[tuple[str, int, dict[str, float]]]:
    """(label, count, column means): "mean" over all rows, then "mean <folder>" for each folder when
    the rows come from more than one. A PSNR of inf (identical images) makes its mean inf."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.folder, []).append(r)

    def means(rs: Sequence[Row]) -> dict[str, float]:
        return {c: _mean([r.values[c] for r in rs if c in r.values]) for c in cols}

    out = [("mean", len(rows), means(rows))]
    if len(groups) > 1:
        out += [(f"mean {folder}", len(rs), means(rs)) for folder, rs in groups.items()]
    return out


_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "mean": "{:.1f}", "spread": "{:.1f}", "cast": "{:.3f}",
            "noise": "{:.2f}", "clipped": "{:.4f}"}


def _fmt(col: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if math.isinf(v):
        return "inf"
    return _FORMATS.get(col.split("_")[0], "{:.4f}").format(v)


def format_table(rows: Sequence[Row], cols: Sequence[str]) -> str:
    """The per-image table and the summary rows, as aligned text (columns ``name`` then ``cols``)."""
    body = [[r.name] + [_fmt(c, r.values.get(c)) for c in cols] for r in rows]
    summary = [[f"{label} ({n})"] + [_fmt(c, m[c]) for c in cols] for label, n, m in summarise(rows, cols)]
    header = ["name"] + list(cols)
    widths = [max(len(x[i]) for x in [header] + body + summary) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(b) for b in body] + [rule] + [line(s) for s in summary])


def write_csv(path: str | os.PathLike, rows: Sequence[Row], cols: Sequence[str]) -> None:
    """One row per image: ``name, folder, width, height`` and ``cols`` (full precision; empty where a
    value was not computed); written to a temporary file and renamed into place."""
    path = os.fspath(path)
    tmp = io.temporary_path(path)
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "folder", "width", "height", *cols])
            for r in rows:
                w.writerow([r.name, r.folder, r.width, r.height]
                           + ["" if r.values.get(c) is None else repr(float(r.values[c])) for c in cols])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
