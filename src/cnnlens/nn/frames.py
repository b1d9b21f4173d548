"""Frames as filter parametrisations: the spanning sets of sec. 4.3 and Fig. 9 of 001, their bounds and FrameConv2d.

A CNN filter is a combination of the pixel basis, W = sum_n w_n e_n; any frame {phi_m} of R^(k*k) spans the same
filters, W = sum_m w_m phi_m (eq. 24 of 001), so a frame changes the optimisation, not the function class: after
training the layer is a plain convolution again (``FrameConv2d.to_conv()``). The four frames of Fig. 9 for k x k
filters (arrays indexed ``[y, x]``, coordinates -k//2..k//2 with y pointing down):

- ``pixel``: the k*k unit impulses e_n (an orthonormal basis);
- ``gaussian``: Gaussian derivatives (eq. 20) at scale ``sigma``, sampled on the k x k grid. By default the k*k
  separable atoms G_{m_y, m_x} with m_y, m_x < k, by total order (for 3x3: all derivatives up to order 2 and G_xxy,
  G_xyy, G_xxyy). These are "the first 9 atoms" that span: on three samples the odd Hermite factor g_3 is a multiple
  of g_1 (both vanish at 0 and are odd), so the literal first nine of the N-jet (which hold G_xxx and not G_xxyy) are
  linearly dependent. ``order=n`` gives the full N-jet of all orders <= n instead (overcomplete and steerable,
  :mod:`cnnlens.nn.steering`);
- ``framelet``: the piecewise-linear B-spline framelets of Ron and Shen (ref. [81] of 001), the 9 outer products of
  h0 = [1, 2, 1] / 4, h1 = sqrt(2) / 4 [1, 0, -1] and h2 = [-1, 2, -1] / 4 (3x3 only);
- ``naive``: the monomials x^p y^q, p, q < k, on the grid (the frame of [73] "with no image properties in mind").

Frame bounds (eq. 7 of 001) are stated in two senses, see :func:`frame_bounds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .bases import _check_order, _hermite_factors, derivative_label, derivative_orders
from .rfconv import _BasisConvNd, _Size

__all__ = ["FRAMES", "Bounds", "Frame", "FrameBounds", "FrameConv2d", "frame", "frame_bounds", "frame_schedule"]

FRAMES = ("pixel", "gaussian", "framelet", "naive")
FrameName = Literal["pixel", "gaussian", "framelet", "naive"]
_SCHEDULES = {"pixel": ("pixel",), "image": ("gaussian", "framelet"), "naive": ("naive",),
              "gaussian": ("gaussian",), "framelet": ("framelet",)}
_FRAMELET_1D = np.array([[1.0, 2.0, 1.0], [math.sqrt(2.0), 0.0, -math.sqrt(2.0)], [-1.0, 2.0, -1.0]]) / 4.0


@dataclass(frozen=True)
class Frame:
    """A named stack of k x k filters (F, k, k) with one label per filter.

    ``orders`` and ``sigma`` are set for the Gaussian frame only: the derivative multi-index (m_y, m_x) of each
    filter and their common scale, which :func:`~cnnlens.nn.steering.steer_filter` needs.
    """

    name: str
    filters: torch.Tensor
    labels: tuple[str, ...]
    orders: tuple[tuple[int, int], ...] | None = None
    sigma: float | None = None

    def __len__(self) -> int:
        return self.filters.shape[0]

    @property
    def size(self) -> int:
        """The kernel size k."""
        return self.filters.shape[-1]


class Bounds(NamedTuple):
    """The optimal frame bounds A <= B of eq. 7 in one sense (see :func:`frame_bounds`)."""

    lower: float
    upper: float

    @property
    def tight(self) -> bool:
        """A = B (to 1e-9 relative): the frame preserves the norm up to the factor A."""
        return abs(self.upper - self.lower) <= 1e-9 * abs(self.upper)

    @property
    def positive(self) -> bool:
        """A > 0 (to 1e-10 relative to B): in the vector sense, the filters span R^(k*k)."""
        return self.lower > 1e-10 * self.upper


@dataclass(frozen=True)
class FrameBounds:
    """Both senses of eq. 7 for a filter stack: ``vector`` (the filters as vectors of R^(k*k)) and
    ``filter_bank`` (the undecimated convolution filter bank on l2(Z^2)); ``spans`` says whether the filters span
    R^(k*k) (the vector lower bound is positive)."""

    vector: Bounds
    filter_bank: Bounds
    spans: bool


def _check_size(size: int, smallest: int, name: str) -> None:
    if not isinstance(size, int | np.integer) or size % 2 == 0 or size < smallest:
        raise ValueError(f"the {name} frame needs an odd kernel size of at least {smallest}, got {size!r}")


def _grid(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) - size // 2


def _pixel(size: int) -> tuple[np.ndarray, list[str]]:
    coords = [(int(y), int(x)) for y in _grid(size) for x in _grid(size)]
    return np.eye(size * size).reshape(-1, size, size), [f"e({y},{x})" for y, x in coords]


def _gaussian(size: int, sigma: float, order: int | None) -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
    if not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number (a scale in pixels), got {sigma!r}")
    if order is None:
        multi = [m for m in derivative_orders(2 * (size - 1), 2) if max(m) < size]
    else:
        _check_order(order)
        multi = derivative_orders(order, 2)
    factors = _hermite_factors(max(max(m) for m in multi), float(sigma), size // 2, scale_normalized=True)
    index = np.array(multi)
    filters = np.einsum("fy,fx->fyx", factors[index[:, 0]], factors[index[:, 1]])
    return filters, [derivative_label(m, sigma) for m in multi], multi


def _separable(rows: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Every outer product rows[a] (along y) x rows[b] (along x), a and b in order."""
    n = len(rows)
    filters = np.einsum("ay,bx->abyx", rows, rows).reshape(n * n, rows.shape[1], rows.shape[1])
    return filters, [f"{names[a]}(y){names[b]}(x)" for a in range(n) for b in range(n)]


def frame(name: FrameName, size: int = 3, *, sigma: float = 1.0, order: int | None = None,
          dtype: torch.dtype = torch.float64) -> Frame:
    """One of the frames of Fig. 9 of 001 for ``size`` x ``size`` filters (see the module docstring).

    ``sigma`` and ``order`` apply to the Gaussian frame only (its scale; ``order=n`` for the N-jet of all orders
    <= n instead of the k*k separable atoms). Built in float64; ``dtype`` casts the returned copy.
    """
    if name not in FRAMES:
        raise ValueError(f"unknown frame {name!r}; the known frames are {', '.join(map(repr, FRAMES))}")
    orders = None
    if name == "pixel":
        _check_size(size, 1, name)
        filters, labels = _pixel(size)
    elif name == "gaussian":
        _check_size(size, 1, name)
        filters, labels, orders = _gaussian(size, sigma, order)
    elif name == "framelet":
        if size != 3:
            raise ValueError(f"the framelet frame (the piecewise-linear B-spline framelets of Ron and Shen) is 3x3: "
                             f"a kernel of size {size!r} is {'too small' if size < 3 else 'not covered'}; "
                             "pass size=3")
        filters, labels = _separable(_FRAMELET_1D, ["h0", "h1", "h2"])
    else:
        _check_size(size, 1, name)
        powers = np.stack([_grid(size) ** p for p in range(size)])
        filters, _ = _separable(powers, [str(p) for p in range(size)])
        labels = [f"x^{b} y^{a}" for a in range(size) for b in range(size)]
    return Frame(name, torch.tensor(filters, dtype=dtype), tuple(labels),
                 None if orders is None else tuple(orders), float(sigma) if orders is not None else None)


_named_frame = frame  # FrameConv2d's argument ``frame`` shadows the builder


def _vector_bounds(filters: torch.Tensor) -> Bounds:
    vectors = filters.detach().double().flatten(1)
    eig = torch.linalg.eigvalsh(vectors.T @ vectors)  # positive semi-definite: rounding below 0 is clipped
    return Bounds(max(float(eig[0]), 0.0), float(eig[-1]))


def frame_bounds(frame: Frame | torch.Tensor, *, grid: int = 256) -> FrameBounds:
    """The frame bounds A, B of eq. 7 of 001 for a filter stack (F, k, k), in both senses.

    ``vector``: the filters as vectors of R^(k*k); A and B are the extreme eigenvalues of the frame operator
    S = sum_f f f^T, since sum_f <x, f>^2 = x^T S x. ``filter_bank``: the filters as an undecimated convolution filter
    bank on l2(Z^2), where sum_f ||f * x||^2 = (2 pi)^-2 int sum_f |F_f(w)|^2 |X(w)|^2 dw, so A and B are the
    minimum and maximum of P(w) = sum_f |F_f(w)|^2, evaluated on a ``grid`` x ``grid`` frequency grid.

    .. math:: A \\|x\\|^2 \\le \\sum_f |\\langle x, f \\rangle|^2 \\le B \\|x\\|^2

    .. warning:: P is a trigonometric polynomial; its minimum and maximum on the grid are within O(1 / grid^2) of
       the true ones, and exact when P is constant (a tight filter bank).
    """
    filters = frame.filters if isinstance(frame, Frame) else frame
    if filters.dim() != 3:
        raise ValueError(f"frame_bounds takes a Frame or a filter stack of shape (F, k, k), got shape "
                         f"{tuple(filters.shape)}")
    vector = _vector_bounds(filters)
    spectrum = torch.fft.fft2(filters.detach().double(), s=(grid, grid)).abs().pow(2).sum(0)
    return FrameBounds(vector, Bounds(float(spectrum.min()), float(spectrum.max())), vector.positive)


def frame_schedule(kind: str, layers: int) -> tuple[str, ...]:
    """The frame of each of ``layers`` layers: ``"image"`` is Table 6's "Image Frame" of 001 (Gaussian derivatives
    and framelets alternating by layer, starting with Gaussian derivatives); ``"pixel"``, ``"naive"``,
    ``"gaussian"`` and ``"framelet"`` use one frame throughout."""
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown frame schedule {kind!r}; the known schedules are "
                         f"{', '.join(map(repr, _SCHEDULES))}")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    cycle = _SCHEDULES[kind]
    return tuple(cycle[i % len(cycle)] for i in range(layers))


class FrameConv2d(_BasisConvNd):
    """A 2-D convolution whose filters are learned coefficients over a fixed frame (eq. 24 of 001).

    ``frame`` is a name of :data:`FRAMES` (built by :func:`frame` at ``size``) or a :class:`Frame`. The frame must
    span R^(k*k), so that the layer can represent every k x k filter; otherwise a ValueError. The filters are used
    as defined (``normalize=False`` by default, so that :func:`frame_bounds` describes the layer's parametrisation);
    ``normalize=True`` scales each to unit norm as RFConv2d does. ``effective_weight()`` and ``to_conv()`` give the
    equal ``nn.Conv2d``: a frame only regularises training.
    """

    _dim = 2
    _conv = staticmethod(F.conv2d)
    _plain = nn.Conv2d

    def __init__(self, in_channels: int, out_channels: int, frame: FrameName | Frame = "framelet", size: int = 3,
                 *, stride: _Size = 1, padding: _Size | None = None, dilation: _Size = 1, groups: int = 1,
                 bias: bool = True, normalize: bool = False, dtype: torch.dtype | None = None) -> None:
        dtype = torch.get_default_dtype() if dtype is None else dtype
        chosen = frame if isinstance(frame, Frame) else _named_frame(frame, size)
        bounds = _vector_bounds(chosen.filters)
        if not bounds.positive:
            rank = int(torch.linalg.matrix_rank(chosen.filters.double().flatten(1)))
            raise ValueError(f"the {chosen.name!r} frame of {len(chosen)} filters of size {chosen.size}x{chosen.size} "
                             f"spans only {rank} of the {chosen.size ** 2} dimensions of R^(k*k) (smallest frame "
                             f"bound {bounds.lower:.3g}); the layer could not represent every filter. Use a frame "
                             "that spans, e.g. the 'gaussian' frame with order=None or a higher order")
        super().__init__(in_channels, out_channels, chosen.filters.to(dtype), stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, normalize=normalize)
        self.frame_name, self.labels = chosen.name, chosen.labels
        self.orders = chosen.orders
        self.sigmas = None if chosen.sigma is None else (chosen.sigma,) * len(chosen)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, frame={self.frame_name!r}, num_basis={self.num_basis}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, groups={self.groups}")
