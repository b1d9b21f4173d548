"""``mnist5k-scenes``: the mnist5k digits composited on ten natural background scenes (003 sec. 3, Fig. 8).

Kuo's RECOS paper (003, sec. 3 and Fig. 8) enlarges MNIST "by adding ten different background scenes to the
original handwritten digits" but does not say how they are combined or which scenes. Here:

- **Scenes**: ten sample images that ship with scikit-image (:data:`SCENE_NAMES`), converted to grey
  levels in [0, 1] and rescaled (anti-aliased) so that the shorter side is :data:`SCENE_SIDE` = 112 pixels,
  so a 28 x 28 crop covers a quarter of the scene's height and holds visible structure.
- **Crops**: item ``i`` of a split uses scene ``i % 10``; the top-left corner of its 28 x 28 crop is drawn
  uniformly from a generator seeded with ``(SCENES_SEED, split)`` (split 0 = train, 1 = test), so every run
  gives the same images.
- **Compositing**: the digit is laid over the background with its own intensity as opacity (white ink,
  alpha = digit): ``x = d + (1 - d) * b`` for digit ``d`` and background ``b`` in [0, 1]. Stroke pixels
  (d = 1) keep the digit, empty pixels (d = 0) show the scene, and the result stays in [0, 1].

The split is mnist5k's (4,000 / 1,000, same order and labels); ``clean_images`` holds the digit of every
item without its background.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ._dataset import SceneDataset
from ._registry import load, register_dataset

__all__ = ["SCENES_SEED", "SCENE_NAMES", "SCENE_SIDE", "composite", "scene_images"]

SCENE_NAMES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "moon", "coins",
)
SCENE_SIDE = 112
SCENES_SEED = 0
_PATCH = 28


@functools.lru_cache(maxsize=1)
def scene_images() -> tuple[np.ndarray, ...]:
    """The ten background scenes as float64 grey images in [0, 1], shorter side :data:`SCENE_SIDE`."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import rescale
    from skimage.util import img_as_float

    scenes = []
    for name in SCENE_NAMES:
        image = img_as_float(getattr(skimage.data, name)())
        grey = rgb2gray(image) if image.ndim == 3 else image
        small = rescale(grey, SCENE_SIDE / min(grey.shape), anti_aliasing=True)
        scenes.append(np.clip(small, 0.0, 1.0))
    return tuple(scenes)


def composite(digits: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """Lay white digits over backgrounds with the digit intensity as opacity: ``d + (1 - d) * b``.

    Both tensors hold values in [0, 1] and have the same shape; so does the result.
    """
    if digits.shape != backgrounds.shape:
        raise ValueError(
            f"digits and backgrounds must have the same shape; received {tuple(digits.shape)} and "
            f"{tuple(backgrounds.shape)}."
        )
    return digits + (1.0 - digits) * backgrounds


def _background_crops(count: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(crops float64 (count, 28, 28), scene index (count,)) for the items of ``split``, in order."""
    rng = np.random.default_rng((SCENES_SEED, 0 if split == "train" else 1))
    scene_index = np.arange(count) % len(SCENE_NAMES)
    crops = np.empty((count, _PATCH, _PATCH))
    for s, scene in enumerate(scene_images()):
        members = np.flatnonzero(scene_index == s)
        rows = rng.integers(0, scene.shape[0] - _PATCH + 1, size=len(members))
        cols = rng.integers(0, scene.shape[1] - _PATCH + 1, size=len(members))
        crops[members] = sliding_window_view(scene, (_PATCH, _PATCH))[rows, cols]
    return crops, scene_index


@register_dataset(
    "mnist5k-scenes",
    num_classes=10,
    description="mnist5k digits over 28x28 crops of 10 scikit-image scenes (x = d + (1 - d) b); "
    "keeps the clean digits",
)
def _load_mnist5k_scenes(split: str, data_dir: Path) -> SceneDataset:
    digits = load("mnist5k", split)
    crops, scene_index = _background_crops(len(digits), split)
    backgrounds = torch.from_numpy(crops).to(torch.float32).unsqueeze(1)
    return SceneDataset(
        images=composite(digits.images, backgrounds),
        labels=digits.labels,
        num_classes=10,
        name="mnist5k-scenes",
        split=split,
        clean_images=digits.images,
        scene_index=torch.from_numpy(scene_index.astype(np.int64)),
        scene_names=SCENE_NAMES,
    )
