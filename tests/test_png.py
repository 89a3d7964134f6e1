"""lowlight_fast.png: the PNG encoder of the command line's PNG output, against Pillow's decoder and an
independent one (tests/cli/_png.py), with the file's structure (CRCs, Adler-32, zlib header) checked here."""
import io as pyio
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lowlight_fast import io, png
from tests.cli._png import read_png16

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _image(rng, shape, dtype=np.uint8, dark=True):
    """A dark noisy picture (as the model's inputs are), or uniformly random samples."""
    peak = 255 if dtype == np.uint8 else 65535
    hi = peak // 4 if dark else peak
    return rng.integers(0, hi + 1, shape).astype(dtype)


def _chunks(data: bytes):
    """(type, body) of every chunk, after checking the signature and each CRC-32."""
    assert data[:8] == png.SIGNATURE
    pos, out = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        out.append((kind, body))
        pos += 12 + n
    assert pos == len(data)
    return out


def _check_structure(data: bytes, a: np.ndarray, level: int) -> bytes:
    """IHDR matches ``a``, IDATs in one run, IEND last; zlib header valid; Adler-32 right. Returns the
    decompressed (filtered) stream."""
    chunks = _chunks(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    h, w = a.shape[:2]
    c = a.shape[2] if a.ndim == 3 else 1
    depth = 8 * a.dtype.itemsize
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (w, h, depth, png.COLOUR_TYPES[c], 0, 0, 0)
    z = b"".join(body for k, body in chunks if k == b"IDAT")
    cmf, flg = z[0], z[1]
    assert cmf == 0x78 and (cmf * 256 + flg) % 31 == 0  # deflate, 32 KiB window, check bits
    assert not flg & 0x20  # no preset dictionary
    d = zlib.decompressobj(-15)
    stream = d.decompress(z[2:]) + d.flush()
    assert d.eof and len(d.unused_data) == 4, "one deflate stream, then the Adler-32"
    assert struct.unpack(">I", d.unused_data)[0] == zlib.adler32(stream)
    row = w * c * a.dtype.itemsize + 1
    assert len(stream) == h * row
    filters = set(stream[::row])
    if level == 0:
        assert filters == {0}  # stored: no filter
    elif level < png.ADAPTIVE_FROM_LEVEL:
        assert filters == {1}  # Sub on every row
    else:
        assert filters <= {0, 1, 2, 4}  # Pillow's choice: None, Sub, Up or Paeth
    return stream


def _decode(data: bytes, a: np.ndarray, tmp_path) -> np.ndarray:
    """The samples of a PNG, decoded by Pillow (8 bits, 16-bit grey) or by the independent decoder."""
    c = a.shape[2] if a.ndim == 3 else 1
    if a.dtype == np.uint8 or c == 1:
        im = Image.open(pyio.BytesIO(data))
        assert im.mode == (MODES[c] if a.dtype == np.uint8 else "I;16")
        got = np.asarray(im)
        return got if a.ndim == 2 or c > 1 else got[..., None]
    p = tmp_path / "x.png"
    p.write_bytes(data)
    hi = np.asarray(Image.open(p))  # Pillow keeps the high bytes of 16-bit RGB(A)
    got = read_png16(p)
    if c >= 3:
        np.testing.assert_array_equal(hi, (got >> 8).astype(np.uint8))
    return got


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("level", range(10))
def test_decodes_to_the_input_at_every_level(tmp_path, rng, dtype, channels, level):
    for h, w in [(1, 1), (1, 9), (8, 1), (13, 7)]:
        a = _image(rng, (h, w, channels), dtype, dark=level % 2 == 0)
        data = png.encode(a, level)
        Image.open(pyio.BytesIO(data)).verify()
        _check_structure(data, a, level)
        np.testing.assert_array_equal(_decode(data, a, tmp_path), a)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (4, 9, 2)])
def test_grey_and_grey_alpha(tmp_path, rng, dtype, shape):
    a = _image(rng, shape, dtype)
    data = png.encode(a, 6)
    _check_structure(data, a, 6)
    got = _decode(data, a, tmp_path)
    np.testing.assert_array_equal(got.reshape(a.shape), a)


def _filtered_stream(data: bytes) -> bytes:
    return zlib.decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT"))


@pytest.mark.parametrize("level", range(png.ADAPTIVE_FROM_LEVEL, 10, 2))
def test_from_level_4_the_rows_are_filtered_as_pillow_filters_them(rng, monkeypatch, level):
    """Same filtered bytes as Pillow's encoder (its per-row choice) on smooth, noisy, flat and mixed rows,
    filtered in blocks of a few rows."""
    monkeypatch.setattr(png, "FILTER_ROWS_BYTES", 300)
    yy, xx = np.mgrid[0:45, 0:38]
    smooth = np.stack([xx * 3, yy * 5, xx + yy], axis=-1).astype(np.uint8)  # ramps: Up/Paeth/Sub rows
    mixed = smooth.copy()
    mixed[10:20] = _image(rng, (10, 38, 3), dark=False)  # noise
    mixed[30:33] = 7  # flat rows
    mixed[33] = mixed[32]  # a repeated row (Up gives zeros)
    rgba = np.concatenate([mixed, _image(rng, (45, 38, 1))], axis=2)
    tie = np.repeat(np.array([[0, 2], [2, 4]], np.uint8)[..., None], 3, axis=2)  # row 2: Up = Sub = Paeth
    kinds = set()
    for a in (smooth, mixed, rgba, tie, mixed[:1], mixed[:, :1], _image(rng, (17, 23, 3))):
        ref = pyio.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(ref, "PNG", compress_level=level)
        ours = _filtered_stream(png.encode(a, level))
        assert ours == _filtered_stream(ref.getvalue())
        kinds |= set(ours[::a.shape[1] * a.shape[2] + 1])
    assert kinds == {0, 1, 2, 4}  # every filter was chosen somewhere


def test_strided_input_is_encoded_as_its_values(rng):
    base = _image(rng, (20, 30, 4))
    view = base[::2, 1::3, :3]  # not contiguous
    np.testing.assert_array_equal(np.asarray(Image.open(pyio.BytesIO(png.encode(view)))), view)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_many_small_chunks_same_bytes_for_any_thread_count(rng, monkeypatch, level):
    """Chunks smaller than the 32 KiB window (so each is primed from several before it), threads 1/2/4."""
    monkeypatch.setattr(png, "CHUNK", 5000)
    monkeypatch.setattr(png, "FILTER_ROWS_BYTES", 3000)  # rows filtered in several blocks too
    a = _image(rng, (97, 131, 3))
    out = {t: png.encode(a, level, threads=t) for t in (1, 2, 4)}
    assert out[1] == out[2] == out[4]
    stream = _check_structure(out[1], a, level)
    n_idat = sum(k == b"IDAT" for k, _ in _chunks(out[1]))
    assert n_idat == -(-len(stream) // 5000)  # one IDAT per chunk
    np.testing.assert_array_equal(np.asarray(Image.open(pyio.BytesIO(out[1]))), a)


def test_multi_chunk_image_at_the_real_chunk_size(rng):
    """An image of 3 chunks of the stream, at zlib's level 2 (level 1 matches only runs, so nothing
    reaches back): same bytes for threads 1/2/4, decodes exactly, and about as small as one serial
    deflate of the same stream (each chunk sees the 32 KiB before it)."""
    period = _image(rng, (8, 1000, 3), dark=False)  # 24 KB of noise, repeated: each repeat is one match
    a = np.tile(period, (125, 1, 1))  # 1000 x 1000 x 3: 3 MB of filtered stream; a chunk not primed
    # with the 32 KiB before it would have to store its first 24 KB again
    assert 2 * png.CHUNK < a.size + a.shape[0] <= 3 * png.CHUNK
    out = {t: png.encode(a, 2, threads=t) for t in (1, 2, 4)}
    assert out[1] == out[2] == out[4]
    Image.open(pyio.BytesIO(out[1])).verify()
    stream = _check_structure(out[1], a, 2)
    np.testing.assert_array_equal(np.asarray(Image.open(pyio.BytesIO(out[1]))), a)
    z = zlib.compressobj(2, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    serial = len(z.compress(stream) + z.flush())
    assert len(out[1]) < serial * 1.01


def test_16bit_multi_chunk_via_the_package_reader(tmp_path, rng):
    a = _image(rng, (300, 500, 4), np.uint16)  # 1.2 MB: 2 chunks
    p = tmp_path / "d.png"
    png.save(p, a, 1, threads=2)
    img = io.read_image(p)
    assert img.bits == 16
    np.testing.assert_array_equal(np.round(img.rgb * 65535).astype(np.uint16), a[..., :3])
    np.testing.assert_array_equal(img.alpha, a[..., 3])


def test_save_to_a_file_object_and_a_path_write_the_same_bytes(tmp_path, rng):
    a = _image(rng, (9, 11, 3))
    buf = pyio.BytesIO()
    png.save(buf, a)
    png.save(tmp_path / "p.png", a)
    assert buf.getvalue() == (tmp_path / "p.png").read_bytes() == png.encode(a)


def test_adler32_combine_matches_zlib(rng):
    for n1, n2 in [(0, 0), (0, 5), (5, 0), (1, 1), (65521, 3), (3, 65521), (70000, 131042), (123, 65520)]:
        x = rng.integers(0, 256, n1 + n2).astype(np.uint8).tobytes()
        got = png._adler32_combine(zlib.adler32(x[:n1]), zlib.adler32(x[n1:]), n2)
        assert got == zlib.adler32(x), (n1, n2)
    ones = b"\xff" * 200000  # sums near the modulus
    got = png._adler32_combine(zlib.adler32(ones[:99999]), zlib.adler32(ones[99999:]), 100001)
    assert got == zlib.adler32(ones)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_write_image_gives_the_pixels_pillow_would_have_written(tmp_path, rng, bits, with_alpha):
    x = torch.rand(1, 3, 21, 34, generator=torch.Generator().manual_seed(5))
    alpha = None
    if with_alpha:
        alpha = _image(rng, (21, 34), np.uint16 if bits == 16 else np.uint8, dark=False)
    p = tmp_path / "o.png"
    io.write_image(p, x, bits=bits, alpha=alpha)
    q = io.quantize(io.tensor_to_hwc(x), bits)
    expected = q if alpha is None else np.concatenate([q, alpha[..., None]], axis=2)
    if bits == 8:  # what Pillow's encoder wrote before, decoded
        ref = pyio.BytesIO()
        Image.fromarray(expected, "RGBA" if with_alpha else "RGB").save(ref, "PNG", compress_level=1)
        expected = np.asarray(Image.open(ref))
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected)
    else:
        np.testing.assert_array_equal(read_png16(p), expected)
    assert [k for k, _ in _chunks(p.read_bytes()) if k != b"IDAT"] == [b"IHDR", b"IEND"]  # no metadata
    assert [f.name for f in tmp_path.iterdir()] == ["o.png"]  # no temporary left


@pytest.mark.parametrize("level", [0, 1, 9])
def test_write_image_png_compression_is_the_level(tmp_path, level):
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    io.write_image(tmp_path / "o.png", x, png_compression=level)
    q = io.quantize(io.tensor_to_hwc(x), 8)
    assert (tmp_path / "o.png").read_bytes() == png.encode(q, level)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 3), np.float32), "uint8 or uint16"),
    (np.zeros((4, 4, 5), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "sides"),
    (np.zeros((4, 0), np.uint8), "sides"),
])
def test_bad_arrays_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        png.encode(bad)


def test_bad_arguments_are_refused():
    a = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(TypeError, match="numpy array"):
        png.encode(torch.zeros(2, 2, 3, dtype=torch.uint8))
    for level in (-1, 10, 1.0, True):
        with pytest.raises(ValueError, match="level"):
            png.encode(a, level)
    for threads in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            png.encode(a, threads=threads)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_level_1_is_our_coder_or_zlib_rle_without_it(rng, backend):
    """Level 1: the compiled coder (runs and Huffman codes) or, under the reference backend (as without
    the extension), zlib's Z_RLE; either decodes to the input, for any thread count."""
    from lowlight_fast import use_backend
    from lowlight_fast.ops import deflate

    a = np.concatenate([_image(rng, (300, 700, 3)), np.zeros((300, 700, 3), np.uint8)])  # noise, then flat
    with use_backend(backend):
        assert deflate.compiled() == (backend == "cpp")
        out = {t: png.encode(a, 1, threads=t) for t in (1, 2)}
        assert out[1] == out[2]
        stream = _check_structure(out[1], a, 1)
        np.testing.assert_array_equal(np.asarray(Image.open(pyio.BytesIO(out[1]))), a)
        z = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
        assert len(out[1]) < len(z.compress(stream) + z.flush())  # the flat half costs next to nothing
