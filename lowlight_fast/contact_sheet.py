"""A before/after grid of images (``lowlight-fast demo`` writes one)."""
from __future__ import annotations

import os
from typing import Sequence

from PIL import Image, ImageDraw, ImageOps


def contact_sheet(rows: Sequence[Sequence[str | os.PathLike]], labels: Sequence[str], path: str | os.PathLike,
                  height: int = 180) -> None:
    """Write a grid image to ``path``: one row per entry of ``rows`` (image files, upright per their
    EXIF orientation, scaled to ``height`` pixels), one column per label (for example the input, then
    each model's result), each column headed by its label."""
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
