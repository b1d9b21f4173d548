"""Anchors as cluster centroids (003 sec. 2, end): which anchor each input patch correlates with most, and how
tightly the patches gather around it on the sphere.

The paper argues that if the input patches form K clusters, the anchors a_k should sit at the centroids, so that
a patch correlates strongly with its own anchor and weakly with the others, and it recalls that k-means works well
for single-layer networks (Coates et al., its ref. [29]). ``cluster_view`` measures this on real patches: every
patch x goes to argmax_k cos(a_k, x); a patch whose every correlation is <= 0 is rectified to zero by every anchor
(eq. 4) and stays unassigned. Per cluster it reports the share of patches, the angular spread (mean geodesic angle
of eq. 2 between the anchor and its patches) and the angle between the anchor and the cluster's mean direction;
optionally it runs spherical k-means with K centres on the same patches and matches its centroids to the anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ._anchors import anchor_vectors, augment_patches

__all__ = ["ClusterView", "UnitVectorAlignment", "cluster_view", "unit_vector_alignment"]


@dataclass(frozen=True)
class ClusterView:
    """Patches assigned to their most correlated anchor; patch dimension first, then anchors.

    Attributes
    ----------
    assignment : Tensor
        ``(M,)`` int64: the anchor with the largest cosine, -1 if every cosine is <= 0 or the patch is (near) zero.
    cosines : Tensor
        ``(M, K)`` cos(a_k, x) of the unit vectors (0 for a zero patch).
    share : Tensor
        ``(K,)`` fraction of all M patches assigned to each anchor.
    unassigned_share : float
        Fraction of patches left unassigned (rectified by every anchor, or zero patches).
    angular_spread : Tensor
        ``(K,)`` mean angle in degrees between anchor k and its patches (nan for an empty cluster).
    centroid_angle : Tensor
        ``(K,)`` angle in degrees between anchor k and the normalised mean of its unit patches (nan if empty).
    kmeans_angle : Tensor or None
        ``(K,)`` angle in degrees between anchor k and the spherical k-means centroid matched to it (Hungarian
        matching on the angles), when requested.
    """

    assignment: Tensor
    cosines: Tensor
    share: Tensor
    unassigned_share: float
    angular_spread: Tensor
    centroid_angle: Tensor
    kmeans_angle: Tensor | None

    @property
    def mean_angular_spread(self) -> float:
        """Angular spread averaged over the assigned patches (degrees)."""
        assigned = self.assignment >= 0
        if not bool(assigned.any()):
            return float("nan")
        best = self.cosines[assigned].max(dim=1).values.clamp(-1.0, 1.0)
        return float(torch.rad2deg(torch.arccos(best)).mean())


def _angle(cos: Tensor) -> Tensor:
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def _spherical_kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Spherical k-means (cosine similarity) of unit rows ``x``; k-means++ seeding from scikit-learn."""
    from sklearn.cluster import kmeans_plusplus

    centres, _ = kmeans_plusplus(x, k, random_state=seed)
    for _ in range(iters):
        labels = np.argmax(x @ centres.T, axis=1)
        new = np.stack([x[labels == j].sum(axis=0) if np.any(labels == j) else centres[j] for j in range(k)])
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def cluster_view(
    layer: nn.Module,
    patches: Tensor,
    *,
    augment_mean: bool = False,
    min_norm: float = 1e-6,
    kmeans: bool = False,
    seed: int = 0,
) -> ClusterView:
    """How well a layer's anchors act as centroids of the input patches (003 sec. 2, k-means link).

    Parameters
    ----------
    layer : nn.Linear or nn.Conv2d
    patches : Tensor
        ``(M, N)`` or ``(M, *patch_shape)`` input patches (``extract_patches(x, layer)[0].reshape(-1, N)``
        gives them from images).
    augment_mean : bool
        Compare mean-augmented vectors (eq. 7).
    min_norm : float
        Patches with norm <= min_norm (blank background) have no direction and stay unassigned.
    kmeans : bool
        Also run spherical k-means with K centres on the unit patches and report the matched angles.
    seed : int
        Seed of the k-means initialisation.

    Returns
    -------
    ClusterView
    """
    anchors = anchor_vectors(layer, augment_mean=augment_mean)
    if not isinstance(patches, Tensor):
        raise TypeError(f"patches must be a torch.Tensor, received {type(patches).__name__}")
    n = int(np.prod(anchors.patch_shape))
    if patches.ndim < 2 or patches[0].numel() != n:
        raise ValueError(
            f"patches must have shape (M, {n}) or (M, {', '.join(map(str, anchors.patch_shape))}) for this layer, "
            f"received {tuple(patches.shape)}; extract them with cnnlens.recos.extract_patches"
        )
    x = patches.reshape(patches.shape[0], n).to(anchors.vectors.dtype)
    if augment_mean:
        x = augment_patches(x)
    norms = torch.linalg.vector_norm(x, dim=1)
    valid = norms > min_norm
    unit_x = x / torch.where(valid, norms, torch.ones_like(norms)).unsqueeze(1) * valid.unsqueeze(1)
    cosines = unit_x @ anchors.unit.T
    best, arg = cosines.max(dim=1)
    assignment = torch.where(valid & (best > 0), arg, torch.full_like(arg, -1))
    k = anchors.num_anchors
    m = x.shape[0]
    share = torch.stack([(assignment == j).sum() for j in range(k)]).to(cosines.dtype) / max(m, 1)
    nan = torch.tensor(float("nan"), dtype=cosines.dtype)
    spread, centroid = [], []
    for j in range(k):
        members = assignment == j
        if not bool(members.any()):
            spread.append(nan)
            centroid.append(nan)
            continue
        spread.append(_angle(cosines[members, j]).mean())
        mean_dir = unit_x[members].mean(dim=0)
        mean_dir = mean_dir / torch.linalg.vector_norm(mean_dir).clamp_min(1e-12)
        centroid.append(_angle(mean_dir @ anchors.unit[j]))
    kmeans_angle = None
    if kmeans:
        usable = unit_x[valid].cpu().double().numpy()
        if usable.shape[0] < k:
            raise ValueError(f"kmeans needs at least K={k} non-zero patches, received {usable.shape[0]}")
        centres = _spherical_kmeans(usable, k, seed)
        cos = anchors.unit.cpu().double().numpy() @ centres.T
        rows, cols = linear_sum_assignment(-cos)
        matched = np.empty(k)
        matched[rows] = cos[rows, cols]
        kmeans_angle = _angle(torch.from_numpy(matched)).to(cosines.dtype)
    return ClusterView(
        assignment=assignment,
        cosines=cosines,
        share=share,
        unassigned_share=float((assignment < 0).sum()) / max(m, 1),
        angular_spread=torch.stack(spread),
        centroid_angle=torch.stack(centroid),
        kmeans_angle=kmeans_angle,
    )


@dataclass(frozen=True)
class UnitVectorAlignment:
    """How the output vectors of each class line up with the coordinate unit vectors, the Output layer's anchors
    (003 sec. 3, Fig. 9(b)); item dimension first, then unit vectors.

    Attributes
    ----------
    cosines : Tensor
        ``(N, C)`` cos(z~(x_n), e~_j): the item's output vector and the unit vector of class j, both projected on
        the plane orthogonal to the constant vector 1 (see :func:`unit_vector_alignment`).
    labels : Tensor
        ``(N,)`` int64 class of every item.
    centroid_cosines : Tensor
        ``(C, C)`` cos(m~_c, e~_j) with m~_c the mean projected output vector of class c (the centre of its
        feature cluster); row c, unit vector j; a class without items has a row of nan.
    """

    cosines: Tensor
    labels: Tensor
    centroid_cosines: Tensor

    @property
    def own(self) -> Tensor:
        """``(N,)`` cosine of every item's output vector with its own class's unit vector."""
        return self.cosines.gather(1, self.labels.view(-1, 1)).squeeze(1)

    @property
    def nearest_other(self) -> Tensor:
        """``(N,)`` the largest cosine of every item's output vector with another class's unit vector."""
        others = self.cosines.scatter(1, self.labels.view(-1, 1), float("-inf"))
        return others.max(dim=1).values

    @property
    def pairing_errors(self) -> int:
        """Number of classes (with items) whose mean output vector is nearer (in angle) another unit vector."""
        rows = self.centroid_cosines
        present = ~rows.isnan().any(dim=1)
        best = rows.nan_to_num(float("-inf")).argmax(dim=1)
        return int((present & (best != torch.arange(rows.shape[0]))).sum())


def unit_vector_alignment(outputs: Tensor, labels: Tensor, num_classes: int | None = None) -> UnitVectorAlignment:
    """Alignment of output vectors with the coordinate unit vectors of their classes (003 sec. 3, Fig. 9(b)).

    The decision subnet of LeNet-5 ends in the Output layer, whose coordinate unit vectors e_1, ..., e_C are the
    class anchors: F6 should place the feature cluster of class c along e_c. The logits z are defined up to a
    constant vector (softmax(z + t 1) = softmax(z)), so both sides are compared on the plane orthogonal to 1:

    .. math::  \\tilde z = z - \\bar z \\mathbf{1}, \\quad \\tilde e_j = e_j - \\tfrac{1}{C} \\mathbf{1}, \\quad
               \\cos(\\tilde z, \\tilde e_j) = \\frac{\\tilde z_j}{\\|\\tilde z\\| \\sqrt{(C - 1) / C}}.

    A cosine of 1 means the output vector is a positive multiple of e~_c (the class's logit above all others, which
    are equal); two distinct e~_i, e~_j have cosine -1 / (C - 1).

    Parameters
    ----------
    outputs : Tensor
        ``(N, C)`` output vectors (logits) of N items.
    labels : Tensor
        ``(N,)`` their classes in ``[0, C)``.
    num_classes : int, optional
        C; defaults to ``outputs.shape[1]``, which it must equal.

    Returns
    -------
    UnitVectorAlignment
    """
    if not isinstance(outputs, Tensor) or outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(f"outputs must be a tensor of shape (N, C) with C >= 2 classes, received "
                         f"{tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__}")
    c = outputs.shape[1]
    if num_classes is not None and num_classes != c:
        raise ValueError(f"num_classes={num_classes} but outputs has {c} columns; pass the network's output "
                         "vectors (one column per class)")
    labels = torch.as_tensor(labels)
    if labels.shape != (outputs.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be an int64 tensor of shape ({outputs.shape[0]},), received "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"labels must lie in [0, {c}), received values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    scale = ((c - 1) / c) ** 0.5

    def cos(z: Tensor) -> Tensor:
        centred = z - z.mean(dim=1, keepdim=True)
        norms = torch.linalg.vector_norm(centred, dim=1, keepdim=True)
        return centred / (torch.where(norms > 0, norms, torch.ones_like(norms)) * scale)

    centroids = torch.full((c, c), float("nan"), dtype=outputs.dtype)
    for k in range(c):
        members = outputs[labels == k]
        if len(members):
            centroids[k] = members.mean(dim=0)
    centroid_cos = cos(centroids.nan_to_num(0.0))
    centroid_cos[centroids.isnan().any(dim=1)] = float("nan")
    return UnitVectorAlignment(cosines=cos(outputs), labels=labels, centroid_cosines=centroid_cos)
