"""The multi-scale Gaussian-derivative basis (the N-jet) of structured receptive fields (001, ch. 3, sec. 3.3.1).

A receptive field is a Taylor expansion of the image in scale space (eqs. 18-19 of 001): the responses to every
partial derivative of a Gaussian up to order M at scale sigma. Each derivative is a Hermite polynomial times the
Gaussian (eq. 20),

    g_m(x; sigma) = (-1 / (sigma sqrt 2))^m H_m(x / (sigma sqrt 2)) g(x; sigma),

and a d-dimensional filter is the product of one such 1-D factor per axis. The math lives here in NumPy and is
cached; :mod:`cnnlens.nn.rfconv` turns it into layers.

Normalisation (stated once, used everywhere): the sampled 1-D Gaussian ``g`` has unit sum on its support (so the
zero-order filter keeps the mean of the image, as ``scipy.ndimage.gaussian_filter`` does), and with
``scale_normalized=True`` (the default, as in the authors' RFNN code) the m-th derivative is multiplied by sigma^m,
Lindeberg's scale-normalised derivative, so that filters of different scales respond with comparable magnitudes.
Arrays are indexed ``[y, x]`` in 2-D and ``[z, y, x]`` in 3-D; derivative orders are given per axis in that order.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.polynomial import hermite

__all__ = ["MAX_ORDER", "GaussianBasis", "basis_count", "gaussian_derivative_basis", "kernel_size", "scale_schedule"]

MAX_ORDER = 4  # "orders beyond 4 do not carry information meaningful to visual perception" (sec. 3.3.1 of 001)
ZerothOrder = Literal["every", "smallest"]
_AXES = {1: "x", 2: "yx", 3: "zyx"}


@dataclass(frozen=True)
class GaussianBasis:
    """A stack of Gaussian-derivative filters with their metadata.

    ``filters`` has shape (F, *size); filter f is the derivative of order ``orders[f]`` (one entry per axis) at scale
    ``sigmas[f]``. The filters are the sampled functions themselves (not flipped): used as a convolution kernel, filter
    f gives the image's scale-space derivative of eq. 19.
    """

    filters: torch.Tensor
    orders: tuple[tuple[int, ...], ...]
    sigmas: tuple[float, ...]
    k: float
    scale_normalized: bool

    def __len__(self) -> int:
        return len(self.orders)

    @property
    def dim(self) -> int:
        """Number of spatial axes (2 for images, 3 for volumes)."""
        return self.filters.dim() - 1

    @property
    def total_orders(self) -> tuple[int, ...]:
        """The total derivative order |m| of each filter (0 for the Gaussian itself)."""
        return tuple(sum(m) for m in self.orders)

    @property
    def labels(self) -> tuple[str, ...]:
        """Readable names, e.g. ``G_xxy(1)`` for the third derivative d^3/dx^2 dy at sigma 1."""
        return tuple(derivative_label(m, s) for m, s in zip(self.orders, self.sigmas, strict=True))


def derivative_label(order: tuple[int, ...], sigma: float) -> str:
    """The name of one Gaussian derivative, x first: (1, 2) at sigma 1 (d^3 / dx^2 dy) is ``G_xxy(1)``."""
    axes = _AXES[len(order)]
    sub = "".join(a * n for a, n in reversed(list(zip(axes, order, strict=True))))
    return f"G{'_' + sub if sub else ''}({sigma:g})"


def kernel_size(sigma: float, k: float = 3.0) -> int:
    """The default odd kernel size 2 * ceil(k * sigma) + 1: the Gaussian truncated at k standard deviations."""
    return 2 * math.ceil(k * sigma) + 1


def derivative_orders(order: int, dim: int) -> list[tuple[int, ...]]:
    """Every partial-derivative multi-index of total order 0..``order`` in ``dim`` axes, by total order, then with
    the last axis (x) first: 2-D order 1 gives (0, 1) = G_x, (1, 0) = G_y."""
    out = []
    for total in range(order + 1):
        level = [m for m in itertools.product(range(total + 1), repeat=dim) if sum(m) == total]
        out.extend(sorted(level))
    return out


def basis_count(order: int, n_sigmas: int = 1, dim: int = 2, zeroth_order: ZerothOrder = "every") -> int:
    """Number of filters of the basis: C(order + dim, dim) derivatives per scale; with ``zeroth_order="smallest"``
    the Gaussian itself (order 0) only at the smallest scale. Table 1 of 001 counts its multi-scale RFNiN this way
    (sec. 3.4.1): 24, 54, 94, 144 filters for orders 1-4 over the schedule {1,2,4,8}, {1,2,4}, {1,2}, {1}."""
    _check_order(order)
    per_scale = math.comb(order + dim, dim)
    return per_scale * n_sigmas - (n_sigmas - 1 if zeroth_order == "smallest" else 0)


def scale_schedule(sigmas: Sequence[float], layers: int | None = None) -> tuple[tuple[float, ...], ...]:
    """The multi-scale schedule of sec. 3.4.1 of 001: all ``sigmas`` in the first layer, the largest one dropped after
    each pooling (each layer sees its own, coarser grid): (1, 2, 4, 8) gives (1, 2, 4, 8), (1, 2, 4), (1, 2), (1,)."""
    scales = tuple(sorted(float(s) for s in sigmas))
    layers = len(scales) if layers is None else layers
    if layers < 1 or layers > len(scales):
        raise ValueError(f"layers must be between 1 and the number of scales ({len(scales)}), got {layers}")
    return tuple(scales[: len(scales) - i] for i in range(layers))


def _check_order(order: int) -> None:
    if not isinstance(order, int | np.integer) or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in 0..{MAX_ORDER} (sec. 3.3.1 of 001), got {order!r}")


def _hermite_factors(order: int, sigma: float, radius: int, scale_normalized: bool) -> np.ndarray:
    """The 1-D factors g_0 .. g_order of eq. 20 on the grid -radius..radius, shape (order + 1, 2 * radius + 1)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    gauss = np.exp(-0.5 * (x / sigma) ** 2)
    gauss /= gauss.sum()
    u = x / (sigma * math.sqrt(2.0))
    factors = np.empty((order + 1, x.size))
    for m in range(order + 1):
        coef = np.zeros(m + 1)
        coef[m] = 1.0
        scale = (-1.0 / (sigma * math.sqrt(2.0))) ** m * (sigma**m if scale_normalized else 1.0)
        factors[m] = scale * hermite.hermval(u, coef) * gauss
    return factors


@functools.lru_cache(maxsize=256)
def _basis_array(order: int, sigmas: tuple[float, ...], dim: int, size: int, zeroth_order: str,
                 scale_normalized: bool) -> tuple[np.ndarray, tuple[tuple[int, ...], ...], tuple[float, ...]]:
    radius = size // 2
    multi = derivative_orders(order, dim)
    blocks, orders, scales = [], [], []
    for i, sigma in enumerate(sigmas):
        keep = [m for m in multi if sum(m) > 0 or zeroth_order == "every" or i == 0]
        factors = _hermite_factors(order, sigma, radius, scale_normalized)
        # the outer product of one 1-D factor per axis, for all multi-indices at once
        index = np.array(keep).T  # (dim, F)
        block = factors[index[0]]
        for axis in range(1, dim):
            block = block[..., None] * factors[index[axis]].reshape((len(keep),) + (1,) * axis + (size,))
        blocks.append(block)
        orders.extend(keep)
        scales.extend([sigma] * len(keep))
    array = np.concatenate(blocks)
    array.setflags(write=False)
    return array, tuple(orders), tuple(scales)


def gaussian_derivative_basis(order: int, sigmas: float | Sequence[float], dim: int = 2, size: int | None = None, *,
                              k: float = 3.0, zeroth_order: ZerothOrder = "every", scale_normalized: bool = True,
                              dtype: torch.dtype = torch.float64) -> GaussianBasis:
    """The multi-scale N-jet of eqs. 5 and 19-20 of 001: every partial derivative up to ``order`` (0..4) at each
    scale in ``sigmas``, analytic (Hermite polynomial times a Gaussian).

    ``size`` is the odd kernel size; by default 2 * ceil(k * max(sigmas)) + 1 (the Gaussian truncated at ``k``
    standard deviations), and it may not be smaller than that. ``dim=3`` gives volume filters (the MRI case of
    sec. 3.4.4). ``zeroth_order="smallest"`` keeps the plain Gaussian only at the smallest scale (the count of
    Table 1). Filters are ordered by scale, then total order, then multi-index; see :class:`GaussianBasis` for the
    normalisation and the metadata. Built in float64 and cached; ``dtype`` casts the returned copy.
    """
    _check_order(order)
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3 (signals, images or volumes), got {dim!r}")
    scales = (sigmas,) if isinstance(sigmas, int | float) else tuple(sigmas)
    if not scales:
        raise ValueError("sigmas must name at least one scale, e.g. sigmas=(1.0,) or sigmas=(1, 2, 4, 8)")
    for s in scales:
        if not isinstance(s, int | float | np.floating) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"every sigma must be a positive finite number (a scale in pixels), got {s!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"sigmas must be distinct, got {scales}")
    if zeroth_order not in ("every", "smallest"):
        raise ValueError(f"zeroth_order must be 'every' or 'smallest', got {zeroth_order!r}")
    if k <= 0 or not math.isfinite(k):
        raise ValueError(f"k (the truncation in standard deviations) must be positive, got {k!r}")
    scales = tuple(sorted(float(s) for s in scales))
    support = kernel_size(scales[-1], k)
    if size is None:
        size = support
    elif not isinstance(size, int) or size % 2 == 0 or size < support:
        raise ValueError(f"size must be an odd integer of at least {support} (2 * ceil(k * sigma) + 1 for sigma = "
                         f"{scales[-1]:g}, k = {k:g}), got {size!r}; pass a larger size, or a smaller k to truncate "
                         "the Gaussian earlier")
    array, orders, per_filter = _basis_array(int(order), scales, dim, size, zeroth_order, scale_normalized)
    return GaussianBasis(torch.tensor(array, dtype=dtype), orders, per_filter, float(k), scale_normalized)
