"""The standard file-based data sets: MNIST and Fashion-MNIST (IDX), CIFAR-10 and CIFAR-100 (python batches).

Files live in ``data_dir/<name>/`` under their standard names; the MD5 checksums are the published ones
(the same constants torchvision checks). CIFAR-10 batches live in ``data_dir/cifar10/cifar-10-batches-py/``;
the archive ``data_dir/cifar10/cifar-10-python.tar.gz`` is accepted instead and extracted there. CIFAR-100
(the python version: files ``train``, ``test`` and ``meta``, the 100 fine labels) lives in
``data_dir/cifar100/cifar-100-python/``, or its archive ``data_dir/cifar100/cifar-100-python.tar.gz``.

:func:`idx_loader` and :func:`cifar_loader` build the loaders, so the same verified code path serves files a
user makes in these formats (register them with :func:`cnnlens.data.register_dataset`).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .._errors import DataIntegrityError
from ._cifar import read_cifar_batch, read_cifar_meta
from ._dataset import ArrayDataset
from ._download import FileSpec, download_file, downloads_enabled, ensure_files, verify_file
from ._idx import read_idx
from ._registry import Loader, register_dataset

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILES",
    "CIFAR10_FOLDER",
    "CIFAR100_ARCHIVE",
    "CIFAR100_FILES",
    "CIFAR100_FOLDER",
    "CIFAR100_META",
    "FASHION_MNIST_FILES",
    "MNIST_FILES",
    "cifar_loader",
    "idx_loader",
]

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


def _idx_spec(filename: str, md5: str, mirrors: Sequence[str]) -> FileSpec:
    return FileSpec(filename, md5, tuple(mirror + filename for mirror in mirrors))


#: split -> (images file, labels file) of MNIST
MNIST_FILES: Mapping[str, tuple[FileSpec, FileSpec]] = {
    "train": (
        _idx_spec("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _MNIST_MIRRORS),
        _idx_spec("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", _MNIST_MIRRORS),
    ),
    "test": (
        _idx_spec("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", _MNIST_MIRRORS),
        _idx_spec("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", _MNIST_MIRRORS),
    ),
}

#: split -> (images file, labels file) of Fashion-MNIST
FASHION_MNIST_FILES: Mapping[str, tuple[FileSpec, FileSpec]] = {
    "train": (
        _idx_spec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", _FASHION_MIRRORS),
        _idx_spec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", _FASHION_MIRRORS),
    ),
    "test": (
        _idx_spec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", _FASHION_MIRRORS),
        _idx_spec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", _FASHION_MIRRORS),
    ),
}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = FileSpec(
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)
#: split -> batch files of CIFAR-10 (inside ``cifar-10-batches-py``)
CIFAR10_FILES: Mapping[str, tuple[FileSpec, ...]] = {
    "train": (
        FileSpec("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        FileSpec("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("data_batch_4", "634d18415352ddfa80567beed471001a"),
        FileSpec("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    "test": (FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),),
}

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = FileSpec(
    "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
)
#: split -> batch files of CIFAR-100 (inside ``cifar-100-python``; one file per split)
CIFAR100_FILES: Mapping[str, tuple[FileSpec, ...]] = {
    "train": (FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),),
    "test": (FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
}
#: CIFAR-100's class names (``b"fine_label_names"``, ``b"coarse_label_names"``), read to check the folder
CIFAR100_META = FileSpec("meta", "7973b15100ade9c7d40fb424638fde48")
#: the key of the class names in ``meta`` for each label key
_META_KEYS = {b"fine_labels": b"fine_label_names", b"coarse_labels": b"coarse_label_names"}


def idx_loader(name: str, files: Mapping[str, tuple[FileSpec, FileSpec]], num_classes: int = 10) -> Loader:
    """A loader reading ``files[split] = (images, labels)`` IDX files from ``data_dir/<name>/``.

    Images must be uint8 of shape (N, H, W) (scaled to [0, 1], returned as (N, 1, H, W)); labels uint8 of
    shape (N,) with values below ``num_classes``. Files are verified against their MD5 first.
    """

    def load_idx(split: str, data_dir: Path) -> ArrayDataset:
        _check_split(name, split, files)
        image_path, label_path = ensure_files(name, data_dir / name, files[split], data_dir=data_dir)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataIntegrityError(
                f"{image_path} should hold uint8 images of shape (N, H, W); found {images.dtype} "
                f"{images.shape}. Delete it and fetch the right file."
            )
        if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() >= num_classes):
            raise DataIntegrityError(
                f"{label_path} should hold {len(images)} labels in 0..{num_classes - 1} to match "
                f"{image_path.name}; found shape {labels.shape}. Delete both files and fetch them again."
            )
        tensor = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)
        return ArrayDataset(tensor, torch.from_numpy(labels.astype(np.int64)), num_classes, name, split)

    return load_idx


def cifar_loader(
    name: str,
    files: Mapping[str, Sequence[FileSpec]],
    archive: FileSpec | None = None,
    folder: str = CIFAR10_FOLDER,
    *,
    label_key: bytes = b"labels",
    num_classes: int = 10,
    meta: FileSpec | None = None,
) -> Loader:
    """A loader reading the CIFAR batches ``files[split]`` from ``data_dir/<name>/<folder>/``.

    When batches are missing and ``archive`` is given, the archive in ``data_dir/<name>/`` (downloaded if
    possible) is verified and the missing batches are extracted from its ``<folder>/`` member folder.
    ``label_key`` names the labels in each batch (``b"labels"`` for CIFAR-10, ``b"fine_labels"`` or
    ``b"coarse_labels"`` for CIFAR-100) and ``num_classes`` bounds them. ``meta`` (CIFAR-100's ``meta`` file) is
    then needed too, and must list ``num_classes`` class names for that label key.
    """
    if meta is not None and label_key not in _META_KEYS:
        raise ValueError(f"a CIFAR meta file lists the names of {', '.join(map(repr, _META_KEYS))}; received "
                         f"label_key={label_key!r} with meta={meta.filename!r}.")

    def load_cifar(split: str, data_dir: Path) -> ArrayDataset:
        _check_split(name, split, files)
        root, batch_dir = data_dir / name, data_dir / name / folder
        specs = (*files[split], *((meta,) if meta is not None else ()))
        missing = [spec.filename for spec in specs if not (batch_dir / spec.filename).is_file()]
        alternative = ""
        if missing and archive is not None:
            archive_path = root / archive.filename
            failure = ""
            if not archive_path.is_file() and downloads_enabled():
                failure = download_file(archive, root)
            if archive_path.is_file():
                verify_file(archive_path, archive)
                _extract(archive_path, folder, missing, batch_dir)
            source = f" (from {archive.urls[0]})" if archive.urls else ""
            alternative = (
                f"put the archive {archive.filename}{source} in {root}; cnnlens extracts the batches from it"
                + (f" (its download failed: {failure})" if failure else "")
            )
        paths = ensure_files(name, batch_dir, specs, data_dir=data_dir, alternative=alternative)
        if meta is not None:
            read_cifar_meta(paths[-1], key=_META_KEYS[label_key], num_classes=num_classes)
        batches = [read_cifar_batch(path, label_key=label_key, num_classes=num_classes)
                   for path in paths[: len(files[split])]]
        images = torch.from_numpy(np.concatenate([b[0] for b in batches])).to(torch.float32).div_(255.0)
        labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
        return ArrayDataset(images, labels, num_classes, name, split)

    return load_cifar


def _check_split(name: str, split: str, files: Mapping[str, object]) -> None:
    if split not in files:
        raise ValueError(
            f"data set {name!r} has files for splits {', '.join(map(repr, files))}; received split={split!r}."
        )


def _extract(archive_path: Path, folder: str, filenames: Sequence[str], destination: Path) -> None:
    """Copy ``folder/<filename>`` members of a .tar.gz into ``destination`` (regular files only)."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            for filename in filenames:
                member = archive.getmember(f"{folder}/{filename}")
                source = archive.extractfile(member) if member.isfile() else None
                if source is None:
                    raise KeyError(f"{folder}/{filename} is not a regular file")
                partial = destination / f".{filename}.partial"
                partial.write_bytes(source.read())
                partial.replace(destination / filename)
    except (tarfile.TarError, KeyError, EOFError, OSError, zlib.error) as error:
        raise DataIntegrityError(
            f"cannot extract {folder}/ from {archive_path} ({type(error).__name__}: {error}); the archive is "
            "damaged or not the CIFAR python version. Delete it and fetch it again."
        ) from error


register_dataset(
    "mnist", num_classes=10, needs_files=True,
    description="MNIST 60,000/10,000 digits, 28x28, from the four standard IDX .gz files in data_dir/mnist/",
)(idx_loader("mnist", MNIST_FILES))
register_dataset(
    "fashion-mnist", num_classes=10, needs_files=True,
    description="Fashion-MNIST 60,000/10,000 28x28 clothing images, IDX .gz files in data_dir/fashion-mnist/",
)(idx_loader("fashion-mnist", FASHION_MNIST_FILES))
register_dataset(
    "cifar10", num_classes=10, needs_files=True,
    description="CIFAR-10 50,000/10,000 32x32 RGB images, python batches in data_dir/cifar10/cifar-10-batches-py/",
)(cifar_loader("cifar10", CIFAR10_FILES, CIFAR10_ARCHIVE))
register_dataset(
    "cifar100", num_classes=100, needs_files=True,
    description="CIFAR-100 50,000/10,000 32x32 RGB images, 100 fine labels, python version (train, test, meta) in "
                "data_dir/cifar100/cifar-100-python/",
)(cifar_loader("cifar100", CIFAR100_FILES, CIFAR100_ARCHIVE, CIFAR100_FOLDER, label_key=b"fine_labels",
               num_classes=100, meta=CIFAR100_META))
