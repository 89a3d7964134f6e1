"""``deflate_fast(data, last)``: raw DEFLATE (RFC 1951) of a byte string, the fast level of our PNG writer.

Per block of 128 KiB, Huffman codes of the block's own byte statistics and runs of one repeated byte
(distance-1 matches of 8 bytes or more); no other matching (csrc/cpu/deflate.cpp says why that suits
PNG rows filtered by Sub). ``last=False`` ends the output on a byte boundary with an empty stored block,
as zlib's ``Z_SYNC_FLUSH``, so pieces deflated one by one (on several threads) concatenate into one
stream; ``last=True`` ends the stream. Any inflater (zlib, Pillow, browsers) reads the result. The bytes
depend on the input and ``last`` only.

The compiled kernel runs on CPU byte tensors (it releases the GIL, as every op does). The reference
(:func:`reference_deflate_fast`) is zlib's level 1 with its ``Z_RLE`` strategy: the same kind of stream
(runs and Huffman codes), other bytes of about the same size; it runs without the extension and under
``LOWLIGHT_FAST_BACKEND=reference``. Tests check both against zlib's inflater.
"""
from __future__ import annotations

import warnings
import zlib
from typing import Callable

import numpy as np
import torch

from lowlight_fast import _ext, backend
from lowlight_fast.ops import _registry

__all__ = ["coder", "compiled", "deflate_fast", "reference_deflate_fast"]

# ---- checks ----


def _as_bytes_tensor(data) -> torch.Tensor:
    """bytes / bytearray / memoryview / uint8 numpy array or tensor -> a 1-D uint8 CPU tensor (no copy
    where the input is contiguous; read-only memory is shared too: the kernel only reads it)."""
    if isinstance(data, torch.Tensor):
        t = data
    elif isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"data: expected uint8 bytes, got a {data.dtype} array")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": it is only read
            t = torch.from_numpy(np.ascontiguousarray(data).reshape(-1))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        mv = memoryview(data).cast("B")
        if not len(mv):
            return torch.empty(0, dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": it is only read
            return torch.frombuffer(mv, dtype=torch.uint8)
    else:
        raise TypeError(f"data: expected bytes, a uint8 array or tensor, got {type(data).__name__}")
    if t.dtype != torch.uint8:
        raise ValueError(f"data: expected uint8 bytes, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"data: expected a CPU tensor, got one on {t.device}")
    return t.reshape(-1)


def compiled() -> bool:
    """True when :func:`deflate_fast` runs the compiled coder (not the zlib reference)."""
    return _ext.has_op("deflate_fast") and backend.requested() != "reference"


# ---- public functions ----


def deflate_fast(data, last: bool = True) -> bytes:
    """Raw DEFLATE bytes of ``data`` (see the module docstring)."""
    return coder()(data, last)


def coder() -> Callable[..., bytes]:
    """The implementation :func:`deflate_fast` runs, chosen now, in this thread (the backend setting of
    :func:`lowlight_fast.use_backend` is per thread): for callers that deflate on worker threads."""
    return _compiled_deflate_fast if compiled() else reference_deflate_fast


def _compiled_deflate_fast(data, last: bool = True) -> bytes:
    return torch.ops.lowlight_fast.deflate_fast(_as_bytes_tensor(data), bool(last)).numpy().tobytes()


def reference_deflate_fast(data, last: bool = True) -> bytes:
    """zlib level 1, ``Z_RLE`` (runs and Huffman codes), raw stream, ended as :func:`deflate_fast` ends it."""
    t = _as_bytes_tensor(data)
    z = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return z.compress(t.numpy()) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


# ---- fakes ----


def _fake_deflate_fast(data: torch.Tensor, last: bool) -> torch.Tensor:
    n = torch.library.get_ctx().new_dynamic_size()  # the compressed size depends on the bytes
    return data.new_empty((n,), dtype=torch.uint8)


_registry.register_cpp("deflate_fast", fake=_fake_deflate_fast)
