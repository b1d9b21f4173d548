"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes,
then the values in C order, big-endian. Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .._errors import DataIntegrityError

__all__ = ["read_idx"]

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not, detected from its first bytes) into an array.

    Raises
    ------
    cnnlens.DataIntegrityError
        Bad magic number, unknown type code, a data size that does not match the header (truncated or
        padded file), or a damaged gzip stream; the message names the file and says to delete and re-fetch it.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise _corrupt(path, f"its gzip stream is damaged ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise _corrupt(path, f"it does not start with the IDX magic 0x0000 (first bytes {raw[:4].hex() or 'none'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise _corrupt(path, f"its IDX type code 0x{type_code:02X} is not one of "
                             f"{', '.join(f'0x{code:02X}' for code in _IDX_TYPES)}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _corrupt(path, f"its header declares {ndim} dimensions but the file has only {len(raw)} bytes")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        raise _corrupt(path, f"its header declares shape {shape} ({expected} bytes of data) but it holds "
                             f"{found} bytes (truncated or damaged)")
    values = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def _corrupt(path: Path, reason: str) -> DataIntegrityError:
    return DataIntegrityError(f"{path} is not a valid IDX file: {reason}. Delete it and fetch it again.")
