"""A PNG encoder for 8- and 16-bit grey, grey+alpha, RGB and RGBA arrays, deflating on several cores.

Pillow's PNG writer picks a filter for every row by trying four of them, then deflates on one core. Here:

- The rows are filtered by numpy over whole blocks of rows. Levels 1-3 (the fast ones; 1 is the command
  line's default): Sub on every row (each byte minus the byte one pixel to its left), which costs next
  to nothing; on the enhanced photographs this package writes it gives files the size of Pillow's, whose
  per-row choice costs it about as much time as the deflating. Levels 4-9 (for size): each row the
  filter Pillow would choose (the least sum of absolute values, of None, Up, Sub and Paeth), so the
  files are Pillow's size on smooth pictures too, where Paeth does better than Sub. Level 0 (stored):
  no filter, which would only cost time. (benchmarks/RESULTS.md has the measurements.)
- Deflate in parallel, as pigz does: the filtered stream is cut into chunks of :data:`CHUNK` bytes, a
  size fixed here (never derived from the number of threads, so the bytes written do not depend on it
  or on the machine); each chunk is deflated on its own (at levels 2-9 primed with the last 32 KiB of
  the stream before it, so matches reach across chunk boundaries and the ratio stays that of one serial
  deflate) and ended on a byte boundary (a sync flush; the last one finishes the stream). zlib releases
  the GIL while it deflates, as our level-1 coder does, so a thread pool runs the chunks side by side.
  Each chunk becomes one IDAT chunk; the zlib header goes before the first, the Adler-32 of the whole
  stream (combined from the chunks') after the last.
- Level 1 (the default) is not zlib's level 1 but a coder of our own,
  :func:`lowlight_fast.ops.deflate.deflate_fast` (csrc/cpu/deflate.cpp): per 128 KiB block, Huffman
  codes of the block's own byte statistics and runs of one repeated byte (distance-1 matches of 8 bytes
  or more), no other matching. Rows filtered by Sub are nearly memoryless, so the entropy coding is
  almost all a deflate gains on photographs: these files are smaller than zlib level 1's (whose short
  greedy matches cost more bits than the literals they replace) and about the size of level 6's,
  written several times faster than either. Without the compiled extension, level 1 is zlib's level 1
  with its ``Z_RLE`` strategy (the same kind of stream; other bytes, about the same size). Where repeats
  are longer than runs of one byte (screenshots, graphics), levels 2-9 find them.
- Levels 2-9: zlib, with Pillow's settings: memLevel 9 and the
  ``Z_FILTERED`` strategy (which only levels 4-9 use), so a level means what it means for Pillow's
  ``compress_level``.

Only IHDR, IDAT and IEND are written (no gamma, colour profile, resolution or text), as Pillow writes
for an array made with ``Image.fromarray``. Non-interlaced; 16-bit samples are big-endian, as PNG has them.
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

__all__ = ["CHUNK", "THREADS", "encode", "save"]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK = 1 << 20  # bytes of filtered stream per deflate piece (fixed: the bytes never depend on threads)
WINDOW = 1 << 15  # deflate's window: how much of the stream before a chunk primes its compressor
FILTER_ROWS_BYTES = 1 << 19  # rows filtered in one numpy call: about this many bytes (cache-sized)
THREADS = min(8, _usable_cores())  # default deflate threads: the cores this process may use, at most 8
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey+alpha, RGB, RGBA
NONE, SUB, UP, PAETH = 0, 1, 2, 4  # PNG filter types
ADAPTIVE = -1  # each row its own (Pillow's rule)
ADAPTIVE_FROM_LEVEL = 4  # levels below: Sub on every row (speed); from here on: ADAPTIVE (size)
_ADLER_BASE = 65521


def _check(a: np.ndarray, level: int, threads: int | None) -> tuple[np.ndarray, int]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(a).__name__}")
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 samples, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"expected an H x W array or H x W x C with C in 1..4, got shape {a.shape}")
    h, w, _ = a.shape
    if not (1 <= h < 1 << 31 and 1 <= w < 1 << 31):
        raise ValueError(f"PNG sides are 1 to 2^31-1 pixels, got {w} x {h}")
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 9:
        raise ValueError(f"level: expected an integer 0-9, got {level!r}")
    if threads is None:
        threads = THREADS
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
    return a, int(threads)


def _rows(a: np.ndarray) -> np.ndarray:
    """H x W x C samples -> H x (W*C*bytes) uint8, the bytes of each row as PNG stores them."""
    h = a.shape[0]
    if a.dtype == np.uint16:
        a = a.astype(">u2")  # a copy, big-endian (a no-op copy on big-endian machines)
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(h, -1)


def _filter(raw: np.ndarray, out: np.ndarray, r0: int, r1: int, kind: int, bpp: int) -> None:
    """Filter rows r0:r1 of ``raw`` into ``out`` (H x (1 + row bytes)): filter byte, then the bytes.
    ``kind``: NONE, SUB, or ADAPTIVE (each row its own filter, by Pillow's rule)."""
    if kind == ADAPTIVE:
        _filter_adaptive(raw, out, r0, r1, bpp)
        return
    out[r0:r1, 0] = kind
    src, dst = raw[r0:r1], out[r0:r1, 1:]
    if kind == NONE:
        dst[...] = src
    else:  # Sub: bytes wrap modulo 256, as uint8 arithmetic does
        dst[:, :bpp] = src[:, :bpp]
        np.subtract(src[:, bpp:], src[:, :-bpp], out=dst[:, bpp:])


def _filter_adaptive(raw: np.ndarray, out: np.ndarray, r0: int, r1: int, bpp: int) -> None:
    """Each row of r0:r1 with the filter whose bytes, read as signed, have the least sum of absolute
    values, of None, Up, Sub and Paeth tried in that order (the first of equal sums): the rule of
    Pillow's PNG encoder (after libpng), so its files and ours hold the same filtered bytes. The row
    above the first is taken as zeros, as PNG decoders do."""
    cur = raw[r0:r1]
    if r0:
        up8 = raw[r0 - 1:r1 - 1]
    else:
        up8 = np.concatenate([np.zeros((1, raw.shape[1]), np.uint8), cur[:-1]])
    sub = cur.copy()
    np.subtract(cur[:, bpp:], cur[:, :-bpp], out=sub[:, bpp:])
    up = cur - up8
    # Paeth: predict each byte by the left (a), upper (b) or upper-left (c) byte nearest to a + b - c
    b = up8.astype(np.int16)
    a = np.zeros_like(b)
    a[:, bpp:] = cur[:, :-bpp]
    c = np.zeros_like(b)
    c[:, bpp:] = b[:, :-bpp]
    pa = b - c  # p - a
    pb = a - c  # p - b
    pc = np.abs(pa + pb)  # p - c
    np.abs(pa, out=pa)
    np.abs(pb, out=pb)
    pred = np.where(pb <= pc, b, c)
    np.copyto(pred, a, where=(pa <= pb) & (pa <= pc))
    paeth = cur - pred.astype(np.uint8)
    candidates = (cur, up, sub, paeth)
    costs = np.stack([np.minimum(x, np.negative(x)).sum(axis=1, dtype=np.int64) for x in candidates])
    choice = costs.argmin(axis=0)
    kinds = np.array([NONE, UP, SUB, PAETH], np.uint8)
    out[r0:r1, 0] = kinds[choice]
    for i, x in enumerate(candidates):
        rows = np.flatnonzero(choice == i)
        if rows.size:
            out[r0 + rows, 1:] = x[rows]


def _zlib_header(level: int) -> bytes:
    cmf = 0x78  # deflate, 32 KiB window
    flg = (0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3) << 6  # FLEVEL, as zlib sets it
    flg |= 31 - (cmf * 256 + flg) % 31
    return bytes([cmf, flg])


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A + B from those of A and B and the length of B (zlib's adler32_combine)."""
    a1, b1 = adler1 & 0xFFFF, adler1 >> 16
    a2, b2 = adler2 & 0xFFFF, adler2 >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + (len2 % _ADLER_BASE) * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


FAST_LEVEL = 1  # the level deflated by lowlight_fast.ops.deflate (module docstring)


def _deflate_chunk(stream: memoryview, start: int, end: int, level: int, first: bool, last: bool, coder=None):
    """Deflate stream[start:end] -> (IDAT body, CRC-32 of b"IDAT" + body, Adler-32 of the input piece).
    ``coder``: level 1's (lowlight_fast.ops.deflate.coder(), chosen in the caller's thread)."""
    piece = stream[start:end]
    if level == FAST_LEVEL:  # runs and Huffman codes: nothing reaches back, no priming
        body = coder(piece, last)
    else:
        if start:
            zdict = stream[max(0, start - WINDOW):start]
            z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED, zdict)
        else:
            z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)
        body = z.compress(piece) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    if first:
        body = _zlib_header(level) + body
    return body, zlib.crc32(body, zlib.crc32(b"IDAT")), zlib.adler32(piece)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _pieces(a: np.ndarray, level: int = 1, threads: int | None = None) -> list[bytes]:
    """The PNG file as a list of byte strings, in order."""
    a, threads = _check(a, level, threads)
    h, w, c = a.shape
    depth = 8 * a.dtype.itemsize
    bpp = c * a.dtype.itemsize
    raw = _rows(a)
    row_bytes = raw.shape[1]
    kind = NONE if level == 0 else SUB if level < ADAPTIVE_FROM_LEVEL else ADAPTIVE
    filtered = np.empty((h, row_bytes + 1), np.uint8)
    block = max(1, FILTER_ROWS_BYTES // (row_bytes + 1))
    spans = [(r, min(h, r + block)) for r in range(0, h, block)]
    n = filtered.size
    starts = list(range(0, n, CHUNK))
    stream = memoryview(filtered.reshape(-1))

    coder = None
    if level == FAST_LEVEL:
        from lowlight_fast.ops import deflate as fast  # the package's torch side, imported when first needed

        coder = fast.coder()  # here: the backend setting is per thread, the pool's threads do not have it

    def deflate(i: int):
        end = min(n, starts[i] + CHUNK)
        return _deflate_chunk(stream, starts[i], end, level, i == 0, i == len(starts) - 1, coder)

    if threads == 1 or len(starts) == 1 and len(spans) == 1:
        for r0, r1 in spans:
            _filter(raw, filtered, r0, r1, kind, bpp)
        results = [deflate(i) for i in range(len(starts))]
    else:
        with ThreadPoolExecutor(min(threads, max(len(starts), len(spans)))) as pool:
            list(pool.map(lambda s: _filter(raw, filtered, s[0], s[1], kind, bpp), spans))
            results = list(pool.map(deflate, range(len(starts))))
    adler = 1
    for (_, _, piece_adler), start in zip(results, starts):
        adler = _adler32_combine(adler, piece_adler, min(n, start + CHUNK) - start)
    trailer = struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, COLOUR_TYPES[c], 0, 0, 0)
    out = [SIGNATURE, _chunk(b"IHDR", ihdr)]
    for i, (body, crc, _) in enumerate(results):
        if i == len(results) - 1:
            crc = zlib.crc32(trailer, crc)
            out += [struct.pack(">I", len(body) + 4) + b"IDAT", body,
                    trailer + struct.pack(">I", crc & 0xFFFFFFFF)]
        else:
            out += [struct.pack(">I", len(body)) + b"IDAT", body, struct.pack(">I", crc & 0xFFFFFFFF)]
    out.append(_chunk(b"IEND", b""))
    return out


def encode(a: np.ndarray, level: int = 1, *, threads: int | None = None) -> bytes:
    """The PNG file of ``a``: H x W (grey) or H x W x C (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), uint8
    (8-bit PNG) or uint16 (16-bit PNG). ``level``: the zlib level 0-9. ``threads``: how many threads
    deflate (default :data:`THREADS`); the bytes are the same for any number."""
    return b"".join(_pieces(a, level, threads))


def save(fp: str | os.PathLike | BinaryIO, a: np.ndarray, level: int = 1, *,
         threads: int | None = None) -> None:
    """Write the PNG file of ``a`` (see :func:`encode`) to a path or a binary file object."""
    pieces = _pieces(a, level, threads)
    if hasattr(fp, "write"):
        fp.writelines(pieces)
        return
    with open(fp, "wb") as f:
        f.writelines(pieces)
