"""The IDX binary format (MNIST's): a strict reader and a writer (the writer is for tests and tools).

Layout: 2 zero bytes, 1 dtype code, 1 byte ndim, ndim big-endian uint32 dims, then the payload in
big-endian C order. A `.gz` suffix means gzip-compressed.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import DataError

# IDX dtype code -> big-endian numpy dtype
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {e}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip'd if it ends in .gz); validate magic, dims and payload length.

    Any malformation raises `DataError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero1, zero2, code, ndim = raw[:4]
    if zero1 or zero2 or code not in _DTYPES or ndim == 0:
        raise DataError(f"corrupt IDX file {path}: bad magic number 0x{raw[:4].hex()}")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"corrupt IDX file {path}: truncated header ({len(raw)} bytes, need {head})")
    dims = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - head
    if got != want:
        what = "truncated" if got < want else "trailing bytes in"
        raise DataError(f"corrupt IDX file {path}: {what} payload ({got} bytes for dims {dims}, expected {want})")
    return np.frombuffer(raw, dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as IDX (gzip'd if `path` ends in .gz). Supports the six IDX dtypes."""
    path = Path(path)
    a = np.asarray(array)
    code = _CODES.get(a.dtype.newbyteorder("="))
    if code is None or a.ndim == 0:
        raise ValueError(f"cannot write dtype {a.dtype} / ndim {a.ndim} as IDX")
    blob = (
        bytes([0, 0, code, a.ndim])
        + np.asarray(a.shape, ">u4").tobytes()
        + np.ascontiguousarray(a, _DTYPES[code]).tobytes()
    )
    if path.suffix == ".gz":
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path
