r"""Anchor-position vectors and compound anchors of two cascaded RECOS layers: eqs. 11-21 of 003.

One-to-one cascade (eqs. 11-17). With anchor matrices A in R^{N x K} and B in R^{K x L}, the correlation part of
the cascade is z = B^T A^T x = C^T x with C = A B (eq. 12); its entry c_{n,l} = alpha_n^T b_l (eq. 13) pairs the
anchor-position vector alpha_n (row n of A, eq. 15: alpha_n^T = e_n^T A; the printed "A e_n" has the
transpose on the wrong side) with the second-layer anchor b_l. Rectifying every entry gives C' = Rec(C)
(eqs. 16-17).

Many-to-one cascade (eqs. 18-21). A second-layer conv unit reads a k2 x k2 grid of P first-layer units that share
one anchor matrix A and look at overlapping input patches x_p. Its anchor b_l splits into one K-vector b_{l,p}
per grid position, and the compound matrix of eq. 21, C in R^{PN x L}, has entries
c_{(p,n),l} = alpha_n^T b_{l,p}: one copy of the stitched first-layer patterns per patch. Placing each copy at its
patch's offset in the input and summing the overlaps gives the compound anchor as an image on the receptive field:
exactly the kernel of the composed linear map (a transposed convolution of B with A). ``rectified`` applies Rec to
every c_{(p,n),l} before stitching (eq. 17 applied to the entries of eq. 21).

Receptive field and pooling. Two stacked convolutions with kernels k1, k2, first stride s1 and dilations d1, d2
have the receptive field R = d1 (k1 - 1) + 1 + (k2 - 1) d2 s1 (9 for LeNet-5's 5x5 C1 -> 5x5 C3 without pooling).
A pooling layer with window q and stride s between them changes the composition:

- average pooling is linear: it convolves each first-layer anchor with a q x q box of weight 1/q^2, so the anchors
  grow to k1 + (q - 1) s1 and the stride becomes s1 s; R = d1 (k1 - 1) + 1 + (q - 1) s1 + (k2 - 1) d2 s1 s
  (14 for LeNet-5 with 2x2 average pooling): ``pool=nn.AvgPool2d(...)`` computes this exactly;
- max pooling picks one entry per window, input dependently. On an input where every pooling window picks its
  top-left entry the composition is the first layer subsampled by s: anchors unchanged, stride s1 s,
  R = d1 (k1 - 1) + 1 + (k2 - 1) d2 s1 s = 5 + 4 * 2 = 13 for LeNet-5: the 13 x 13 receptive field the paper
  states. Other picks shift each first-layer patch by its offset within the window, so the union of the supports
  over all inputs is the 14 x 14 of the exact pooling window. ``pool=nn.MaxPool2d(...)`` or an integer s
  computes the subsampled (paper) reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import anchor_matrix, check_layer, layer_bias

__all__ = ["AnchorPositionVectors", "CompoundAnchors", "anchor_position_vectors", "compound_anchors"]


@dataclass(frozen=True)
class AnchorPositionVectors:
    """The anchor-position vectors alpha_n of eqs. 13-15 of 003: row n of the anchor matrix A.

    Attributes
    ----------
    vectors : Tensor
        ``(N, K)``: ``vectors[n]`` = alpha_n, the values of the K anchors at input position n.
    positions : tuple of int
        Shape of the input patch the N positions index, e.g. ``(C_in, k_h, k_w)`` or ``(N,)``.
    """

    vectors: Tensor
    positions: tuple[int, ...]

    def grid(self) -> Tensor:
        """``(*positions, K)``: alpha at every position of the patch."""
        return self.vectors.reshape(*self.positions, self.vectors.shape[1])


def _as_matrix(a: Tensor | nn.Module, name: str) -> Tensor:
    if isinstance(a, Tensor):
        if a.ndim != 2:
            raise ValueError(
                f"{name} must be an anchor matrix of shape (N, K) with one anchor per column (eq. 11 of 003), "
                f"received a tensor of shape {tuple(a.shape)}"
            )
        return a
    return anchor_matrix(check_layer(a, "anchor_position_vectors / compound_anchors"))


def anchor_position_vectors(A: Tensor | nn.Module) -> AnchorPositionVectors:
    """Anchor-position vectors alpha_n^T = e_n^T A (eq. 15 of 003), one per input position n.

    Parameters
    ----------
    A : Tensor or nn.Linear or nn.Conv2d
        An anchor matrix ``(N, K)`` or a layer (its filters, see ``anchor_matrix``; the cascade analysis of
        003 sec. 3 assumes zero-mean inputs, so no mean augmentation).

    Returns
    -------
    AnchorPositionVectors
    """
    matrix = _as_matrix(A, "A")
    if isinstance(A, nn.Conv2d):
        positions: tuple[int, ...] = (A.in_channels, *A.kernel_size)
    else:
        positions = (matrix.shape[0],)
    return AnchorPositionVectors(vectors=matrix, positions=positions)


@dataclass(frozen=True)
class CompoundAnchors:
    """Compound anchors of a two-layer cascade (eqs. 12, 16-17, 21 of 003); second-layer anchor index first.

    Attributes
    ----------
    linear : Tensor
        ``(L, *field)`` the compound anchors c_l stitched on the receptive field: the kernel of the composed
        linear map (``(L, N)`` for matrices or linear layers, ``(L, C_in, R_h, R_w)`` for convolutions).
    rectified : Tensor
        ``(L, *field)`` the same with Rec applied to every entry c_{(p,n),l} = alpha_n^T b_{l,p} before
        stitching (eqs. 17, 21); equals Rec(A B) in the one-to-one case.
    per_patch : Tensor
        ``(L, P, *patch)`` the entries c_{(p,n),l} of eq. 21 before stitching (P = 1 one-to-one).
    offsets : Tensor
        ``(P, 2)`` top-left offset of patch p in the receptive field (zeros for the one-to-one case).
    bias : Tensor or None
        ``(L,)`` the bias of the composed affine map, b2 + B^T b1 summed over the patches (None for matrices).
    receptive_field : tuple of int
        ``(R_h, R_w)`` for convolutions, ``(N,)`` otherwise.
    stride : tuple of int
        Step between neighbouring compound units in the input (s1 * s_pool * s2 per axis; ``(1,)`` otherwise).
    """

    linear: Tensor
    rectified: Tensor
    per_patch: Tensor
    offsets: Tensor
    bias: Tensor | None
    receptive_field: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def matrix(self) -> Tensor:
        """The compound matrix C of eq. 21 of 003, shape ``(P * N, L)`` (``(N, L)`` one-to-one, eq. 12)."""
        return self.per_patch.reshape(self.per_patch.shape[0], -1).T

    @property
    def rectified_matrix(self) -> Tensor:
        """C' = Rec(C) of eqs. 16-17, shape ``(P * N, L)``."""
        return torch.relu(self.matrix)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_params(pool: object) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """("none"|"avg"|"sub", window, stride) of the pooling between the two convolutions."""
    if pool is None:
        return "none", (1, 1), (1, 1)
    if isinstance(pool, int) and not isinstance(pool, bool) and pool >= 1:
        return "sub", (1, 1), (pool, pool)
    if isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
        window = _pair(pool.kernel_size)
        stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        bad = _pair(pool.padding) != (0, 0) or getattr(pool, "ceil_mode", False)
        if isinstance(pool, nn.MaxPool2d):
            bad = bad or _pair(pool.dilation) != (1, 1)
        else:
            bad = bad or pool.divisor_override is not None
        if bad:
            raise ValueError(
                f"compound_anchors composes pooling without padding, dilation, ceil_mode or divisor_override, "
                f"received {pool!r}; pass the equivalent plain pooling layer"
            )
        return ("sub" if isinstance(pool, nn.MaxPool2d) else "avg"), window, stride
    raise TypeError(
        f"pool must be None, a positive int (subsampling factor), nn.MaxPool2d or nn.AvgPool2d, received {pool!r}"
    )


def _stitch(blocks: Tensor, size: tuple[int, int], kernel: tuple[int, int], dilation: tuple[int, int],
            stride: tuple[int, int]) -> Tensor:
    """Sum blocks ``(L, P, C, kh, kw)`` placed on a grid into images ``(L, C, *size)`` (overlaps add up)."""
    n, p = blocks.shape[:2]
    cols = blocks.reshape(n, p, -1).transpose(1, 2)
    out = F.fold(cols, size, kernel, dilation=dilation, stride=stride)
    return out


def _conv_cascade(first: nn.Conv2d, second: nn.Conv2d, pool: object) -> CompoundAnchors:
    if second.in_channels != first.out_channels:
        raise ValueError(
            f"the second convolution reads {second.in_channels} channels but the first produces "
            f"{first.out_channels}; pass two layers that are cascaded in the network (e.g. model.c1, model.c3)"
        )
    kind, window, pstride = _pool_params(pool)
    a = first.weight.detach()  # (K, C, k1h, k1w)
    b = second.weight.detach()  # (L, K, k2h, k2w)
    s1, d1 = _pair(first.stride), _pair(first.dilation)
    k1 = (a.shape[2], a.shape[3])
    if kind == "avg":
        # Average pooling is linear: each anchor becomes the q x q box average of shifted copies of itself.
        span1 = tuple(d * (k - 1) + 1 + (q - 1) * s for d, k, q, s in zip(d1, k1, window, s1, strict=True))
        copies = a.unsqueeze(1).expand(a.shape[0], window[0] * window[1], *a.shape[1:]) / (window[0] * window[1])
        a = _stitch(copies, span1, k1, d1, s1)
        k1, d1 = span1, (1, 1)
    s1 = (s1[0] * pstride[0], s1[1] * pstride[1])
    d2 = _pair(second.dilation)
    k2 = (b.shape[2], b.shape[3])
    field = tuple(d * (k - 1) + 1 + (kk - 1) * dd * s for d, k, kk, dd, s in zip(d1, k1, k2, d2, s1, strict=True))
    per_patch = torch.einsum("lkpq,kcij->lpqcij", b, a)
    per_patch = per_patch.reshape(b.shape[0], k2[0] * k2[1], *a.shape[1:])
    step = (s1[0] * d2[0], s1[1] * d2[1])
    linear = _stitch(per_patch, field, k1, d1, step)
    rectified = _stitch(torch.relu(per_patch), field, k1, d1, step)
    grid = torch.stack(torch.meshgrid(torch.arange(k2[0]), torch.arange(k2[1]), indexing="ij"), dim=-1)
    offsets = (grid.reshape(-1, 2) * torch.tensor(step)).to(torch.long)
    bias = layer_bias(second) + torch.einsum("lkpq,k->l", b, layer_bias(first))
    s2 = _pair(second.stride)
    return CompoundAnchors(
        linear=linear,
        rectified=rectified,
        per_patch=per_patch,
        offsets=offsets,
        bias=bias,
        receptive_field=field,
        stride=(s1[0] * s2[0], s1[1] * s2[1]),
    )


def compound_anchors(A: Tensor | nn.Module, B: Tensor | nn.Module, *, pool: object = None) -> CompoundAnchors:
    """Compound anchors C = A B and C' = Rec(A B) of two cascaded RECOS units (eqs. 12, 16-17, 21 of 003).

    Parameters
    ----------
    A, B : Tensor or layer
        Anchor matrices ``(N, K)`` and ``(K, L)`` (one-to-one cascade, eq. 12); two ``nn.Linear`` layers applied
        one after the other; or two ``nn.Conv2d`` layers (many-to-one cascade, eqs. 18-21), e.g. LeNet-5's
        ``model.c1`` and ``model.c3``. Biases enter ``bias`` only; the paper's analysis assumes zero means.
    pool : None, int, nn.MaxPool2d or nn.AvgPool2d
        The pooling between two convolutions (e.g. ``model.s2``). ``nn.AvgPool2d``: exact composition (the
        anchors are box-averaged, receptive field 14 for LeNet-5). ``nn.MaxPool2d`` or an int s: the first layer
        subsampled by s (the paper's reading, receptive field 13 for LeNet-5; exact where every window picks its
        top-left entry). ``None``: the two convolutions are directly cascaded (receptive field 9 for LeNet-5).
        The module docstring derives the three cases.

    Returns
    -------
    CompoundAnchors
        For convolutions ``linear`` is the kernel of the cascade's linear part: with no unit rectified,
        ``second(pool(first(x)))`` equals ``conv2d(x, linear, bias, stride=stride)`` away from zero padding.
    """
    if isinstance(A, nn.Conv2d) or isinstance(B, nn.Conv2d):
        if not (isinstance(A, nn.Conv2d) and isinstance(B, nn.Conv2d)):
            raise TypeError(
                f"compound_anchors cascades two matrices, two nn.Linear or two nn.Conv2d layers, received "
                f"{type(A).__name__} and {type(B).__name__}; for a conv -> linear cascade pass anchor matrices"
            )
        return _conv_cascade(check_layer(A, "compound_anchors"), check_layer(B, "compound_anchors"), pool)
    if pool is not None:
        raise ValueError(f"pool applies to two convolutions only, received pool={pool!r} with non-conv inputs")
    a = _as_matrix(A, "A")
    b = _as_matrix(B, "B")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"the number of anchors K of A (its columns, {a.shape[1]}) must equal the input dimension of B "
            f"(its rows, {b.shape[0]}); received A of shape {tuple(a.shape)} and B of shape {tuple(b.shape)}"
        )
    c = (a @ b).T  # (L, N)
    bias = None
    if isinstance(A, nn.Linear) and isinstance(B, nn.Linear):
        bias = layer_bias(B) + b.T @ layer_bias(A)
    return CompoundAnchors(
        linear=c,
        rectified=torch.relu(c),
        per_patch=c.unsqueeze(1),
        offsets=torch.zeros(1, 2, dtype=torch.long),
        bias=bias,
        receptive_field=(a.shape[0],),
        stride=(1,),
    )
