r"""Anchor vectors and rectified correlations on a (translated) sphere: eqs. 1-10 of 003 (Kuo, RECOS).

A trained filter w_k of a conv or linear layer is read as an anchor vector a_k; the unit's response to a patch x
is the rectified correlation y_k = Rec(a_k^T x) (eq. 4), which eq. 10 writes on the unit sphere as

.. math::  y_k = \|x''\| \, \|a''_k\| \, \mathrm{Rec}(a_k'^T x'), \qquad x' = x''/\|x''\|,\ a'_k = a''_k/\|a''_k\|.

(The printed eq. 10 reads Rec(a''^T x''), a typo: with the norms factored out the correlation is that of the
unit vectors of eq. 9.) A trained layer adds a bias b_k, which moves the rectification boundary on the sphere from
90 degrees to the angle where cos(theta) = -b_k / (||x''|| ||a''_k||); ``values`` includes it, so they are exactly
the layer's ReLU output.

Mean augmentation (eqs. 5-8). For a local patch the mean mu = 1^T x / N matters (it gives a coarse view of the
image). Eq. 7 augments x' = (mu, x_1, ..., x_N). A trained filter w splits as w = (w - w_bar 1) + w_bar 1, so its
augmented anchor is a' = (a_0, a) with a = w - w_bar 1 (zero sum: a^T x = a^T (x - mu 1), the correlation on the
translated sphere S_mu of eq. 5 / eq. 6) and a_0 = sum_n w_n (the weight the unit gives the local mean); then
a'^T x' = a_0 mu + a^T x = w^T x exactly. Eq. 6 fixes a_0 = -sum_n a_n, which for the zero-sum a is 0: the paper's
form is the special case of a filter that ignores the local mean; a trained filter generally does not, and a_0
records how much. The values are the same with or without augmentation; the angles and norms are those of the
(N + 1)-dimensional augmented vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._layers import check_layer, extract_patches, layer_bias, patch_shape

__all__ = ["AnchorVectors", "RectifiedCorrelations", "anchor_vectors", "augment_patches", "rectified_correlations"]


def _unit(v: Tensor, norms: Tensor) -> Tensor:
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return v / safe.unsqueeze(-1)


@dataclass(frozen=True)
class AnchorVectors:
    """The K anchor vectors of one RECOS unit (eqs. 7-9 of 003), anchor dimension first.

    Attributes
    ----------
    vectors : Tensor
        ``(K, N)`` raw anchors a''_k (the filters), or ``(K, N + 1)`` mean-augmented a''_k = (a_0, a) of eq. 7.
    norms : Tensor
        ``(K,)`` the lengths ||a''_k|| of eq. 9.
    bias : Tensor
        ``(K,)`` the layer's bias (zeros when it has none).
    patch_shape : tuple of int
        Shape of one input patch, ``(C_in, k_h, k_w)`` or ``(in_features,)``.
    augment_mean : bool
        Whether ``vectors`` carry the leading local-mean coordinate a_0 = sum_n w_n.
    """

    vectors: Tensor
    norms: Tensor
    bias: Tensor
    patch_shape: tuple[int, ...]
    augment_mean: bool

    @property
    def num_anchors(self) -> int:
        """K, the number of anchors (the layer's output channels)."""
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        """The anchor dimension: N, or N + 1 with the mean augmentation (Tables 1-2 of 003)."""
        return self.vectors.shape[1]

    @property
    def unit(self) -> Tensor:
        """``(K, dim)`` anchors on the unit sphere, a'_k = a''_k / ||a''_k|| (eq. 9); a zero filter stays zero."""
        return _unit(self.vectors, self.norms)

    def images(self) -> Tensor:
        """``(K, *patch_shape)`` the pattern part of each anchor (without the mean coordinate), for drawing."""
        pattern = self.vectors[:, 1:] if self.augment_mean else self.vectors
        return pattern.reshape(self.num_anchors, *self.patch_shape)


def anchor_vectors(layer: nn.Module, augment_mean: bool = False) -> AnchorVectors:
    """The anchor vectors of a trained conv or linear layer (eqs. 5-10 of 003).

    Parameters
    ----------
    layer : nn.Linear or nn.Conv2d
        The RECOS unit; its filters are the anchors.
    augment_mean : bool
        ``False``: a''_k = w_k (N entries). ``True``: the mean-augmented anchor of eq. 7,
        a''_k = (sum_n w_{k,n}, w_k - mean(w_k) 1) with N + 1 entries, which acts on x' = (mu, x) with
        a''_k^T x' = w_k^T x (see the module docstring for the derivation and how it relates to eq. 6).

    Returns
    -------
    AnchorVectors
    """
    layer = check_layer(layer, "anchor_vectors")
    weight = layer.weight.detach()
    w = weight.reshape(weight.shape[0], -1)
    if augment_mean:
        w = torch.cat([w.sum(dim=1, keepdim=True), w - w.mean(dim=1, keepdim=True)], dim=1)
    return AnchorVectors(
        vectors=w,
        norms=torch.linalg.vector_norm(w, dim=1),
        bias=layer_bias(layer),
        patch_shape=patch_shape(layer),
        augment_mean=augment_mean,
    )


def augment_patches(patches: Tensor) -> Tensor:
    """Prepend the local mean to every patch: x' = (mu, x_1, ..., x_N) of eq. 7 of 003; ``(..., N) -> (..., N+1)``."""
    return torch.cat([patches.mean(dim=-1, keepdim=True), patches], dim=-1)


@dataclass(frozen=True)
class RectifiedCorrelations:
    """Responses of a RECOS unit, factored as in eq. 10 of 003; batch first, then anchors, then the patch grid.

    Attributes
    ----------
    values : Tensor
        ``(B, K, *grid)`` y_k = Rec(||x''|| ||a''_k|| cos theta_k + b_k): the layer's ReLU output.
    cosines : Tensor
        ``(B, K, *grid)`` a'_k^T x', the correlation of the unit vectors (eq. 2: cos of the geodesic angle);
        0 for a zero patch.
    patch_norms : Tensor
        ``(B, *grid)`` ||x''|| per patch.
    anchor_norms : Tensor
        ``(K,)`` ||a''_k||.
    bias : Tensor
        ``(K,)`` the layer's bias b_k.
    augment_mean : bool
        Whether the vectors are mean-augmented (eq. 7).
    """

    values: Tensor
    cosines: Tensor
    patch_norms: Tensor
    anchor_norms: Tensor
    bias: Tensor
    augment_mean: bool

    @property
    def angles(self) -> Tensor:
        """``(B, K, *grid)`` geodesic angles theta_k = arccos(cos theta_k) in degrees (eq. 2)."""
        return torch.rad2deg(torch.arccos(self.cosines.clamp(-1.0, 1.0)))

    @property
    def rectified(self) -> Tensor:
        """``(B, K, *grid)`` bool: where the unit's output is clipped to zero by Rec."""
        return self.values <= 0


def rectified_correlations(x: Tensor, layer: nn.Module, *, augment_mean: bool = False) -> RectifiedCorrelations:
    """Rectified correlations y_k = Rec(a_k^T x + b_k) of every patch of ``x`` with the layer's anchors (eqs. 4, 10).

    Parameters
    ----------
    x : Tensor
        ``(B, C_in, H, W)`` for ``nn.Conv2d`` (one patch per output position, via unfold), ``(B, N)`` for
        ``nn.Linear``.
    layer : nn.Linear or nn.Conv2d
    augment_mean : bool
        Measure angles and norms on the mean-augmented vectors x' = (mu, x) of eq. 7 (see ``anchor_vectors``).

    Returns
    -------
    RectifiedCorrelations
        ``values`` equals ``relu(layer(x))``; the factors of eq. 10 are kept separately.
    """
    anchors = anchor_vectors(layer, augment_mean=augment_mean)
    patches, grid = extract_patches(x, layer)
    if augment_mean:
        patches = augment_patches(patches)
    patch_norms = torch.linalg.vector_norm(patches, dim=-1)  # (B, P)
    cosines = _unit(patches, patch_norms) @ anchors.unit.T  # (B, P, K)
    scale = patch_norms.unsqueeze(-1) * anchors.norms
    values = torch.relu(scale * cosines + anchors.bias)
    batch = x.shape[0]
    k = anchors.num_anchors

    def to_grid(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(batch, k, *grid)

    return RectifiedCorrelations(
        values=to_grid(values),
        cosines=to_grid(cosines),
        patch_norms=patch_norms.reshape(batch, *grid),
        anchor_norms=anchors.norms,
        bias=anchors.bias,
        augment_mean=augment_mean,
    )
