"""Structured receptive-field convolutions: RFConv2d and RFConv3d (001, sec. 3.3.3, Alg. 1, Fig. 4).

A filter is a learned linear combination of fixed basis functions, F = sum_m alpha_m phi_m (eq. 23 of 001). The
layer holds the basis (a buffer) and the coefficients alpha (out_channels x in_channels/groups x F), composes the
effective filters with one einsum and runs one convolution: by linearity this equals the paper's "basis convolution
followed by a 1x1 recombination" (eq. 24, Fig. 4) and is the faster of the two on CPU (``benchmarks/bench_rfconv.py``
measures both). ``to_conv()`` exports the layer to a plain ``nn.Conv2d`` / ``nn.Conv3d`` with the same output.

By default (``normalize=True``) each basis function is scaled to unit L2 norm inside the layer, so that |alpha|
measures a function's share of the effective filter whatever its order and scale (Fig. 5 of 001 compares |alpha|
across orders), and a first-order optimiser such as Adam moves the effective filter by a comparable amount per step
as it moves a free filter; ``normalize=False`` keeps the basis of :func:`~cnnlens.nn.bases.gaussian_derivative_basis`
as it is.

``basis="free"`` keeps the same factorised layer but makes the basis a learned parameter (the "NiN-refactor"
control of Table 2 of 001): one flag separates the effect of the Gaussian prior from that of the factorisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .bases import GaussianBasis, ZerothOrder, gaussian_derivative_basis

__all__ = ["RFConv2d", "RFConv3d", "export"]

BasisKind = Literal["gauss", "free"]
_Size = int | Sequence[int]


def _tuple(value: _Size, dim: int, name: str) -> tuple[int, ...]:
    out = (value,) * dim if isinstance(value, int) else tuple(value)
    if len(out) != dim or any(not isinstance(v, int) or v < 0 for v in out):
        raise ValueError(f"{name} must be a non-negative int or {dim} of them, got {value!r}")
    return out


class _BasisConvNd(nn.Module):
    """A convolution whose filters are learned combinations of a fixed filter stack (eqs. 23-24 of 001).

    The shared machinery of every structured layer (:class:`RFConv2d`, :class:`RFConv3d`,
    :class:`~cnnlens.nn.frames.FrameConv2d`): ``filters`` (F, *kernel_size) becomes the ``basis`` buffer (or, with
    ``learn_basis=True``, a parameter with the same norms and random directions), ``alpha`` (out_channels,
    in_channels / groups, F) the learned coefficients. With ``normalize=True`` each filter is scaled to unit L2 norm;
    ``basis_scale`` (F,) keeps the factor applied to each one (ones without normalisation), so that
    ``basis[f] = basis_scale[f] * filters[f]``.
    """

    _dim: int
    _conv = staticmethod(F.conv2d)
    _plain: type[nn.Module]

    def __init__(self, in_channels: int, out_channels: int, filters: torch.Tensor, *, stride: _Size = 1,
                 padding: _Size | None = None, dilation: _Size = 1, groups: int = 1, bias: bool = True,
                 normalize: bool = True, learn_basis: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible "
                             f"by groups ({groups})")
        dtype = filters.dtype
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = tuple(filters.shape[1:])
        self.stride = _tuple(stride, self._dim, "stride")
        self.padding = _tuple(self.kernel_size[0] // 2 if padding is None else padding, self._dim, "padding")
        self.dilation = _tuple(dilation, self._dim, "dilation")
        norms = filters.flatten(1).norm(dim=1)
        scale = 1.0 / norms if normalize else torch.ones_like(norms)
        self.register_buffer("basis_scale", scale, persistent=False)
        filters = filters * scale.view(-1, *([1] * self._dim))
        if learn_basis:
            free = torch.randn(filters.shape, dtype=dtype)
            unit = free / free.flatten(1).norm(dim=1).view(-1, *([1] * self._dim))
            self.basis = nn.Parameter(unit * filters.flatten(1).norm(dim=1).view(-1, *([1] * self._dim)))
        else:
            self.register_buffer("basis", filters)
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels // groups, filters.shape[0], dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters()

    @property
    def num_basis(self) -> int:
        """Number of basis functions each effective filter combines (F of eq. 23)."""
        return self.alpha.shape[2]

    def reset_parameters(self) -> None:
        """He initialisation of the effective filters: alpha ~ N(0, s^2) with s^2 = 2 / (fan-in * mean ||phi||^2),
        so that the effective filter has the variance of a Kaiming-normal filter of the same fan-in."""
        fan_in = self.alpha.shape[1]
        energy = self.basis.detach().flatten(1).pow(2).sum(1).mean()
        with torch.no_grad():
            self.alpha.normal_(0.0, math.sqrt(2.0 / (fan_in * self.num_basis * float(energy))))
            if self.bias is not None:
                self.bias.zero_()

    def effective_weight(self) -> torch.Tensor:
        """The effective filters sum_m alpha_m phi_m (eq. 23), as the weight of the equal plain convolution
        (out_channels, in_channels / groups, *kernel_size). The basis is flipped so that the layer convolves (as the
        paper's scale-space derivatives do, eq. 19) while PyTorch's convolution correlates."""
        flipped = self.basis.flip(tuple(range(1, self._dim + 1)))
        return torch.einsum("oif,f...->oi...", self.alpha, flipped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (self._dim + 1, self._dim + 2):
            axes = ", ".join("DHW"[3 - self._dim:])
            raise ValueError(f"{type(self).__name__} takes input of shape (N, C, {axes}) or (C, {axes}), got a "
                             f"tensor of rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-self._dim - 1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, got "
                             f"{x.shape[-self._dim - 1]} (input shape {tuple(x.shape)})")
        return self._conv(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation,
                          self.groups)

    def to_conv(self) -> nn.Module:
        """A plain ``nn.Conv2d`` / ``nn.Conv3d`` with the effective filters (eq. 24): the same function, no basis."""
        conv = self._plain(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                           padding=self.padding, dilation=self.dilation, groups=self.groups,
                           bias=self.bias is not None, dtype=self.alpha.dtype, device=self.alpha.device)
        with torch.no_grad():
            conv.weight.copy_(self.effective_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class _RFConvNd(_BasisConvNd):
    """Shared implementation of :class:`RFConv2d` and :class:`RFConv3d` (``_dim`` spatial axes)."""

    def __init__(self, in_channels: int, out_channels: int, order: int = 3, sigmas: float | Sequence[float] = 1.0,
                 *, size: int | None = None, k: float = 3.0, stride: _Size = 1, padding: _Size | None = None,
                 dilation: _Size = 1, groups: int = 1, bias: bool = True, basis: BasisKind = "gauss",
                 zeroth_order: ZerothOrder = "every", scale_normalized: bool = True, normalize: bool = True,
                 dtype: torch.dtype | None = None) -> None:
        if basis not in ("gauss", "free"):
            raise ValueError(f"basis must be 'gauss' (the fixed Gaussian-derivative basis) or 'free' (the same "
                             f"factorised layer with a learned basis), got {basis!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        gauss = gaussian_derivative_basis(order, sigmas, self._dim, size, k=k, zeroth_order=zeroth_order,
                                          scale_normalized=scale_normalized, dtype=dtype)
        super().__init__(in_channels, out_channels, gauss.filters, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, normalize=normalize,
                         learn_basis=basis == "free")
        self.order, self.basis_kind, self.k, self.scale_normalized = order, basis, float(k), scale_normalized
        self.orders, self.sigmas = gauss.orders, gauss.sigmas

    def gaussian_basis(self) -> GaussianBasis:
        """The layer's basis with its metadata (derivative orders and scale per function; with ``basis="free"`` the
        learned filters, labelled by the Gaussian derivatives they replaced)."""
        return GaussianBasis(self.basis.detach(), self.orders, self.sigmas, self.k, self.scale_normalized)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, order={self.order}, sigmas={self.sigmas_distinct}, "
                f"num_basis={self.num_basis}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, basis={self.basis_kind!r}")

    @property
    def sigmas_distinct(self) -> tuple[float, ...]:
        """The scales of the basis, each once."""
        return tuple(dict.fromkeys(self.sigmas))


class RFConv2d(_RFConvNd):
    """A structured receptive-field convolution on images (001, sec. 3.3.3, Fig. 4): effective 2-D filters
    sum_m alpha_m phi_m over the Gaussian-derivative basis of ``order`` at scales ``sigmas`` (eq. 23).

    Padding defaults to half the kernel size ("same" at stride 1). ``basis="free"`` learns the basis (Table 2's
    control). ``effective_weight()`` and ``to_conv()`` give the equal ``nn.Conv2d``.
    """

    _dim = 2
    _conv = staticmethod(F.conv2d)
    _plain = nn.Conv2d


class RFConv3d(_RFConvNd):
    """The volume version of :class:`RFConv2d` (3-D Gaussian derivatives; the MRI network of sec. 3.4.4 of 001)."""

    _dim = 3
    _conv = staticmethod(F.conv3d)
    _plain = nn.Conv3d


def export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every structured convolution (RFConv, FrameConv) replaced by its ``to_conv()``:
    plain PyTorch, the same function (to rounding), no basis. The original model is left as it is."""
    if isinstance(model, _BasisConvNd):
        return model.to_conv()
    out = copy.deepcopy(model)
    for child in list(out.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, _BasisConvNd):
                setattr(child, attr, sub.to_conv())
    return out
