"""Reader for the CIFAR-10 "python version" batches (``cifar-10-batches-py``).

Each batch is a pickled dict with ``b"data"``: uint8 array (N, 3072) holding the red, green and blue
32 x 32 planes of each image in row-major order, and ``b"labels"``: N integers in 0..9. The pickles are
read with an unpickler that only builds NumPy arrays and plain Python containers, so a tampered batch cannot
run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .._errors import DataIntegrityError

__all__ = ["read_cifar_batch"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file.

    Returns
    -------
    images : ndarray
        uint8 of shape (N, 3, 32, 32).
    labels : ndarray
        int64 of shape (N,), values in 0..9.

    Raises
    ------
    cnnlens.DataIntegrityError
        The file cannot be unpickled (truncated, damaged, not a CIFAR batch) or its content has the wrong
        keys, shape or label range.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise _corrupt(path, f"it cannot be unpickled ({type(error).__name__}: {error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise _corrupt(path, f"it should hold a dict with keys b'data' and b'labels'; found {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"b'data' should be uint8 of shape (N, 3072); found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise _corrupt(path, f"b'labels' should be {data.shape[0]} integers in 0..9; found shape "
                             f"{labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _corrupt(path: Path, reason: str) -> DataIntegrityError:
    return DataIntegrityError(f"{path} is not a valid CIFAR-10 batch: {reason}. Delete it and fetch it again.")
