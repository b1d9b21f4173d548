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

__all__ = ["ClusterView", "cluster_view"]


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
