"""Reading and writing images for the command line.

- Any mode Pillow opens is accepted: grey, grey+alpha, RGB, RGBA, palette (with or without
  transparency), CMYK, 16-bit grey, 16-bit grey+alpha and RGB/RGBA PNG (Pillow decodes those to 8 bits;
  we decode the low bytes too, so all 16 bits are kept).
- Multi-frame files (animated GIF/PNG/WebP, multi-page TIFF): the first frame is read, and
  :attr:`LoadedImage.frames` says how many there are, so that a caller can warn.
- PNG output (8 and 16 bits) is encoded by :mod:`lowlight_fast.png` (one filter for every row, deflate on
  several cores); the other formats by Pillow.
- Images above ``max_pixels`` (default :data:`MAX_PIXELS`) are refused before they are decoded (a
  header can claim any size: a decompression bomb), and an image that does not fit in memory is
  reported like a corrupt one, naming the file.
- The EXIF orientation is applied, so the result is upright; the output carries no EXIF.
- Colour goes to the model as RGB float32 in [0, 1]; alpha is kept aside and written back unchanged
  (where the output format has alpha).
- Output samples are rounded to nearest (not truncated), halves up like torchvision's ``save_image``. A 16-bit input written as PNG stays 16-bit.
"""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lowlight_fast import png

# Pillow's own bomb check warns at 89 MP and fails at twice that; large photographs are the point here,
# so read_image applies its own limit (MAX_PIXELS, which a caller can raise) before decoding.
Image.MAX_IMAGE_PIXELS = None
MAX_PIXELS = 1 << 28  # 268 MP: a 16384 x 16384 image

EXIF_ORIENTATION = 0x0112
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "GIF"}  # output formats that store an alpha channel


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path!r} as an image: {reason}")


@dataclass
class LoadedImage:
    """A decoded, upright image.

    ``rgb``: float32 array H x W x 3 in [0, 1] (for most images a view of channel-planar memory). ``alpha``: the original alpha samples (uint8 or uint16,
    H x W) or None. ``bits``: 8 or 16, the precision of the source samples.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bits: int
    frames: int = 1  # frames in the file (only the first is read)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.rgb.shape[0], self.rgb.shape[1]

    def to_tensor(self) -> torch.Tensor:
        """1 x 3 x H x W float32 tensor in [0, 1]."""
        return torch.from_numpy(np.ascontiguousarray(self.rgb.transpose(2, 0, 1))).unsqueeze(0)


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an H x W [x C] array, as PIL.ImageOps.exif_transpose does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, k=-1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, k=1)
    return a


def _png16_low_bytes(path: str, im: Image.Image) -> np.ndarray | None:
    """For a 16-bit RGB/RGBA PNG (which Pillow reduces to its high bytes), decode the low bytes.

    Pillow's PNG decoder unfilters the rows correctly for 48/64-bit pixels and then keeps one byte per
    sample; with the rawmode ``;16L`` instead of ``;16B`` it keeps the other byte. Returns None when the
    file is not of that kind.
    """
    tiles = getattr(im, "tile", None) or []
    if im.format != "PNG" or not tiles:
        return None
    rawmodes = [t.args for t in tiles]
    if not all(isinstance(r, str) and r in ("RGB;16B", "RGBA;16B") for r in rawmodes):
        return None
    with Image.open(path) as low:
        low.tile = [t._replace(args=t.args.replace(";16B", ";16L")) for t in low.tile]
        return np.asarray(low).astype(np.uint16)


def _png16_grey_alpha(path: str, im: Image.Image) -> np.ndarray | None:
    """A 16-bit grey+alpha PNG (which Pillow reduces to 8 bits) as an H x W x 2 uint16 array, else None.

    Pillow has no unpacker for the low bytes of these, but a 16-bit grey+alpha pixel is 4 bytes, as an
    8-bit RGBA pixel is: the same file with the header saying 8-bit RGBA unfilters to the same bytes
    (the PNG filters work on bytes, with the pixel size as their step), which then pair up.
    """
    tiles = getattr(im, "tile", None) or []
    if im.format != "PNG" or not tiles or not all(t.args == "LA;16B" for t in tiles):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if data[12:16] != b"IHDR":
        return None
    ihdr = data[16:24] + bytes([8, 6]) + data[26:29]
    patched = data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + data[33:]
    import io as _bytes

    with Image.open(_bytes.BytesIO(patched)) as rgba:
        a = np.asarray(rgba).astype(np.uint16)
    return np.stack([a[..., 0] * 256 + a[..., 1], a[..., 2] * 256 + a[..., 3]], axis=-1)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    """Decode ``path`` (its first frame) into an upright :class:`LoadedImage`. Raises
    :class:`ImageReadError`, also for an image above ``max_pixels`` (None or 0: no limit) and for one
    that does not fit in memory."""
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise ImageReadError(path, f"{w}x{h} is {w * h:,} pixels, above the limit of {max_pixels:,} "
                                           "(a decompression bomb?); raise the limit to read it (--max-pixels)")
            frames = int(getattr(im, "n_frames", 1) or 1)
            low = _png16_low_bytes(path, im)  # before anything loads the image (getexif may)
            grey_alpha = _png16_grey_alpha(path, im)
            orientation = 1
            try:
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
            except Exception:  # a broken EXIF block must not lose the picture
                orientation = 1
            im.load()
            if grey_alpha is not None:
                g = grey_alpha[..., 0].astype(np.float32) / 65535.0
                rgb, alpha, bits = np.repeat(g[..., None], 3, axis=2), grey_alpha[..., 1], 16
            else:
                rgb, alpha, bits = _to_arrays(im, low)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image format Pillow recognises") from None
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(path, f"corrupt or truncated file ({exc})") from None
    if orientation != 1:
        rgb = np.ascontiguousarray(_orient(rgb, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(_orient(alpha, orientation))
    return LoadedImage(rgb=rgb, alpha=alpha, bits=bits, frames=frames)


def _to_arrays(im: Image.Image, low: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    mode = im.mode
    if low is not None:  # 16-bit RGB / RGBA PNG
        a = np.asarray(im).astype(np.uint16) * 256 + low
        alpha = a[..., 3] if a.shape[-1] == 4 else None
        return _unit_float(a[..., :3]), alpha, 16
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey (PNG, TIFF) or 32-bit integer grey
        g = np.asarray(im).astype(np.float64)
        g = np.clip(g, 0, 65535).astype(np.float32) / 65535.0
        return np.repeat(g[..., None], 3, axis=2), None, 16
    if mode == "F":  # float grey: taken as [0, 1] samples
        g = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(g[..., None], 3, axis=2), None, 16
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        a = np.asarray(im.convert("RGBA"))
        return _unit_float(a[..., :3]), a[..., 3].copy(), 8
    return _unit_float(np.asarray(im if mode == "RGB" else im.convert("RGB"))), None, 8


def _unit_float(a: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 / uint16 samples -> H x W x 3 float32 ``a / peak``, as a view of channel-planar
    memory (LoadedImage.to_tensor then copies nothing): one pass of lowlight_fast.ops.quantize's kernel."""
    from lowlight_fast.ops.quantize import dequantize_hwc

    if not a.flags.writeable:  # Pillow's arrays are read-only; torch.from_numpy wants a writable one
        a = a.copy()
    return dequantize_hwc(torch.from_numpy(a)[None])[0].numpy().transpose(1, 2, 0)


def quantize(x: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    """Float samples in [0, 1] -> uint8/uint16, clamped and rounded to nearest, halves up: in float32,
    ``floor(x * peak + 0.5)``, the arithmetic of torchvision's ``save_image`` that the original scripts use,
    so 8-bit results match theirs pixel for pixel."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if x.ndim == 3 and x.shape[2] <= 4 and x.dtype in (np.float32, np.float64) and min(x.strides) >= 0:
        # an H x W x C image (planar or interleaved in memory): one pass of the compiled kernel
        from lowlight_fast.ops.quantize import quantize_hwc

        return quantize_hwc(torch.from_numpy(x).permute(2, 0, 1)[None], bits)[0].numpy()
    peak = 65535.0 if bits == 16 else 255.0
    q = np.floor(np.clip(x.astype(np.float32), 0.0, 1.0) * np.float32(peak) + np.float32(0.5))
    return q.astype(np.uint16 if bits == 16 else np.uint8)


def tensor_to_hwc(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor -> H x W x 3 float32 array."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    return x.detach().float().cpu().numpy().transpose(1, 2, 0)


def _format_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"cannot write {path!r}: unknown image extension {ext!r}")
    return fmt


def _write_png(path: str, a: np.ndarray, level: int) -> None:
    """Write an H x W x C (C = 3 or 4) uint8/uint16 array as an 8/16-bit PNG (lowlight_fast.png: one
    filter for every row, deflated on several cores), atomically."""
    tmp = temporary_path(path)
    try:
        png.save(tmp, a, level)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def temporary_path(path: str) -> str:
    """Where ``path`` is written before it is renamed into place: a hidden name in the same folder
    (hidden files are never taken for inputs), one per process."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp{os.getpid()}")


_alpha_warned: set[str] = set()


def write_image(
    path: str | os.PathLike,
    rgb: torch.Tensor | np.ndarray,
    *,
    bits: int = 8,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    png_compression: int = 1,
) -> None:
    """Write ``rgb`` (H x W x 3 float array, or a (1,)3,H,W tensor, in [0, 1]) to ``path``.

    The format follows the extension. 16-bit output where the format is PNG and ``bits == 16``;
    8 bits otherwise. ``alpha`` (uint8/uint16, H x W) is written back where the format stores alpha,
    converted to the output's bit depth; elsewhere it is dropped with a warning (once per format).
    ``png_compression`` is the PNG compression level 0-9 (:mod:`lowlight_fast.png`): 1 (the default) our
    fast coder, Huffman codes and runs only, about the size of zlib's level 6 on photographs; 2-9 zlib's
    levels, as Pillow's ``compress_level``; 0 stored (benchmarks/RESULTS.md has time and size per level).
    """
    path = os.fspath(path)
    if isinstance(rgb, torch.Tensor):
        rgb = tensor_to_hwc(rgb)
    fmt = _format_for(path)
    out_bits = 16 if (bits == 16 and fmt == "PNG") else 8
    if alpha is not None and fmt not in ALPHA_FORMATS:
        if fmt not in _alpha_warned:
            _alpha_warned.add(fmt)
            warnings.warn(f"{fmt} has no alpha channel: the transparency of the input is dropped", stacklevel=2)
        alpha = None
    if alpha is not None:
        if alpha.dtype == np.uint16 and out_bits == 8:
            alpha = np.rint(alpha.astype(np.float32) / 257.0).astype(np.uint8)
        elif alpha.dtype == np.uint8 and out_bits == 16:
            alpha = alpha.astype(np.uint16) * 257
    q = quantize(rgb, out_bits)
    arr = q if alpha is None else np.concatenate([q, alpha[..., None]], axis=2)
    if fmt == "PNG":
        _write_png(path, arr, png_compression)
        return
    im = Image.fromarray(arr, "RGB" if alpha is None else "RGBA")
    kwargs = {}
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if fmt == "JPEG":
        kwargs["subsampling"] = 0 if quality >= 90 else 2
    tmp = temporary_path(path)
    try:
        im.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def image_extensions() -> set[str]:
    """Lower-case file extensions (with dot) that Pillow can open."""
    exts = Image.registered_extensions()
    return {e for e, fmt in exts.items() if fmt in Image.OPEN}
