"""Readers for the CIFAR-10 and CIFAR-100 "python version" files (``cifar-10-batches-py``, ``cifar-100-python``).

Each batch is a pickled dict with ``b"data"``: uint8 array (N, 3072) holding the red, green and blue
32 x 32 planes of each image in row-major order, and the labels: ``b"labels"`` (CIFAR-10, N integers in 0..9)
or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100, N integers in 0..99 / 0..19). CIFAR-100's ``meta`` file
is a pickled dict of the class names (``b"fine_label_names"``, ``b"coarse_label_names"``). The pickles are
read with an unpickler that only builds NumPy arrays and plain Python containers, so a tampered batch cannot
run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .._errors import DataIntegrityError

__all__ = ["read_cifar_batch", "read_cifar_meta"]

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


def read_cifar_batch(
    path: str | Path, *, label_key: bytes = b"labels", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file.

    Parameters
    ----------
    path : path of the batch (``data_batch_1`` ... of CIFAR-10, ``train`` / ``test`` of CIFAR-100).
    label_key : the key of the labels: ``b"labels"`` (CIFAR-10), ``b"fine_labels"`` (CIFAR-100's 100 classes) or
        ``b"coarse_labels"`` (its 20 superclasses).
    num_classes : the labels must lie in ``0 .. num_classes - 1``.

    Returns
    -------
    images : ndarray
        uint8 of shape (N, 3, 32, 32).
    labels : ndarray
        int64 of shape (N,), values in ``0 .. num_classes - 1``.

    Raises
    ------
    cnnlens.DataIntegrityError
        The file cannot be unpickled (truncated, damaged, not a CIFAR batch) or its content has the wrong
        keys, shape or label range.
    """
    path = Path(path)
    kind = "CIFAR-10 batch" if label_key == b"labels" else "CIFAR-100 batch"
    batch = _unpickle(path, kind)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise _corrupt(path, kind, f"it should hold a dict with keys b'data' and {label_key!r}; found {keys}")
    data = np.asarray(batch[b"data"])
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise _corrupt(path, kind, f"{label_key!r} should be a list of integers ({error})") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, kind, f"b'data' should be uint8 of shape (N, 3072); found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        found = f"range {labels.min()}..{labels.max()}" if labels.shape == (data.shape[0],) else f"shape {labels.shape}"
        raise _corrupt(path, kind, f"{label_key!r} should be {data.shape[0]} integers in 0..{num_classes - 1}; "
                                   f"found {found}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_meta(path: str | Path, *, key: bytes = b"fine_label_names", num_classes: int = 100) -> list[str]:
    """Read the class names of CIFAR-100's ``meta`` file (``key``: ``b"fine_label_names"`` or
    ``b"coarse_label_names"``); there must be exactly ``num_classes`` of them.

    Raises
    ------
    cnnlens.DataIntegrityError
        The file cannot be unpickled or does not list ``num_classes`` names under ``key``.
    """
    path = Path(path)
    meta = _unpickle(path, "CIFAR-100 meta file")
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, bytes | str) for n in names):
        found = f"{len(names)} entries" if isinstance(names, list) else f"{type(names).__name__}"
        raise _corrupt(path, "CIFAR-100 meta file", f"{key!r} should list {num_classes} class names; found {found}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _unpickle(path: Path, kind: str) -> object:
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise _corrupt(path, kind, f"it cannot be unpickled ({type(error).__name__}: {error})") from error


def _corrupt(path: Path, kind: str, reason: str) -> DataIntegrityError:
    return DataIntegrityError(f"{path} is not a valid {kind}: {reason}. Delete it and fetch it again.")
