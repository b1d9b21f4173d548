"""Textured blobs with their boundaries: the synthetic boundary-detection data of 001 sec. 4.4.2 (Fig. 10).

Each image holds one random smooth blob on a background. The target is the blob's contour. There are three cases,
as in the text:

- ``"I"``: binary (blob 1, background 0). The gradient magnitude finds the boundary.
- ``"II"``: blob and background filled with two different textures (scikit-image's ``brick`` and ``grass``, halved
  to 256 x 256, standing in for KTH-TIPS).
- ``"III"``: two textures that are hard to tell apart (``grass`` and ``gravel``). Both are standardised to the same
  mean and standard deviation, so that only their structure differs.

A blob is star-shaped, with radius ``r(phi) = r0 (1 + sum_k a_k cos(k phi + p_k))`` for k = 2..4 around a random
centre. The boundary is the set of blob pixels with a 4-neighbour outside it. Item ``i`` is drawn from
``numpy.random.default_rng((seed, i))``, so the first items of a larger set are those of a smaller one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BOUNDARY_CASES", "BoundaryData", "boundary_blobs"]

#: case -> (blob texture, background texture); None: a constant (case I)
BOUNDARY_CASES: dict[str, tuple[str | None, str | None]] = {
    "I": (None, None), "II": ("brick", "grass"), "III": ("grass", "gravel"),
}
_MEAN, _STD = 0.5, 0.15  # every texture is standardised to this mean and standard deviation
_TEXTURE_SCALE = 0.5  # the 512 x 512 textures are halved, so that a 64 x 64 image holds several texture periods


@dataclass(frozen=True)
class BoundaryData:
    """Images (N, 1, H, W) float32 in [0, 1], the blob masks and their boundaries (N, 1, H, W) bool."""

    images: torch.Tensor
    masks: torch.Tensor
    boundaries: torch.Tensor
    case: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


@functools.lru_cache(maxsize=4)
def _texture(name: str) -> np.ndarray:
    import skimage.data
    from skimage.transform import rescale
    from skimage.util import img_as_float

    image = rescale(img_as_float(getattr(skimage.data, name)()), _TEXTURE_SCALE, anti_aliasing=True)
    return (image - image.mean()) / image.std() * _STD + _MEAN


def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    centre = rng.uniform(0.35, 0.65, 2) * size
    r0 = rng.uniform(0.18, 0.28) * size
    k = np.arange(2, 5)
    amplitude, phase = rng.uniform(-0.15, 0.15, 3), rng.uniform(0, 2 * np.pi, 3)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    angle = np.arctan2(y - centre[0], x - centre[1])
    radius = r0 * (1 + (amplitude * np.cos(k * angle[..., None] + phase)).sum(-1))
    return np.hypot(y - centre[0], x - centre[1]) < radius


def _crop(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    texture = _texture(name)
    top, left = rng.integers(0, texture.shape[0] - size), rng.integers(0, texture.shape[1] - size)
    return texture[top:top + size, left:left + size]


def _boundary(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    outside = ~padded
    touches = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
    return mask & touches


def boundary_blobs(n: int, case: str = "I", size: int = 64, seed: int = 0) -> BoundaryData:
    """``n`` images of ``size`` x ``size`` pixels with one blob each, for boundary ``case`` "I", "II" or "III"."""
    if case not in BOUNDARY_CASES:
        raise ValueError(f"case must be one of {', '.join(BOUNDARY_CASES)} (001 sec. 4.4.2), got {case!r}")
    if not isinstance(n, int) or n < 1 or not isinstance(size, int) or not 16 <= size <= 256:
        raise ValueError(f"n must be a positive int and size an int in 16..256, got n={n!r}, size={size!r}")
    inside, outside = BOUNDARY_CASES[case]
    images, masks = np.empty((n, size, size)), np.empty((n, size, size), dtype=bool)
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        mask = _blob_mask(rng, size)
        if inside is None or outside is None:
            image = mask.astype(float)
        else:
            image = np.where(mask, _crop(rng, inside, size), _crop(rng, outside, size))
        images[i], masks[i] = np.clip(image, 0.0, 1.0), mask
    bounds = np.stack([_boundary(m) for m in masks])
    return BoundaryData(torch.as_tensor(images, dtype=torch.float32)[:, None], torch.as_tensor(masks)[:, None],
                        torch.as_tensor(bounds)[:, None], case)
