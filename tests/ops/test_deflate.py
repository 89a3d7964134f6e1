"""deflate_fast (PNG level 1): the compiled coder's streams inflate, by zlib, to their input, on the edge
cases of its format (empty, one byte, runs at block ends, one symbol, incompressible bytes, codes that
need length limiting), end as they are told to (final, or byte-aligned so pieces concatenate), and are
as small as zlib's Huffman-only stream; the zlib reference (Z_RLE) inflates the same way."""
import zlib

import numpy as np
import pytest
import torch

from lowlight_fast import _ext, use_backend
from lowlight_fast.ops import deflate as d

BLOCK = 1 << 17  # csrc/cpu/deflate.cpp: input bytes per Huffman block


def _cpp():
    if not _ext.has_op("deflate_fast"):
        pytest.fail("lowlight_fast._C was not built with deflate_fast")
    return lambda data, last=True: torch.ops.lowlight_fast.deflate_fast(
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8),
        last).numpy().tobytes()


def _inflate(stream: bytes, final: bool) -> bytes:
    z = zlib.decompressobj(-15)
    out = z.decompress(stream)
    assert z.eof == final  # a final block ends the stream; a piece does not
    assert not z.unused_data
    return out


def _fibonacci_bytes() -> bytes:
    """Byte k repeated fib(k) times, shuffled: a Huffman code of these counts is 24 deep, over deflate's
    15-bit limit."""
    fib = [1, 1]
    while len(fib) < 25:
        fib.append(fib[-1] + fib[-2])
    a = np.repeat(np.arange(25, dtype=np.uint8), fib)
    np.random.default_rng(3).shuffle(a)
    return a.tobytes()


def _cases():
    rng = np.random.default_rng(7)
    noise = np.clip(rng.normal(0, 6, 300_000), -128, 127).astype(np.int8).view(np.uint8)  # Sub-like residuals
    runs = np.repeat(rng.integers(0, 256, 5000).astype(np.uint8), rng.integers(1, 600, 5000))
    return {
        "empty": b"",
        "one byte": b"\x07",
        "two bytes": b"\x00\xff",
        "a run shorter than a match": b"\x05" * 8,
        "one run": b"\x05" * 9,
        "a long run (several 258-byte matches)": b"\x00" * 100_000,
        "one symbol per block, three blocks": b"\x2a" * (2 * BLOCK + 17),
        "incompressible (stored blocks)": rng.integers(0, 256, 200_003).astype(np.uint8).tobytes(),
        "residuals of a noisy image": noise.tobytes(),
        "runs of every length, across block ends": runs.tobytes(),
        "a run ending at a block's end": b"\x01" * 10 + b"\x00" * (BLOCK - 10) + b"\x00" * 40,
        "all 256 values": np.arange(256, dtype=np.uint8).tobytes() * 3,
        "counts that need length-limited codes": _fibonacci_bytes(),
    }


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("last", [True, False])
def test_inflates_to_the_input(name, last):
    data = _cases()[name]
    out = _cpp()(data, last)
    assert _inflate(out, last) == data
    if not last and data:
        assert out.endswith(b"\x00\x00\xff\xff")  # an empty stored block: byte-aligned, as Z_SYNC_FLUSH
    assert _cpp()(data, last) == out  # deterministic


def test_pieces_concatenate_into_one_stream():
    data = b"".join(_cases().values())
    cuts = [0, 1, 9, 5000, 5001, 300_000, BLOCK * 3, len(data)]
    pieces = [_cpp()(data[a:b], b == len(data)) for a, b in zip(cuts, cuts[1:])]
    assert _inflate(b"".join(pieces), True) == data


def test_as_small_as_zlib_huffman_only_and_stored_when_incompressible():
    cases = _cases()
    for name in ("residuals of a noisy image", "runs of every length, across block ends"):
        data = cases[name]
        z = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
        huff = len(z.compress(data) + z.flush())
        assert len(_cpp()(data)) <= huff * 1.01, name
    data = cases["incompressible (stored blocks)"]
    assert len(data) < len(_cpp()(data)) <= len(data) + 5 * (len(data) // 65535 + 2)
    assert len(_cpp()(b"\x00" * 100_000)) < 200  # 388 matches of 258 bytes, a few bits each


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_public_function_takes_bytes_arrays_and_tensors(backend):
    if backend == "cpp":
        _cpp()
    data = _cases()["residuals of a noisy image"]
    with use_backend(backend):
        assert d.compiled() == (backend == "cpp")
        outs = [d.deflate_fast(x) for x in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8),
                                           torch.frombuffer(bytearray(data), dtype=torch.uint8))]
        assert all(o == outs[0] for o in outs)
        assert _inflate(outs[0], True) == data
        assert _inflate(d.deflate_fast(data, last=False), False) == data
        assert _inflate(d.deflate_fast(b""), True) == b""
        # a 2-D array is read as its bytes in order
        a = np.frombuffer(data[:3000], np.uint8).reshape(30, 100)
        assert _inflate(d.deflate_fast(a), True) == data[:3000]


def test_bad_input_is_refused():
    _cpp()
    with pytest.raises(TypeError, match="data"):
        d.deflate_fast("text")
    with pytest.raises(ValueError, match="uint8"):
        d.deflate_fast(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        d.deflate_fast(torch.zeros(4, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="1-D"):
        torch.ops.lowlight_fast.deflate_fast(torch.zeros(2, 2, dtype=torch.uint8), True)
    with pytest.raises(RuntimeError, match="uint8"):
        torch.ops.lowlight_fast.deflate_fast(torch.zeros(4, dtype=torch.int32), True)


def test_opcheck():
    _cpp()
    x = torch.from_numpy(np.frombuffer(_cases()["runs of every length, across block ends"][:20000], np.uint8).copy())
    torch.library.opcheck(torch.ops.lowlight_fast.deflate_fast, (x, True),
                          test_utils=("test_schema", "test_faketensor"))
