"""Hierarchical Attribute CNNs (001 ch. 5): the fast architecture of sec. 5.4.1, its parameter counts and the
attribute translations of sec. 5.5.3 (eq. 38, Figs. 14-15).

Layer ``x_j`` is stored as ``(batch, v_{j-2}, v_{j-1}, v_j, H, W)`` with attribute sizes ``K/4 x K/2 x K``
(``x_1``: ``(batch, K, H, W)``, ``x_2``: ``(batch, K/2, K, H, W)``):

- ``j = 1`` (eq. 32): a sum over the colour channels of spatial convolutions, ``C -> K``;
- ``j = 2, 3`` (eq. 33): convolutions along ``(u, v_1)`` and ``(u, v_1, v_2)``;
- ``3 < j < J`` (eq. 35): the marginal sum along ``v_{j-3}``, then a convolution along ``(u, v_{j-2}, v_{j-1})``;
  the last one (``j = J - 1``) has one filter per class;
- every convolution is subsampled by ``2^{s_j}`` along u and by 2 along its attributes, followed by a batch
  normalisation constant along ``(u, v)`` (one mean and scale per ``v_j``) and ``rho`` = ELU;
- ``x_J(v_{J-1})`` (eq. 36): the sum of ``x_{J-1}`` over ``u, v_{J-3}, v_{J-2}``: the logits.

The attribute convolutions are :class:`~cnnlens.nn.attribute_conv.FactorisedAttributeConv` (eq. 37, the paper's
training form) or, with ``factorised=False``, the unfactorised :class:`~cnnlens.nn.attribute_conv.AttributeConv`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._models import register_model
from .attribute_conv import AttributeConv, FactorisedAttributeConv, Intermediate

__all__ = [
    "AttributeNeighbors",
    "HierarchicalCNN",
    "ParameterCounts",
    "attribute_translation_neighbors",
    "hierarchical_cnn",
]


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a :class:`HierarchicalCNN`, derived from its construction (sec. 5.4.2).

    Attributes
    ----------
    free : entries of the filters ``w_{v_j}`` of every layer (the first layer's ``w_{1,v_0,v_1}`` included): the
        paper's "number of free parameters of the original architecture" (0.098M for CIFAR-10).
    factorised : entries of the first layer's filters and of every ``h_{j,q}`` and ``g_{v_j,q}`` (eq. 37): the
        training parameters, the paper's count of the (+) variant (0.34M).
    factorised_deep : the same for the layers ``2 < j < J`` only (the layers with 2-d attribute supports that the
        text's (+) count describes).
    normalisation : learned scales and biases of the normalisations and the layers' biases.
    total : every learned parameter of the module (``sum(p.numel())``).
    """

    free: int
    factorised: int
    factorised_deep: int
    normalisation: int
    total: int


@dataclass(frozen=True)
class AttributeNeighbors:
    """Result of :func:`attribute_translation_neighbors` (eq. 38): for each input ``b`` and shift ``tau[t]``, the
    database index whose invariant array is nearest to the input's translated array and the Euclidean distance.

    ``indices`` and ``distances``: ``(B, T)``; ``arrays``: the inputs' arrays ``(B, n_{j-1}, n_j)``; ``tau``: the
    shifts along ``v_{j-1}``; ``depth``: j.
    """

    indices: Tensor
    distances: Tensor
    arrays: Tensor
    tau: tuple[int, ...]
    depth: int


class _FeatureNorm(nn.Module):
    """Batch normalisation with one mean and scale per last attribute ``v_j`` (constant along ``u`` and the other
    attributes, so covariant to their translations: Prop. 5.3.1)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x.flatten(0, x.ndim - 4)).reshape(x.shape)


class HierarchicalCNN(nn.Module):
    """The Hierarchical Attribute CNN of sec. 5.4 of 001 (Fig. 13), with attributes of at most ``width`` = K values.

    Parameters
    ----------
    in_channels, num_classes : colour channels ``v_0`` and classes (the size of ``v_{J-1}``).
    width : K; attribute arrays are ``K/4 x K/2 x K`` (K divisible by 4).
    depth : J (>= 4); layers ``x_1 .. x_{J-1}`` are computed, ``x_J`` is the invariant average (eq. 36).
    downsample : depths j with ``s_j = 1`` (subsampling by 2 along u); the paper: (5, 9).
    spatial_kernel : spatial support (3); attribute_kernel : support along ``(v_{j-2}, v_{j-1})`` ((7, 11) on
        CIFAR-10, (11, 11) on CIFAR-100); layer 2 uses its second entry along ``v_1``.
    q : Q separable filters per layer (eq. 37); plus : the (+) variant (intermediate nonlinearity).
    boundary : ``"zero"`` or ``"periodic"`` for every axis, or ``(attribute boundary, spatial boundary)``.
    intermediate : the normalisation between ``h`` and ``g`` (see :data:`~cnnlens.nn.attribute_conv.Intermediate`).
    factorised : train the factorised form (True, as the paper does) or the unfactorised filters ``w``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, width: int = 16, depth: int = 12,
                 downsample: Iterable[int] = (5, 9), spatial_kernel: int = 3,
                 attribute_kernel: Sequence[int] = (7, 11), q: int = 32, plus: bool = False,
                 boundary: str | Sequence[str] = "zero", intermediate: Intermediate = "channel",
                 factorised: bool = True) -> None:
        super().__init__()
        if depth < 4:
            raise ValueError(f"depth J must be >= 4 (layers x_1 .. x_3 at least, eq. 35 from j = 4); got {depth}")
        if width < 4 or width % 4:
            raise ValueError(f"width K must be a positive multiple of 4 (arrays of K/4 x K/2 x K); got {width}")
        self.downsample = tuple(sorted(int(j) for j in downsample))
        if any(not 1 <= j < depth for j in self.downsample):
            raise ValueError(f"downsample lists depths 1 <= j < J = {depth} with s_j = 1; got {self.downsample}")
        attribute_kernel = tuple(int(k) for k in attribute_kernel)
        if len(attribute_kernel) != 2:
            raise ValueError(f"attribute_kernel is the support along (v_(j-2), v_(j-1)), two sizes; got "
                             f"{attribute_kernel}")
        space, attr = (boundary, boundary) if isinstance(boundary, str) else tuple(boundary)[::-1]
        self.width, self.depth, self.num_classes, self.in_channels = width, depth, num_classes, in_channels
        self.spatial_kernel, self.attribute_kernel, self.q, self.plus = spatial_kernel, attribute_kernel, q, plus
        self.boundary = (attr, space)
        if space not in ("zero", "periodic"):
            raise ValueError(f"boundary must be 'zero', 'periodic' or (attributes, space); got {boundary!r}")
        stride = {j: 2 if j in self.downsample else 1 for j in range(1, depth)}
        self.first = nn.Conv2d(in_channels, width, spatial_kernel, stride=stride[1], padding=spatial_kernel // 2,
                               padding_mode="circular" if space == "periodic" else "zeros", bias=False)
        self.first_norm = nn.BatchNorm2d(width)
        convs, norms = [], []
        attrs: tuple[int, ...] = (width,)
        for j in range(2, depth):
            out = num_classes if j == depth - 1 else width
            marginal = j >= 4
            kernel = (attribute_kernel[1],) if j == 2 else attribute_kernel
            conv_axes = len(kernel)
            options = dict(spatial_kernel=spatial_kernel, spatial_stride=stride[j], marginal=marginal,
                           boundary=(attr,) * conv_axes + (space,))
            layer: nn.Module
            if factorised:
                layer = FactorisedAttributeConv(attrs, out, kernel, q=q, plus=plus, intermediate=intermediate,
                                                bias=False, **options)  # type: ignore[arg-type]
            else:
                layer = AttributeConv(attrs, out, kernel, bias=False, **options)  # type: ignore[arg-type]
            convs.append(layer)
            norms.append(_FeatureNorm(out))
            attrs = layer.out_attributes
        self.layers = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)

    # --- construction ---------------------------------------------------------------------------------------

    @classmethod
    def cifar10(cls, **overrides: object) -> HierarchicalCNN:
        """The paper's CIFAR-10 network (sec. 5.4.2): J = 12, K = 16, s_5 = s_9 = 1, 3x3 spatial and 7 x 11
        attribute supports, Q = 32, 10 classes (0.098M free parameters)."""
        config: dict[str, object] = dict(in_channels=3, num_classes=10, width=16, depth=12, downsample=(5, 9),
                                         spatial_kernel=3, attribute_kernel=(7, 11), q=32)
        return cls(**{**config, **overrides})  # type: ignore[arg-type]

    @classmethod
    def cifar100(cls, **overrides: object) -> HierarchicalCNN:
        """The paper's CIFAR-100 network: as :meth:`cifar10` with 11 x 11 attribute supports and 100 classes
        (0.25M free parameters)."""
        config: dict[str, object] = dict(attribute_kernel=(11, 11), num_classes=100)
        return cls.cifar10(**{**config, **overrides})

    def parameter_counts(self) -> ParameterCounts:
        """The counts of :class:`ParameterCounts`, derived from the layers' shapes."""
        first = self.first.weight.numel()
        free = first + sum(layer.free_parameters() for layer in self.layers)  # type: ignore[operator]
        factorised = first
        deep = 0
        for j, layer in enumerate(self.layers, start=2):
            count = (layer.factorised_parameters() if isinstance(layer, FactorisedAttributeConv)
                     else layer.free_parameters())  # type: ignore[operator]
            factorised += count
            deep += count if j >= 3 else 0
        filters = {id(self.first.weight)} | {id(p) for layer in self.layers for name, p in layer.named_parameters()
                                             if name in ("weight", "h", "g")}
        total = sum(p.numel() for p in self.parameters())
        other = sum(p.numel() for p in self.parameters() if id(p) not in filters)
        return ParameterCounts(free, factorised, deep, other, total)

    # --- forward ----------------------------------------------------------------------------------------------

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"HierarchicalCNN expects images (N, {self.in_channels}, H, W); got {tuple(x.shape)}")
        factor = 2 ** len(self.downsample)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} does not divide by the total spatial subsampling "
                             f"{factor} (downsample at j = {self.downsample}); crop or pad the images")

    def _layer(self, j: int, x: Tensor) -> Tensor:
        """``x_j = rho(W_j x_{j-1})`` for j >= 2."""
        return F.elu(self.norms[j - 2](self.layers[j - 2](x)))

    def hidden_layers(self, x: Tensor) -> list[Tensor]:
        """``[x_1, ..., x_{J-1}]`` from one forward pass; ``x_j``: ``(B, *attributes, H_j, W_j)``."""
        self._check(x)
        out = [F.elu(self.first_norm(self.first(x)))]
        for j in range(2, self.depth):
            out.append(self._layer(j, out[-1]))
        return out

    def forward_from(self, h: Tensor, depth: int) -> Tensor:
        """The logits ``x_J = W_J rho W_{J-1} ... rho W_{j+1} x_j`` from a layer ``h = x_j`` (the cascade of the
        proof of Prop. 5.3.1)."""
        if not 1 <= depth < self.depth:
            raise ValueError(f"depth must be 1 <= j < J = {self.depth}; got {depth}")
        for j in range(depth + 1, self.depth):
            h = self._layer(j, h)
        return self.invariant(h)

    def invariant(self, last: Tensor) -> Tensor:
        """Eq. 36: ``x_J(v_{J-1})``, the sum of ``x_{J-1}`` over ``u, v_{J-3}, v_{J-2}``, ``(B, num_classes)``.
        (The sum, not the average: with the average the logits of a fresh network hardly differ and training on
        mnist5k reached 50% where the sum reached 81% in the same budget.)"""
        return last.movedim(-3, 1).flatten(2).sum(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.invariant(self.hidden_layers(x)[-1])

    # --- symmetries and attribute arrays ----------------------------------------------------------------------

    def invariant_shifts(self, depth: int) -> tuple[int | None, ...]:
        """The translations of ``x_j`` that leave the logits exactly invariant with periodic boundaries (Prop.
        5.3.1): per attribute axis of ``x_j``, then for u, the smallest shift whose multiples do, i.e. the
        subsampling accumulated by the later layers before the axis is summed out (None for the class axis of
        ``x_{J-1}``, which is not summed)."""
        if not 1 <= depth < self.depth:
            raise ValueError(f"depth must be 1 <= j < J = {self.depth}; got {depth}")
        axes = 1 if depth == 1 else min(depth, 3)
        shifts: list[int | None] = []
        for axis in range(axes):
            position, factor = axis, 1
            alive = True
            for j in range(depth + 1, self.depth):
                if j >= 4 and position == 0:  # summed out by the marginal of eq. 35
                    alive = False
                    break
                position -= 1 if j >= 4 else 0
                factor *= 2
            shifts.append(None if alive and position == axes - 1 and depth == self.depth - 1 else factor)
        shifts.append(2 ** sum(1 for j in self.downsample if j > depth))
        return tuple(shifts)

    def attribute_arrays(self, x: Tensor, depths: Iterable[int] | None = None, smooth: int = 3
                         ) -> dict[int, Tensor]:
        """Eq. 38's invariant attribute arrays ``x̄_j(v_{j-1}, v_j) = sum_{v_{j-2}} x_j(u_0, v_{j-2}, v_{j-1}, v_j)``
        at the central position ``u_0``, for each depth ``3 <= j < J`` (default: all), from one forward pass.

        ``smooth`` is the width of the periodic box filter along ``v_{j-1}`` applied before translations (sec.
        5.5.3: "we eliminate the high frequency variations of x_j along v_{j-1} with an averaging filter"); 1
        disables it. Returns depth -> ``(B, n_{j-1}, n_j)``.
        """
        wanted = tuple(range(3, self.depth)) if depths is None else tuple(int(d) for d in depths)
        bad = [d for d in wanted if not 3 <= d < self.depth]
        if bad:
            raise ValueError(f"eq. 38 needs three attribute axes: depths 3 <= j < J = {self.depth}; got {bad}")
        if smooth < 1 or smooth % 2 == 0:
            raise ValueError(f"smooth is an odd box width >= 1; got {smooth}")
        layers = self.hidden_layers(x)
        arrays = {}
        for d in wanted:
            h = layers[d - 1]
            bar = h[..., h.shape[-2] // 2, h.shape[-1] // 2].sum(1)  # (B, n_{j-1}, n_j)
            if smooth > 1:
                bar = torch.stack([bar.roll(s, 1) for s in range(-(smooth // 2), smooth // 2 + 1)]).mean(0)
            arrays[d] = bar
        return arrays


def attribute_translation_neighbors(model: HierarchicalCNN, x: Tensor, depth: int, tau: int | Sequence[int],
                                    database: Tensor, *, smooth: int = 3, batch_size: int = 256
                                    ) -> AttributeNeighbors:
    """Sec. 5.5.3, eq. 38: the database images whose invariant arrays are nearest to the input's translated one.

    For each input ``x`` and shift ``tau``: the index ``i`` minimising
    ``|| x̄_j(v_{j-1} - tau, v_j) - x̄^i_j(v_{j-1}, v_j) ||_2`` over the database and that distance, with
    :meth:`HierarchicalCNN.attribute_arrays` (smoothed along ``v_{j-1}`` by ``smooth``) and periodic translations
    (the text uses a network with circular convolutions). ``database``: images ``(N, C, H, W)``, evaluated in
    chunks of ``batch_size`` (which does not change the result). Exclude ``x`` from the database yourself for
    "among all other images".
    """
    taus = (int(tau),) if isinstance(tau, int) else tuple(int(t) for t in tau)
    if not taus:
        raise ValueError("tau needs at least one shift")
    if database.ndim != 4 or len(database) == 0:
        raise ValueError(f"database must be a non-empty batch of images (N, C, H, W); got {tuple(database.shape)}")
    with torch.no_grad():
        arrays = model.attribute_arrays(x, (depth,), smooth)[depth]
        base = torch.cat([model.attribute_arrays(database[i:i + batch_size], (depth,), smooth)[depth]
                          for i in range(0, len(database), batch_size)]).flatten(1)
        shifted = torch.stack([arrays.roll(t, 1) for t in taus], 1).flatten(2)  # (B, T, n)
        dist = torch.cdist(shifted.flatten(0, 1), base).unflatten(0, shifted.shape[:2])  # (B, T, N)
        distances, indices = dist.min(-1)
    return AttributeNeighbors(indices, distances, arrays, taus, depth)


@register_model("hcnn")
def hierarchical_cnn(*, num_classes: int = 10, in_channels: int = 1, width: int = 8, depth: int = 6,
         downsample: Iterable[int] = (2, 4), attribute_kernel: Sequence[int] = (3, 5), q: int = 9,
         plus: bool = False, boundary: str | Sequence[str] = "zero") -> HierarchicalCNN:
    """A CPU-sized Hierarchical Attribute CNN (K = 8, J = 6, s_2 = s_4 = 1, 3 x 5 attribute supports, Q = 9); the
    paper's networks are :meth:`HierarchicalCNN.cifar10` and :meth:`HierarchicalCNN.cifar100`."""
    return HierarchicalCNN(in_channels, num_classes, width=width, depth=depth, downsample=downsample,
                           attribute_kernel=attribute_kernel, q=q, plus=plus, boundary=boundary)
