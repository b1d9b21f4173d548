"""Data sets for cnnlens: embedded real data, standard-format loaders with checksums, synthetic scenes.

>>> from cnnlens.data import load
>>> train = load("mnist5k", "train", transforms=["pad32"])
>>> train.images.shape
torch.Size([4000, 1, 32, 32])
"""

from . import _embedded  # noqa: F401  (registers mnist5k, digits)
from ._dataset import ArrayDataset, SceneDataset
from ._embedded import DIGITS_SPLIT_SEED, MNIST5K_TEST_PER_CLASS, MNIST5K_TRAIN_PER_CLASS
from ._registry import (
    DatasetInfo,
    clear_cache,
    dataset_info,
    default_data_dir,
    list_datasets,
    load,
    register_dataset,
)
from ._transforms import TransformContext, get_transform, list_transforms, register_transform

__all__ = [
    "DIGITS_SPLIT_SEED",
    "MNIST5K_TEST_PER_CLASS",
    "MNIST5K_TRAIN_PER_CLASS",
    "ArrayDataset",
    "DatasetInfo",
    "SceneDataset",
    "TransformContext",
    "clear_cache",
    "dataset_info",
    "default_data_dir",
    "get_transform",
    "list_datasets",
    "list_transforms",
    "load",
    "register_dataset",
    "register_transform",
]
