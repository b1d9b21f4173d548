"""Linear interpolation in the feature domain, mapped back to images by the exact inverse (001 sec. 6.4.2,
Fig. 20):

    phi_t = t Phi x0 + (1 - t) Phi x1,     x_t = Phi^{-1} phi_t.

"Those interpolations correspond to existing images as Phi^{-1} is an exact inverse"; a linear path in the feature
space is not a linear path in the image space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ._features import check_finite, evaluating, model_dtype, representation
from ._reconstruction import check_invertible

__all__ = ["Interpolation", "interpolate"]


@dataclass(frozen=True)
class Interpolation:
    """The path x_t for t from 1 (x0, left in Fig. 20) to 0 (x1, right), and the pixel-space linear path
    t x0 + (1 - t) x1 at the same t for comparison."""

    t: np.ndarray
    images: Tensor
    pixel_path: Tensor


def _single(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be one floating-point image tensor (C, H, W) or (1, C, H, W).")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"{name} must be one image (C, H, W) or (1, C, H, W); received shape {tuple(x.shape)}.")
    check_finite(x, name)
    return x


def interpolate(model: nn.Module, x0: Tensor, x1: Tensor, steps: int) -> Interpolation:
    """x_t = Phi^{-1}(t Phi x0 + (1 - t) Phi x1) at ``steps`` values of t evenly spaced from 1 down to 0 (Fig. 20 of
    001): ``images[0]`` reconstructs x0 and ``images[-1]`` x1."""
    check_invertible(model)
    x0, x1 = _single(x0, "x0"), _single(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape; received {tuple(x0.shape)} and {tuple(x1.shape)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (the two end points included); received {steps!r}.")
    dtype = model_dtype(model)
    t = np.linspace(1.0, 0.0, steps)
    with evaluating(model):
        phi = representation(model, torch.stack([x0, x1]).to(dtype))
        weights = torch.as_tensor(t, dtype=phi.dtype).reshape(-1, *([1] * (phi.dim() - 1)))
        path = weights * phi[0:1] + (1 - weights) * phi[1:2]
        images = model.inverse(path)
    w = torch.as_tensor(t, dtype=dtype).reshape(-1, 1, 1, 1)
    return Interpolation(t, images, w * x0.to(dtype) + (1 - w) * x1.to(dtype))
