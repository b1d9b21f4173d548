"""Multidimensional convolutions along space and learned attributes (001 ch. 5, eqs. 31, 33, 35 and 37).

A layer of a Hierarchical Attribute CNN is an array ``x_j(u, v)`` whose channel index is replaced by ordered
attribute axes; PyTorch layout ``(batch, *attributes, H, W)``. :class:`AttributeConv` is the multidimensional
convolution of eq. 31 along ``(u, v)`` that appends the new attribute ``v_j`` indexing its filters ``w_{v_j}``
(eq. 33), optionally after the marginal sum along the first attribute (the filter that does not depend on
``v_{j-3}``, eq. 35). :class:`FactorisedAttributeConv` is the training form of sec. 5.4.2: ``Q`` separable filters
``w_{v_j}(u, v) = sum_q h_{j,q}(u) g_{v_j,q}(v)`` (eq. 37), with the intermediate normalisation of
``x_{j-1} * h_{j,q}`` before the sum over ``q`` and, for the (+) variant, an intermediate nonlinearity.

Both are mapped onto ``conv2d`` calls by folding the attribute axes into the channels (no Python loop over
attribute positions): a convolution along the attributes is a banded matrix over the folded attribute positions,
built from the filters by one einsum with fixed 0/1 selection tensors (which carry the subsampling and the
boundary), and becomes the channel mixing of the ``conv2d`` (its ``k x k`` spatial part for eq. 31, a ``1 x 1``
convolution for the ``g`` of eq. 37, whose ``h`` is a ``conv2d`` with the attribute positions folded into the
batch). Every convolution is subsampled by ``spatial_stride`` (``2^{s_j}``) along
``u`` and by ``attribute_stride`` (2) along every convolved attribute, and each axis has a zero or a periodic
boundary (sec. 5.3: "both cases give similar accuracies"; periodic ones make Prop. 5.3.1 exact).

Convention: like ``torch.nn.Conv2d`` the layers compute cross-correlations, ``sum_k z(n + k - p) w(k)`` with
``p = (size - 1) / 2``, i.e. eq. 31 with the filter flipped (a relabelling of learned filters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["AttributeConv", "Boundary", "FactorisedAttributeConv", "Intermediate", "attribute_pad"]

Boundary = Literal["zero", "periodic"]
#: the normalisation of ``x_{j-1} * h_{j,q}`` (sec. 5.4.2): one mean and deviation per q ("channel", covariant), a
#: mean array per (q, u, v) position ("position": the literal reading of "a mean array m_{j,q}", not covariant),
#: or none
Intermediate = Literal["channel", "position", "none"]
_BOUNDARIES = ("zero", "periodic")


def attribute_pad(z: Tensor, dim: int, pad: int, boundary: str) -> Tensor:
    """Extend ``z`` by ``pad`` entries on both sides of axis ``dim``, with zeros or periodically."""
    if pad == 0:
        return z
    if boundary == "periodic":
        n = z.shape[dim]
        return torch.cat([z.narrow(dim, n - pad, pad), z, z.narrow(dim, 0, pad)], dim)
    shape = list(z.shape)
    shape[dim] = pad
    zeros = z.new_zeros(shape)
    return torch.cat([zeros, z, zeros], dim)


def _selection(n: int, k: int, stride: int, boundary: str) -> Tensor:
    """``S[i, o, m] = 1`` where tap ``i`` of output ``o`` reads input ``m = stride o + i - k // 2`` (modulo n for a
    periodic boundary, dropped outside for a zero one): ``(k, n / stride, n)``. Periodic taps that wrap onto the
    same input add up."""
    sel = torch.zeros(k, n // stride, n, dtype=torch.float64)
    for i in range(k):
        for o in range(n // stride):
            m = stride * o + i - k // 2
            if boundary == "periodic":
                sel[i, o, m % n] += 1
            elif 0 <= m < n:
                sel[i, o, m] = 1
    return sel


def _boundaries(boundary: str | Sequence[str], count: int) -> tuple[str, ...]:
    values = (boundary,) * count if isinstance(boundary, str) else tuple(boundary)
    if len(values) != count or any(b not in _BOUNDARIES for b in values):
        raise ValueError(f"boundary must be 'zero', 'periodic' or one of them per convolved axis (the attribute "
                         f"axes, then u: {count} entries); got {boundary!r}")
    return values


class _Geometry(nn.Module):
    """Shapes, strides and boundaries shared by the two layer forms, validated at construction."""

    def __init__(self, in_attributes: Sequence[int], out_features: int, attribute_kernel: Sequence[int],
                 spatial_kernel: int, spatial_stride: int, attribute_stride: int, marginal: bool,
                 boundary: str | Sequence[str]) -> None:
        super().__init__()
        self.in_attributes = tuple(int(n) for n in in_attributes)
        self.marginal = bool(marginal)
        conv = self.in_attributes[1:] if self.marginal else self.in_attributes
        if not 1 <= len(conv) <= 2:
            raise ValueError(f"an attribute convolution convolves 1 or 2 attribute axes (after the marginal sum of "
                             f"eq. 35 when marginal=True); in_attributes={self.in_attributes}, marginal={marginal}")
        self.conv_attributes = conv
        self.attribute_kernel = tuple(int(k) for k in attribute_kernel)
        if len(self.attribute_kernel) != len(conv):
            raise ValueError(f"attribute_kernel needs one size per convolved attribute axis {conv}; got "
                             f"{self.attribute_kernel}")
        self.spatial_kernel, self.spatial_stride = int(spatial_kernel), int(spatial_stride)
        self.attribute_stride, self.out_features = int(attribute_stride), int(out_features)
        for name, k in (("spatial_kernel", self.spatial_kernel), *(("attribute_kernel", k)
                                                                   for k in self.attribute_kernel)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} sizes must be odd (centred supports); got {k}")
        for n, k in zip(conv, self.attribute_kernel, strict=True):
            if k // 2 >= n:  # taps at offsets >= n never meet a value (zero) or wrap more than once (periodic)
                raise ValueError(f"an attribute support of {k} reaches beyond an attribute axis of {n} values "
                                 f"(half-support {k // 2} >= {n}): K is too small for the supports; raise the "
                                 f"width K or shrink attribute_kernel")
            if n % self.attribute_stride:
                raise ValueError(f"attribute axis of {n} values does not divide by the attribute subsampling "
                                 f"{self.attribute_stride}; use a width K divisible by 4")
        if self.out_features < 1 or self.spatial_stride < 1 or self.attribute_stride < 1:
            raise ValueError("out_features and the strides must be positive")
        self.boundary = _boundaries(boundary, len(conv) + 1)
        self.out_attributes = tuple(n // self.attribute_stride for n in conv) + (self.out_features,)
        for i, (n, k, b) in enumerate(zip(conv, self.attribute_kernel, self.boundary[:-1], strict=True)):
            self.register_buffer(f"select{i}", _selection(n, k, self.attribute_stride, b), persistent=False)

    def _selections(self) -> list[Tensor]:
        return [getattr(self, f"select{i}") for i in range(len(self.conv_attributes))]

    def _toeplitz(self, filters: Tensor) -> Tensor:
        """The convolution along the attributes as a matrix: ``filters`` ``(F, C, *attribute_kernel, *rest)`` ->
        ``(prod(A') F, prod(A) C, *rest)``, rows ordered (output attributes, v_j), columns (input attributes, c)."""
        sel = [s.to(filters.dtype) for s in self._selections()]
        if len(sel) == 1:
            t = torch.einsum("fci...,iAa->Afac...", filters, sel[0])
        else:
            t = torch.einsum("fcij...,iAa,jBb->ABfabc...", filters, sel[0], sel[1])
        n = len(sel)
        return t.flatten(n + 1, 2 * n + 1).flatten(0, n)

    def _check(self, x: Tensor) -> None:
        rank = 3 + len(self.in_attributes)
        if x.ndim != rank or tuple(x.shape[1:-2]) != self.in_attributes:
            raise ValueError(f"{type(self).__name__} expects (batch, *attributes {self.in_attributes}, H, W), a "
                             f"rank-{rank} tensor; got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"spatial size {h}x{w} does not divide by the spatial subsampling "
                             f"{self.spatial_stride}; crop or pad the images")
        if self.boundary[-1] == "periodic" and min(h, w) < self.spatial_kernel // 2:
            raise ValueError(f"spatial size {h}x{w} is smaller than the periodic padding of a "
                             f"{self.spatial_kernel}x{self.spatial_kernel} support")

    def _marginal(self, x: Tensor) -> Tensor:
        """The marginal sum along the first attribute (the constant filter along ``v_{j-3}`` of eq. 35)."""
        return x.sum(1) if self.marginal else x

    def _pad_space(self, z: Tensor) -> Tensor:
        p = self.spatial_kernel // 2
        return attribute_pad(attribute_pad(z, -2, p, self.boundary[-1]), -1, p, self.boundary[-1])

    def free_parameters(self) -> int:
        """Entries of the equivalent filters ``w_{v_j}(u, v)``: out_features x spatial support x attribute support."""
        return self.out_features * self.spatial_kernel ** 2 * math.prod(self.attribute_kernel)

    def extra_repr(self) -> str:
        return (f"in_attributes={self.in_attributes}, out_attributes={self.out_attributes}, "
                f"attribute_kernel={self.attribute_kernel}, spatial_kernel={self.spatial_kernel}, "
                f"spatial_stride={self.spatial_stride}, marginal={self.marginal}, boundary={self.boundary}")


class AttributeConv(_Geometry):
    """The multidimensional convolution along ``(u, v)`` of eqs. 31 and 33 (with eq. 35's marginal sum).

    .. math::

        y(u, v, v_j) = \\sum_{(u', v') \\in S} z(2^{s_j} u + u', 2 v + v')\\, w_{v_j}(u', v') + b_{v_j},
        \\qquad z = \\sum_{v_{j-3}} x_{j-1} \\text{ (when ``marginal``)}

    Parameters
    ----------
    in_attributes : sizes of the input's attribute axes (e.g. ``(K/4, K/2, K)``).
    out_features : number of filters ``w_{v_j}``, the size of the new attribute axis ``v_j``.
    attribute_kernel : support of ``w`` along each convolved attribute (e.g. ``(7, 11)``), odd sizes.
    spatial_kernel : support along each spatial axis (3).
    spatial_stride : subsampling ``2^{s_j}`` along u; attribute_stride : subsampling along the attributes (2).
    marginal : sum the first attribute axis out first (eq. 35).
    boundary : ``"zero"``, ``"periodic"`` or one per convolved axis (attribute axes, then u).

    Shapes: ``(B, *in_attributes, H, W) -> (B, *out_attributes, H / 2^{s_j}, W / 2^{s_j})`` with
    ``out_attributes = (n / 2 for the convolved axes) + (out_features,)``. Weight: ``(F, *attribute_kernel, k, k)``.
    """

    def __init__(self, in_attributes: Sequence[int], out_features: int, attribute_kernel: Sequence[int], *,
                 spatial_kernel: int = 3, spatial_stride: int = 1, attribute_stride: int = 2,
                 marginal: bool = False, boundary: str | Sequence[str] = "zero", bias: bool = True) -> None:
        super().__init__(in_attributes, out_features, attribute_kernel, spatial_kernel, spatial_stride,
                         attribute_stride, marginal, boundary)
        k = self.spatial_kernel
        fan_in = k * k * math.prod(self.attribute_kernel)
        self.weight = nn.Parameter(torch.randn(self.out_features, *self.attribute_kernel, k, k) / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        z = self._marginal(x)
        b = z.shape[0]
        weight = self._toeplitz(self.weight.unsqueeze(1))  # (prod(A') F, prod(A), k, k)
        out = F.conv2d(self._pad_space(z.reshape(b, -1, *z.shape[-2:])), weight, None, self.spatial_stride)
        out = out.reshape(b, *self.out_attributes, *out.shape[-2:])
        if self.bias is not None:
            out = out + self.bias.view(-1, 1, 1)
        return out


class _PositionStandardise(nn.Module):
    """Standardise ``(N, P, Q, H, W)`` responses with a mean array ``m_{j,q}(u, v)`` (one mean per attribute and
    spatial position, over the batch) and one deviation per q: the literal reading of sec. 5.4.2. The mean array is
    shaped at the first training batch. Not covariant to translations along (u, v): see Prop. 5.3.1."""

    def __init__(self, q: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(0))
        self.register_buffer("running_var", torch.ones(q))

    def forward(self, y: Tensor) -> Tensor:
        if self.training:
            mean = y.mean(0)
            var = (y - mean).pow(2).mean((0, 1, 3, 4))
            with torch.no_grad():
                if self.running_mean.shape != mean.shape:
                    self.running_mean = mean.detach().clone()
                else:
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            if self.running_mean.shape != y.shape[1:]:
                raise ValueError(f"the mean array was estimated for responses {tuple(self.running_mean.shape)}, "
                                 f"got {tuple(y.shape[1:])}; train (or set running_mean) at this input size first")
            mean, var = self.running_mean, self.running_var
        return (y - mean) / torch.sqrt(var + self.eps).view(-1, 1, 1)


class FactorisedAttributeConv(_Geometry):
    """The factorised training form of sec. 5.4.2 (eq. 37): ``Q`` separable filters with an intermediate
    normalisation, ``W_j = W^g_j W^h_j``.

    .. math::

        \\tilde x_{j,q} = \\frac{z \\star h_{j,q} - m_{j,q}}{\\sigma_{j,q}}, \\qquad
        y(u, v, v_j) = \\sum_{q=1}^{Q} \\tilde x_{j,q} \\star g_{v_j,q}(2^{s_j} u, 2 v) + b_{v_j}

    ``h_{j,q}(u)`` (``h``: ``(Q, k, k)``) convolves every attribute slice along u (one conv2d, attributes folded
    into the batch); ``g_{v_j,q}(v)`` (``g``: ``(F, Q, *attribute_kernel)``) sums the Q responses convolved along
    the attributes (one conv1d / conv2d, space folded into the batch). Without intermediate nonlinearity and
    normalisation this is :class:`AttributeConv` with ``w_{v_j} = sum_q h_{j,q} g_{v_j,q}``
    (:meth:`to_attribute_conv`); ``plus=True`` is the (+) variant ``rho(W^g rho(W^h x))`` (a learned bias and ELU
    after the normalisation), which has no such equivalent. ``Q >= k^2`` represents every ``w`` of spatial support
    ``k x k`` (:meth:`from_attribute_conv`; the rank bound of sec. 5.4.2).

    Parameters as :class:`AttributeConv`, plus ``q`` (Q), ``plus`` and ``intermediate`` (see :data:`Intermediate`).
    """

    def __init__(self, in_attributes: Sequence[int], out_features: int, attribute_kernel: Sequence[int], *,
                 q: int, spatial_kernel: int = 3, spatial_stride: int = 1, attribute_stride: int = 2,
                 marginal: bool = False, boundary: str | Sequence[str] = "zero", bias: bool = True,
                 plus: bool = False, intermediate: Intermediate = "channel") -> None:
        super().__init__(in_attributes, out_features, attribute_kernel, spatial_kernel, spatial_stride,
                         attribute_stride, marginal, boundary)
        if q < 1:
            raise ValueError(f"q (the number Q of separable filters of eq. 37) must be positive; got {q}")
        if intermediate not in ("channel", "position", "none"):
            raise ValueError(f"intermediate must be 'channel', 'position' or 'none'; got {intermediate!r}")
        self.q, self.plus, self.intermediate = int(q), bool(plus), intermediate
        k = self.spatial_kernel
        self.h = nn.Parameter(torch.randn(self.q, k, k) / k)
        self.g = nn.Parameter(torch.randn(self.out_features, self.q, *self.attribute_kernel)
                              / math.sqrt(self.q * math.prod(self.attribute_kernel)))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self.norm: nn.Module
        if intermediate == "channel":
            self.norm = nn.BatchNorm2d(self.q, affine=self.plus)
        elif intermediate == "position":
            self.norm = _PositionStandardise(self.q)
        else:
            self.norm = nn.Identity()
        self.shift = nn.Parameter(torch.zeros(self.q)) if self.plus and intermediate != "channel" else None

    def responses(self, x: Tensor) -> Tensor:
        """``W^h_j x``: the normalised responses ``x~_{j,q}`` (and their ELU for (+)), ``(B, *A, Q, H', W')``."""
        self._check(x)
        z = self._marginal(x)
        attrs = z.shape[1:-2]
        k, s = self.spatial_kernel, self.spatial_stride
        h_out, w_out = z.shape[-2] // s, z.shape[-1] // s
        cols = F.unfold(self._pad_space(z.reshape(-1, 1, *z.shape[-2:])), k, stride=s)  # (B P, k^2, H' W')
        # a matrix product rather than conv2d: the one-channel convolution's weight gradient is slow on CPU
        y = torch.matmul(self.h.reshape(self.q, -1), cols).unflatten(-1, (h_out, w_out))  # (B P, Q, H', W')
        if self.intermediate == "position":
            y = self.norm(y.unflatten(0, (z.shape[0], -1))).flatten(0, 1)
        else:
            y = self.norm(y)
        if self.plus:
            y = F.elu(y if self.shift is None else y + self.shift.view(-1, 1, 1))
        return y.unflatten(0, (z.shape[0], *attrs))

    def forward(self, x: Tensor) -> Tensor:
        y = self.responses(x)  # (B, *A, Q, H', W')
        b = y.shape[0]
        bias = None if self.bias is None else self.bias.repeat(math.prod(self.out_attributes[:-1]))
        out = F.conv2d(y.reshape(b, -1, *y.shape[-2:]), self._toeplitz(self.g)[..., None, None], bias)
        return out.reshape(b, *self.out_attributes, *out.shape[-2:])

    def equivalent_weight(self) -> Tensor:
        """``w_{v_j}(v, u) = sum_q g_{v_j,q}(v) h_{j,q}(u) / sigma_{j,q}`` (eq. 37; sigma = 1 without the
        normalisation), shaped like :attr:`AttributeConv.weight`."""
        h = self.h
        if self.intermediate == "channel":
            norm = self.norm
            assert isinstance(norm, nn.BatchNorm2d)
            h = h / torch.sqrt(norm.running_var + norm.eps).view(-1, 1, 1)
        return torch.einsum("fq...,qhw->f...hw", self.g, h)

    def to_attribute_conv(self) -> AttributeConv:
        """The unfactorised :class:`AttributeConv` computing the same map (eval-mode normalisation folded in).

        Raises ValueError for the (+) variant (its intermediate nonlinearity has no equivalent filter), for the
        per-position mean array, in training mode (batch statistics), and for a non-zero normalisation mean with a
        zero attribute boundary (its response is then position dependent, not a bias).
        """
        if self.plus:
            raise ValueError("the (+) variant has an intermediate nonlinearity: no equivalent filter w exists")
        if self.intermediate == "position":
            raise ValueError("a per-position mean array is not a convolution: no equivalent AttributeConv")
        if self.intermediate == "channel" and self.training:
            raise ValueError("call .eval() first: in training mode the normalisation uses batch statistics")
        conv = AttributeConv(self.in_attributes, self.out_features, self.attribute_kernel,
                             spatial_kernel=self.spatial_kernel, spatial_stride=self.spatial_stride,
                             attribute_stride=self.attribute_stride, marginal=self.marginal,
                             boundary=self.boundary, bias=True).to(self.h)
        bias = self.bias.detach().clone() if self.bias is not None else torch.zeros(self.out_features)
        if self.intermediate == "channel":
            norm = self.norm
            assert isinstance(norm, nn.BatchNorm2d)
            offset = norm.running_mean / torch.sqrt(norm.running_var + norm.eps)  # (Q,)
            if bool(offset.ne(0).any()) and "zero" in self.boundary[:-1]:
                raise ValueError("the normalisation mean convolved with g under a zero attribute boundary is "
                                 "position dependent; use periodic attribute boundaries to export")
            bias = bias.to(offset) - torch.einsum("fq...,q->f", self.g.detach(), offset)
        with torch.no_grad():
            conv.weight.copy_(self.equivalent_weight())
            assert conv.bias is not None
            conv.bias.copy_(bias)
        return conv

    @classmethod
    def from_attribute_conv(cls, conv: AttributeConv, q: int) -> FactorisedAttributeConv:
        """Factorise ``conv.weight`` into ``q`` separable filters by an SVD of the (k^2, F prod(attribute_kernel))
        matrix ``w[(u), (v_j, v)]`` (no intermediate normalisation). Its rank is at most ``k^2`` (9 for 3x3), so
        ``q >= k^2`` is exact (sec. 5.4.2); a smaller q keeps the best rank-q approximation."""
        layer = cls(conv.in_attributes, conv.out_features, conv.attribute_kernel, q=q,
                    spatial_kernel=conv.spatial_kernel, spatial_stride=conv.spatial_stride,
                    attribute_stride=conv.attribute_stride, marginal=conv.marginal, boundary=conv.boundary,
                    bias=conv.bias is not None, intermediate="none").to(conv.weight)
        k = conv.spatial_kernel
        w = conv.weight.detach()
        matrix = w.reshape(-1, k * k).T  # (k^2, F prod(attribute_kernel))
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = min(q, s.numel())
        with torch.no_grad():
            layer.h.zero_()
            layer.g.zero_()
            layer.h[:r] = u[:, :r].T.reshape(r, k, k)
            layer.g[:, :r] = (s[:r, None] * vh[:r]).T.reshape(*w.shape[:-2], r).movedim(-1, 1)
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def factorised_parameters(self) -> int:
        """Entries of h and g (the training parameters of eq. 37, the count of the (+) variant)."""
        return self.h.numel() + self.g.numel()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, q={self.q}, plus={self.plus}, intermediate={self.intermediate!r}"
