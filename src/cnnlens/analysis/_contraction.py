"""Progressive contraction and separation: intra- and inter-class distances per depth (eqs. 16-17 of 001).

A network that generalises well should contract the distances within a class and keep the classes apart:

    ||Phi_j x_i - Phi_j x_k|| <= ||x_i - x_k||   if f(x_i) = f(x_k)                       (eq. 16 of 001)
    exists eps > 0:  f(x_i) != f(x_k)  =>  ||Phi_j x_i - Phi_j x_k|| > eps                   (eq. 17 of 001)

Over every pair of a sample set this module measures, per layer j: the mean distance of the same-class pairs
(intra), of the different-class pairs (inter), their ratio intra / inter (scale-free: < the input's ratio means the
classes contracted relative to their separation), the share of same-class pairs for which eq. 16 holds, and the
smallest different-class distance (the largest eps of eq. 17 on the sample). Pairs are visited block by block: two
batches of features are held at a time, never the features of the whole set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._features import Data, batch_features, check_batch_size, images_and_labels, layer_list

__all__ = ["Contraction", "contraction"]


@dataclass(frozen=True)
class Contraction:
    """Distances between the representations of all pairs of samples, per layer (eqs. 16-17 of 001).

    Attributes
    ----------
    intra, inter : mean ||Phi_j x_i - Phi_j x_k|| over the same-class / different-class pairs.
    ratio : intra / inter.
    eq16_fraction : share of the same-class pairs with ||Phi_j x_i - Phi_j x_k|| <= ||x_i - x_k|| (eq. 16).
    margin : min ||Phi_j x_i - Phi_j x_k|| over the different-class pairs (the largest eps of eq. 17).
    input_intra, input_inter, input_ratio : the same on the inputs x (depth 0).
    n_intra, n_inter : numbers of same-class and different-class pairs.
    """

    layers: tuple[str, ...]
    intra: tuple[float, ...]
    inter: tuple[float, ...]
    ratio: tuple[float, ...]
    eq16_fraction: tuple[float, ...]
    margin: tuple[float, ...]
    input_intra: float
    input_inter: float
    input_ratio: float
    n_intra: int
    n_inter: int
    spatial_average: bool


@dataclass
class _Sums:
    intra: float = 0.0
    inter: float = 0.0
    contracted: int = 0
    margin: float = float("inf")


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between the rows of a and b, in float64, without the |a|^2 + |b|^2 - 2ab shortcut."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def _pair_statistics(names: Sequence[str], feats_a: dict[str, Tensor], feats_b: dict[str, Tensor], y_a: Tensor,
                     y_b: Tensor, x_a: Tensor, x_b: Tensor, same_block: bool,
                     sums: dict[str, _Sums]) -> tuple[int, int]:
    """Add the pairs (i in block a, k in block b) to ``sums`` (i < k when the blocks are the same); returns the
    numbers of same-class and different-class pairs added."""
    pairs = torch.ones(len(y_a), len(y_b), dtype=torch.bool)
    if same_block:
        pairs = torch.triu(pairs, diagonal=1)
    same = (y_a[:, None] == y_b[None, :]) & pairs
    other = (y_a[:, None] != y_b[None, :]) & pairs
    d_input = _distances(x_a.reshape(len(x_a), -1), x_b.reshape(len(x_b), -1))
    for name in names:
        d = d_input if name == "" else _distances(feats_a[name], feats_b[name])
        s = sums[name]
        s.intra += float(d[same].sum())
        s.inter += float(d[other].sum())
        s.contracted += int((d[same] <= d_input[same]).sum())
        if bool(other.any()):
            s.margin = min(s.margin, float(d[other].min()))
    return int(same.sum()), int(other.sum())


def contraction(model: nn.Module, data: Data, layers: Sequence[str], *, spatial_average: bool = False,
                batch_size: int = 256) -> Contraction:
    """Intra- and inter-class distances of the representations Phi_j of ``layers`` over all pairs of ``data``
    (eqs. 16-17 of 001; see the module docstring for each quantity).

    Parameters
    ----------
    model : nn.Module
        Any network (read in eval mode).
    data : Dataset or (images, labels)
        The samples; every pair is visited (N (N - 1) / 2 pairs: pass a class-stratified subset,
        :func:`cnnlens.data.stratified_subset`, of a few hundred to a few thousand samples).
    layers : sequence of str
        Module paths in depth order.
    spatial_average : bool
        False (default): Phi_j x as it is, flattened, as in eq. 16; True: its spatial average (the features of
        Fig. 21).
    batch_size : int
        Samples per block; two blocks of features are held at a time (the forward passes of a block are repeated
        for each later block, (N / batch_size)^2 / 2 passes in all).
    """
    check_batch_size(batch_size)
    layers = layer_list(layers)
    images, labels = images_and_labels(data)
    if len(torch.unique(labels)) < 2:
        raise ValueError("contraction needs samples of at least two classes (inter-class pairs).")
    names = ["", *layers]
    sums = {n: _Sums() for n in names}
    starts = list(range(0, len(labels), batch_size))
    n_intra = n_inter = 0
    for i, a in enumerate(starts):
        x_a, y_a = images[a:a + batch_size], labels[a:a + batch_size]
        feats_a = batch_features(model, x_a, layers, spatial_average=spatial_average)
        for b in starts[i:]:
            x_b, y_b = images[b:b + batch_size], labels[b:b + batch_size]
            feats_b = feats_a if b == a else batch_features(model, x_b, layers, spatial_average=spatial_average)
            k_same, k_other = _pair_statistics(names, feats_a, feats_b, y_a, y_b, x_a, x_b, b == a, sums)
            n_intra += k_same
            n_inter += k_other
    if n_intra == 0:
        raise ValueError("no two samples share a class, so there are no intra-class pairs; pass more samples.")
    intra = [sums[n].intra / n_intra for n in names]
    inter = [sums[n].inter / n_inter for n in names]
    ratio = [i / o if o > 0 else float("nan") for i, o in zip(intra, inter, strict=True)]
    return Contraction(tuple(layers), tuple(intra[1:]), tuple(inter[1:]), tuple(ratio[1:]),
                       tuple(sums[n].contracted / n_intra for n in layers), tuple(sums[n].margin for n in layers),
                       intra[0], inter[0], ratio[0], n_intra, n_inter, spatial_average)

