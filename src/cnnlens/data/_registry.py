"""The data-set registry: names -> loaders, with an in-memory cache and transform application."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ._dataset import ArrayDataset
from ._transforms import TransformContext, get_transform

__all__ = [
    "DatasetInfo",
    "Loader",
    "clear_cache",
    "dataset_info",
    "default_data_dir",
    "list_datasets",
    "load",
    "register_dataset",
]

#: ``loader(split, data_dir) -> ArrayDataset``; ``data_dir`` is the resolved data folder.
Loader = Callable[[str, Path], ArrayDataset]

#: data sets whose images take more bytes than this are not kept in the memory cache
_CACHE_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a data set.

    Attributes
    ----------
    name, description : str
    num_classes : int
    splits : tuple of str
    needs_files : bool
        True when the data come from files in the data folder (``mnist``, ``cifar10``, ...), False when
        they ship with an installed package (``mnist5k``, ``digits``, ``mnist5k-scenes``).
    loader : Loader
    """

    name: str
    description: str
    num_classes: int
    splits: tuple[str, ...]
    needs_files: bool
    loader: Loader


_DATASETS: dict[str, DatasetInfo] = {}
_CACHE: dict[tuple[str, str, str], ArrayDataset] = {}


def register_dataset(
    name: str,
    *,
    num_classes: int,
    description: str,
    needs_files: bool = False,
    splits: tuple[str, ...] = ("train", "test"),
) -> Callable[[Loader], Loader]:
    """Register ``loader(split, data_dir) -> ArrayDataset`` under ``name`` (decorator).

    Duplicate names are rejected with a ValueError. ``needs_files`` tells :func:`load` that the loader reads
    files from ``data_dir`` (so the cache is kept per folder).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a data-set name must be a non-empty string; received {name!r}.")

    def decorator(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(
                f"a data set named {name!r} is already registered; choose another name "
                f"(registered: {', '.join(list_datasets())})."
            )
        _DATASETS[name] = DatasetInfo(name, description, num_classes, tuple(splits), needs_files, loader)
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered data sets, sorted."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; a ValueError lists the available names otherwise."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; available data sets: {', '.join(list_datasets())}."
        ) from None


def default_data_dir() -> Path:
    """The data folder used when none is given: ``$CNNLENS_DATA`` if set, else ``$XDG_CACHE_HOME/cnnlens``
    (``~/.cache/cnnlens`` when ``XDG_CACHE_HOME`` is unset)."""
    explicit = os.environ.get("CNNLENS_DATA")
    if explicit:
        return Path(explicit).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "cnnlens"


def clear_cache() -> None:
    """Forget every data set kept in memory by :func:`load` (e.g. after replacing files on disk)."""
    _CACHE.clear()


def load(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    transforms: Sequence[str | Callable[[Tensor], Tensor]] = (),
) -> ArrayDataset:
    """Load a registered data set.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets`.
    split : str
        ``"train"`` or ``"test"``.
    data_dir : path, optional
        Folder holding the standard files of file-based data sets, each in ``data_dir/<name>/``; defaults to
        :func:`default_data_dir`. Ignored by embedded data sets.
    transforms : sequence of str or callable
        Applied in order to the whole image tensor ``(N, C, H, W)`` at once. A string names a registered
        transform (``"pad32"``, ``"reverse-polarity"``, ``"normalize"``, see :func:`list_transforms`);
        a callable receives the image tensor and returns the new one.

    Returns
    -------
    ArrayDataset
        Untransformed data sets are cached in memory per (name, split, data folder), so loading again is
        immediate; the returned tensors are shared, treat them as read-only.

    Raises
    ------
    ValueError
        Unknown name, split or transform.
    cnnlens.DataUnavailableError
        Files missing and not downloadable; the message names the files and the folder to put them in.
    cnnlens.DataIntegrityError
        A file does not match its published checksum or is corrupt.
    """
    info = dataset_info(name)
    if split not in info.splits:
        raise ValueError(
            f"data set {name!r} has splits {', '.join(map(repr, info.splits))}; received split={split!r}."
        )
    if isinstance(transforms, str | bytes) or callable(transforms):
        raise TypeError(
            f"transforms must be a sequence of names or callables, e.g. ['pad32']; received {transforms!r}."
        )
    for transform in transforms:  # fail on a bad transform before reading any file
        if isinstance(transform, str):
            get_transform(transform)
        elif not callable(transform):
            raise TypeError(
                f"a transform must be a registered name or a callable images -> images; received {transform!r}."
            )
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    dataset = _load_raw(info, split, root)
    for position, transform in enumerate(transforms):
        dataset = _apply(dataset, transform, info, root, transforms[:position])
    return dataset


def _load_raw(info: DatasetInfo, split: str, root: Path) -> ArrayDataset:
    key = (info.name, split, str(root.resolve()) if info.needs_files else "")
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    dataset = info.loader(split, root)
    if dataset.images.element_size() * dataset.images.nelement() <= _CACHE_MAX_BYTES:
        _CACHE[key] = dataset
    return dataset


def _apply(
    dataset: ArrayDataset,
    transform: str | Callable[[Tensor], Tensor],
    info: DatasetInfo,
    root: Path,
    preceding: Sequence[str | Callable[[Tensor], Tensor]],
) -> ArrayDataset:
    if isinstance(transform, str):
        registered = get_transform(transform)
        ctx = TransformContext(
            dataset=info.name,
            split=dataset.split,
            train_images=lambda: load(info.name, "train", root, preceding).images,
        )
        return dataset.map_images(lambda images: registered(images, ctx))
    return dataset.map_images(transform)
