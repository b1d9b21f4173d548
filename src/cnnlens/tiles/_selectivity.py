"""How mono- or polysemantic hidden units are (sec. 6.2 and sec. 7 of 002).

For a layer with non-negative outputs (a ReLU), unit ``u`` (a channel of a 4-D output, summed over positions, or
a neuron of a 2-D output) and groups ``g`` of inputs (classes by default, or planted tiles):

.. math::

    M_{ug} = \\sum_{x \\in g} \\sum_{\\text{positions}} \\mathrm{act}_u(x), \\qquad
    \\mathrm{sel}_u = \\max_g M_{ug} / \\sum_g M_{ug},

the share of the unit's activation mass that comes from its top group: 1 for a *monosemantic* unit that only
fires for one group, ``1 / G`` for a unit that fires equally for all. Units that never fire on the data are
reported as dead and left out of the summary, which is the mass-weighted mean
``sum_u max_g M_ug / sum_ug M_ug``.

The activations are read by :func:`cnnlens.spline.activations` (the one place in cnnlens that looks inside a model),
so a layer is named as in :func:`cnnlens.spline.partition_codes` (a ReLU module's path, or ``"relu_0"`` for a
functional ``F.relu``) and ``act_u`` is: for a ReLU-like layer ``relu(u)`` with ``u`` the pre-activation whose sign is
the unit's code (the ReLU's output; for leaky ReLU / PReLU / abs / maximum the amount by which the unit is in its
active piece); for a clamp / hardtanh layer its output ``clamp(h, lo, hi)``; for a max-pool layer the pooled value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..spline import Activations, activations
from ._model import _describe

__all__ = ["Selectivity", "neuron_selectivity"]


@dataclass
class Selectivity:
    """Per-unit selectivity of one layer.

    Attributes
    ----------
    per_unit : Tensor
        float64 ``(U,)``, ``max_g M_ug / sum_g M_ug`` (NaN for dead units).
    top_group : Tensor
        int64 ``(U,)``, the group with the most mass (-1 for dead units).
    mass : Tensor
        float64 ``(U, G)``, the activation mass ``M_ug``.
    mean : float
        Mass-weighted mean selectivity over the live units.
    live_units : int
        Units with positive mass.
    """

    per_unit: Tensor
    top_group: Tensor
    mass: Tensor
    mean: float
    live_units: int


def _inputs(data: object) -> tuple[Tensor, Tensor]:
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels  # type: ignore[attr-defined]
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(v, Tensor) for v in data):
        return data[0], data[1]
    raise TypeError(
        f"data must be a data set with .images and .labels or a pair (images, labels); received {_describe(data)}."
    )


@torch.no_grad()
def neuron_selectivity(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    groups: Tensor | None = None,
    batch_size: int = 256,
) -> Selectivity:
    """Selectivity of the units of ``layer`` (module docstring).

    Parameters
    ----------
    model : nn.Module
    data : ArrayDataset or (images, labels)
    layer : str
        A layer name of :func:`cnnlens.spline.partition_codes` (``list(partition_codes(model, x))``), e.g. the path
        of a ReLU module; clamp and max-pool layers must have non-negative outputs.
    groups : int64 Tensor of shape (N,), optional
        Group of each input (default: the labels), e.g. ``data.tile_ids`` of a :class:`TileDataset`.
    batch_size : int
        Inputs per forward pass (does not change the result).

    Returns
    -------
    Selectivity
    """
    images, labels = _inputs(data)
    group = labels if groups is None else torch.as_tensor(groups, dtype=torch.int64)
    if group.shape != (images.shape[0],):
        raise ValueError(f"groups must have shape ({images.shape[0]},); received shape {tuple(group.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("neuron_selectivity needs at least one input.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
    num_groups = int(group.max()) + 1
    mass = torch.zeros(0, dtype=torch.float64)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else images.dtype
    try:
        for start in range(0, images.shape[0], batch_size):
            xb = images[start : start + batch_size].to(dtype)
            if start == 0:  # all layers once, to name them if ``layer`` is not one of them
                acts = activations(model, xb)
                if layer not in acts:
                    raise ValueError(f"unknown layer {layer!r}; the model's layers (as named by partition_codes: "
                                     f"its ReLU-like, clamp and max-pool layers) are {list(acts)}.")
            else:
                acts = activations(model, xb, layers=[layer])
            act = _unit_activation(acts, layer)
            per_unit = act.sum(tuple(range(2, act.ndim))) if act.ndim > 2 else act.reshape(act.shape[0], -1)
            onehot = nn.functional.one_hot(group[start : start + batch_size], num_groups).to(torch.float64)
            part = per_unit.T @ onehot
            mass = part if mass.numel() == 0 else mass + part
    finally:
        model.train(was_training)
    total = mass.sum(1)
    live = total > 0
    top = mass.max(1)
    per = torch.where(live, top.values / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    mean = float(top.values[live].sum() / total[live].sum()) if bool(live.any()) else float("nan")
    return Selectivity(per, torch.where(live, top.indices, torch.full_like(top.indices, -1)), mass, mean,
                       int(live.sum()))


def _unit_activation(acts: Activations, layer: str) -> Tensor:
    """float64 ``act_u`` of ``layer`` (module docstring), shape (N, *unit_shape); non-negative."""
    kind, value = acts.kinds[layer], acts[layer].to(torch.float64)
    if kind == "binary":
        return value.clamp_min(0)
    if kind == "ternary":
        lo, hi = acts.bounds[layer]
        act = torch.clamp(value, lo.to(torch.float64), hi.to(torch.float64))
    elif kind == "piecewise":
        act = acts.pieces[layer](value)
    elif kind == "rank":
        act = value.sort(-1, descending=True).values.gather(-1, acts.ranks[layer].expand(value.shape[:-1])[..., None])
        act = act.squeeze(-1)
    else:
        act = value.amax(-1)
    if float(act.min()) < 0:
        raise ValueError(
            f"layer {layer!r} has negative outputs (min {float(act.min()):.3g}); selectivity needs non-negative "
            "activations: pass the name of a ReLU layer (see partition_codes) instead."
        )
    return act
