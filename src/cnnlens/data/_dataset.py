"""The in-memory data set every loader returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "SceneDataset", "class_counts", "stratified_indices", "stratified_subset"]


def class_counts(labels: Tensor, num_classes: int | None = None) -> list[int]:
    """Number of items of each class ``0 .. num_classes - 1`` (default: up to the largest label)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    size = int(labels.max()) + 1 if labels.numel() else 0
    return torch.bincount(labels, minlength=max(size, num_classes or 0)).tolist()


def stratified_indices(labels: Tensor, size: int, seed: int = 0) -> Tensor:
    """Indices of a class-stratified sample of ``size`` items, in their original order.

    Class ``c`` with ``n_c`` of the ``N`` items receives ``k_c`` items, ``floor(size n_c / N)`` plus one for the
    classes with the largest remainders (Hamilton's method, ties to the smaller class index), so that
    ``|k_c - size n_c / N| < 1`` and ``sum k_c = size``. Within a class the items are a uniform random choice
    drawn from ``torch.Generator().manual_seed(seed)``; the same ``(labels, size, seed)`` always give the same
    sample.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer tensor; received dtype {labels.dtype}.")
    total = int(labels.numel())
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= total:
        raise ValueError(f"size must be an int in [0, {total}] (the number of items); received {size!r}.")
    if total and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices; received a minimum of {int(labels.min())}.")
    counts = torch.bincount(labels.long()) if total else torch.zeros(0, dtype=torch.int64)
    exact = [size * int(n) / total for n in counts.tolist()] if total else []
    take = [int(q) for q in exact]
    by_remainder = sorted(range(len(exact)), key=lambda c: (-(exact[c] - take[c]), c))
    for c in by_remainder[: size - sum(take)]:
        take[c] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in enumerate(take):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=gen)
        chosen.append(members[order[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(chosen)).values


def stratified_subset(dataset: ArrayDataset, size: int | None, seed: int = 0) -> ArrayDataset:
    """A class-stratified random subset of ``size`` items: the only way cnnlens takes subsets of a data set.

    Per-class counts are proportional to the class shares of ``dataset`` and differ from the exact proportion by less
    than one item (:func:`stratified_indices`), so a subset of a split sorted by class (mnist5k) keeps every class.
    ``size=None`` or ``size == len(dataset)`` returns the data set itself.

    Parameters
    ----------
    dataset : ArrayDataset
        Any data set of :mod:`cnnlens.data` (its subclasses keep their extra per-item fields).
    size : int or None
        Number of items, at most ``len(dataset)``.
    seed : int
        Seed of the random choice within each class.
    """
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(
            f"stratified_subset takes a cnnlens.data.ArrayDataset (what cnnlens.data.load returns); received "
            f"{type(dataset).__name__}. Wrap tensors with ArrayDataset(images, labels, num_classes, name, split)."
        )
    if size is None or size == len(dataset):
        return dataset
    return dataset.subset(stratified_indices(dataset.labels, size, seed))


@dataclass(eq=False)
class ArrayDataset(Dataset[tuple[Tensor, Tensor]]):
    """A labelled image set held as two tensors.

    Parameters
    ----------
    images : Tensor
        float32 of shape ``(N, C, H, W)``; the raw loaders give values in ``[0, 1]`` (a ``"normalize"``
        transform may move them out of it).
    labels : Tensor
        int64 of shape ``(N,)`` with values in ``[0, num_classes)``.
    num_classes : int
        Number of classes of the task (a split may miss some of them).
    name : str
        Registry name of the data set, e.g. ``"mnist5k"``.
    split : str
        ``"train"`` or ``"test"``.

    Notes
    -----
    ``dataset[i]`` is ``(images[i], labels[i])``. :func:`cnnlens.data.load` caches data sets in memory and
    may hand the same tensors to several callers: treat them as read-only and derive new sets with
    :meth:`map_images` or :meth:`subset`, which never modify the original.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    split: str

    #: fields holding one image per item, mapped together by :meth:`map_images`
    _image_fields: ClassVar[tuple[str, ...]] = ("images",)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise TypeError(
                f"images must be a float32 tensor of shape (N, C, H, W); received "
                f"{_describe(self.images)}. Convert with torch.as_tensor(x, dtype=torch.float32)."
            )
        if not isinstance(self.labels, Tensor) or self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise TypeError(
                f"labels must be an int64 tensor of shape (N,); received {_describe(self.labels)}. "
                "Convert with torch.as_tensor(y, dtype=torch.int64)."
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and value.shape[0] != self.images.shape[0]:
                raise ValueError(
                    f"every per-item tensor needs {self.images.shape[0]} rows like images; "
                    f"{f.name} has shape {tuple(value.shape)}."
                )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}); received values in "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]. Check num_classes."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def map_images(self, fn: Callable[[Tensor], Tensor]) -> ArrayDataset:
        """Return a new data set whose image tensors are ``fn(images)`` (the whole batch at once).

        Subclasses with several aligned image tensors (e.g. :class:`SceneDataset`) map all of them.
        """
        changes = {}
        for field_name in self._image_fields:
            old = getattr(self, field_name)
            new = fn(old)
            if not isinstance(new, Tensor) or new.ndim != 4 or new.shape[0] != old.shape[0]:
                raise ValueError(
                    f"a transform must map images of shape (N, C, H, W) to a tensor with the same N; "
                    f"it turned {tuple(old.shape)} into {_describe(new)}."
                )
            changes[field_name] = new.to(torch.float32)
        return replace(self, **changes)

    def subset(self, indices: Sequence[int] | Tensor) -> ArrayDataset:
        """Return the items at ``indices`` (in that order) as a new data set of the same kind."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        if index.ndim != 1:
            raise ValueError(f"indices must be one-dimensional; received shape {tuple(index.shape)}.")
        if len(index) and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise IndexError(
                f"indices must lie in [-{len(self)}, {len(self)}) for a data set of {len(self)} items; received "
                f"values from {int(index.min())} to {int(index.max())}."
            )
        changes = {f.name: getattr(self, f.name)[index] for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **changes)

    def select_classes(self, classes: Sequence[int]) -> ArrayDataset:
        """The items of ``classes`` only, relabelled 0..len(classes)-1 in the order given (a smaller task)."""
        wanted = [int(c) for c in classes]
        if not wanted or len(set(wanted)) != len(wanted) or not all(0 <= c < self.num_classes for c in wanted):
            raise ValueError(f"classes must be distinct labels in [0, {self.num_classes}), got {list(classes)}")
        lookup = torch.full((self.num_classes,), -1, dtype=torch.int64)
        lookup[torch.tensor(wanted)] = torch.arange(len(wanted))
        kept = self.subset(torch.nonzero(lookup[self.labels] >= 0).flatten())
        return replace(kept, labels=lookup[kept.labels], num_classes=len(wanted))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )


@dataclass(eq=False, repr=False)
class SceneDataset(ArrayDataset):
    """Digits composited on background scenes, with the clean digit of every item kept alongside.

    Attributes
    ----------
    clean_images : Tensor
        The same digits without background, ``clean_images[i]`` is the digit inside ``images[i]``;
        transforms are applied to both tensors alike.
    scene_index : Tensor
        int64 ``(N,)``: which background scene (index into ``scene_names``) item ``i`` uses.
    scene_names : tuple of str
        Names of the scikit-image sample images used as backgrounds.
    """

    clean_images: Tensor
    scene_index: Tensor
    scene_names: tuple[str, ...] = ()

    _image_fields: ClassVar[tuple[str, ...]] = ("images", "clean_images")

    def __post_init__(self) -> None:
        if not isinstance(self.clean_images, Tensor) or self.clean_images.shape != self.images.shape:
            raise ValueError(
                f"clean_images must be a tensor of the same shape as images {tuple(self.images.shape)}; "
                f"received {_describe(self.clean_images)}."
            )
        if not isinstance(self.scene_index, Tensor) or self.scene_index.shape != self.labels.shape:
            raise ValueError(
                f"scene_index must be an int64 tensor of shape {tuple(self.labels.shape)}; "
                f"received {_describe(self.scene_index)}."
            )
        super().__post_init__()


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"an object of type {type(x).__name__}"
