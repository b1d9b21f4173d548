"""Registered image transforms, applied to a whole image tensor at once.

A registered transform is a function ``fn(images, ctx) -> images`` on a float32 tensor of shape
``(N, C, H, W)``; ``ctx`` (:class:`TransformContext`) says which data set and split are transformed and gives
lazy access to the train split, so a transform may use data-set statistics (``"normalize"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Transform",
    "TransformContext",
    "get_transform",
    "list_transforms",
    "normalize",
    "pad32",
    "register_transform",
    "reverse_polarity",
]


@dataclass(frozen=True)
class TransformContext:
    """What a registered transform may know besides the images.

    Attributes
    ----------
    dataset : str
        Registry name of the data set being transformed.
    split : str
        Split being transformed.
    train_images : Callable[[], Tensor]
        Returns the images of the *train* split of the same data set after the transforms that precede this
        one in the list given to :func:`cnnlens.data.load` (computed on demand, only by transforms that need
        statistics).
    """

    dataset: str
    split: str
    train_images: Callable[[], Tensor]


Transform = Callable[[Tensor, TransformContext], Tensor]

_TRANSFORMS: dict[str, Transform] = {}


def register_transform(name: str) -> Callable[[Transform], Transform]:
    """Register ``fn(images, ctx) -> images`` under ``name`` (decorator); duplicate names are rejected."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a transform name must be a non-empty string; received {name!r}.")

    def decorator(fn: Transform) -> Transform:
        if name in _TRANSFORMS:
            raise ValueError(
                f"a transform named {name!r} is already registered; choose another name "
                f"(registered: {', '.join(sorted(_TRANSFORMS))})."
            )
        _TRANSFORMS[name] = fn
        return fn

    return decorator


def get_transform(name: str) -> Transform:
    """The registered transform called ``name``; a ValueError lists the registered names otherwise."""
    try:
        return _TRANSFORMS[name]
    except KeyError:
        raise ValueError(
            f"unknown transform {name!r}; registered transforms: {', '.join(list_transforms())}. "
            "Pass a callable images -> images, or register one with cnnlens.data.register_transform."
        ) from None


def list_transforms() -> list[str]:
    """Names of the registered transforms, sorted."""
    return sorted(_TRANSFORMS)


@register_transform("pad32")
def pad32(images: Tensor, ctx: TransformContext | None = None) -> Tensor:
    """Zero-pad every image to 32 x 32, centred (28 x 28 MNIST -> 2 pixels each side), as LeNet-5 expects.

    When the size difference is odd the extra row/column goes to the bottom/right. Images larger than 32
    pixels on a side raise a ValueError.
    """
    h, w = images.shape[-2:]
    if h > 32 or w > 32:
        raise ValueError(
            f"pad32 pads images up to 32 x 32 but received images of size {h} x {w}; "
            "crop or resize them first, or leave pad32 out."
        )
    top, left = (32 - h) // 2, (32 - w) // 2
    return F.pad(images, (left, 32 - w - left, top, 32 - h - top), value=0.0)


@register_transform("reverse-polarity")
def reverse_polarity(images: Tensor, ctx: TransformContext | None = None) -> Tensor:
    """Grey-scale reversal ``x -> 1 - x`` of images in [0, 1] (the reversed test set of 003 sec. 2, Fig. 5)."""
    return 1.0 - images


@register_transform("normalize")
def normalize(images: Tensor, ctx: TransformContext) -> Tensor:
    """Standardise each channel with the mean and standard deviation of the data set's *train* split.

    The statistics are computed over all train images and pixels of a channel (population std), after the
    transforms listed before ``"normalize"``; the same values are used for the test split, so both splits
    share one affine map ``x -> (x - mean_c) / std_c``.
    """
    reference = ctx.train_images().to(torch.float64)
    mean = reference.mean(dim=(0, 2, 3), keepdim=True)
    std = reference.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    if bool((std == 0).any()):
        raise ValueError(
            f"cannot normalize {ctx.dataset!r}: a channel of its train split is constant (std 0)."
        )
    return ((images.to(torch.float64) - mean) / std).to(torch.float32)
