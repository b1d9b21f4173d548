"""Data sets for cnnlens: embedded real data, standard-format loaders with checksums, synthetic scenes.

>>> from cnnlens.data import load
>>> train = load("mnist5k", "train", transforms=["pad32"])
>>> train.images.shape
torch.Size([4000, 1, 32, 32])
"""

from . import _embedded, _scenes, _standard  # noqa: F401  (each registers its data sets)
from ._cifar import read_cifar_batch
from ._dataset import ArrayDataset, SceneDataset
from ._download import FileSpec, download_file, downloads_enabled, ensure_files, md5sum, verify_file
from ._embedded import DIGITS_SPLIT_SEED, MNIST5K_TEST_PER_CLASS, MNIST5K_TRAIN_PER_CLASS
from ._idx import read_idx
from ._registry import (
    DatasetInfo,
    clear_cache,
    dataset_info,
    default_data_dir,
    list_datasets,
    load,
    register_dataset,
)
from ._scenes import SCENE_NAMES, SCENE_SIDE, SCENES_SEED, composite, scene_images
from ._standard import (
    CIFAR10_ARCHIVE,
    CIFAR10_FILES,
    CIFAR10_FOLDER,
    FASHION_MNIST_FILES,
    MNIST_FILES,
    cifar_loader,
    idx_loader,
)
from ._transforms import TransformContext, get_transform, list_transforms, register_transform

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILES",
    "CIFAR10_FOLDER",
    "DIGITS_SPLIT_SEED",
    "FASHION_MNIST_FILES",
    "MNIST5K_TEST_PER_CLASS",
    "MNIST5K_TRAIN_PER_CLASS",
    "MNIST_FILES",
    "SCENE_NAMES",
    "SCENE_SIDE",
    "SCENES_SEED",
    "ArrayDataset",
    "cifar_loader",
    "clear_cache",
    "composite",
    "dataset_info",
    "DatasetInfo",
    "default_data_dir",
    "download_file",
    "downloads_enabled",
    "ensure_files",
    "FileSpec",
    "get_transform",
    "idx_loader",
    "list_datasets",
    "list_transforms",
    "load",
    "md5sum",
    "read_cifar_batch",
    "read_idx",
    "register_dataset",
    "register_transform",
    "scene_images",
    "SceneDataset",
    "TransformContext",
    "verify_file",
]
