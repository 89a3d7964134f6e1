"""Independent 16-bit PNG helpers for the tests: an encoder using every PNG row filter (as real encoders
do) and a plain decoder, so the package's reader and writer are checked against code they do not share."""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(path, a: np.ndarray) -> None:
    """H x W x C (C = 1..4) uint16 -> 16-bit PNG; row y uses filter y % 5 (None, Sub, Up, Average, Paeth)."""
    h, w, c = a.shape
    bpp = 2 * c
    rows = np.ascontiguousarray(a.astype(">u2")).view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    out = []
    for y in range(h):
        f = y % 5
        x = rows[y]
        up = rows[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        pred = [0, left, up, (left + up) // 2, _paeth(left, up, upleft)][f]
        out.append(bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, 16, COLOUR_TYPES[c], 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(out)))
                 + _chunk(b"IEND", b""))


def read_png16(path) -> np.ndarray:
    """A non-interlaced 16-bit PNG -> H x W x C uint16 (slow pure-Python unfiltering; tiny images only)."""
    data = open(path, "rb").read()
    assert data[:8] == SIGNATURE
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ct, _, _, interlace = hdr
    assert depth == 16 and interlace == 0
    c = {v: k for k, v in COLOUR_TYPES.items()}[ct]
    bpp, stride = 2 * c, 2 * c * w
    raw = zlib.decompress(idat)
    prev = [0] * stride
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, int(_paeth(np.int64(a), np.int64(b), np.int64(cc)))][f]
            line[i] = (line[i] + pred) % 256
        rows.append(line)
        prev = line
    return np.array(rows, np.uint8).reshape(h, w * c, 2).view(">u2").reshape(h, w, c).astype(np.uint16)
