"""Exact region boundaries crossed by a straight path x0 -> x1 (beyond 000: a walk through the spline partition).

Inside one region the network is affine (eq. 9 of 000), so along ``x(t) = x0 + t (x1 - x0)`` every pre-activation,
clamp input and pooled value is affine in t. One forward-mode pass (value and derivative d/dt with the region's
pieces held fixed) therefore gives, for every unit, the exact step to its next boundary: a ReLU-like zero crossing,
a clamp threshold, a breakpoint of an elementwise piecewise unit (Hardsigmoid, Hardshrink, ...), the next argmax
switch inside a window (max-pooling, adaptive max-pooling, max over dimensions, running max), or the next crossing
of the element an order statistic (sort, top-k, median) selects. The walk jumps to the nearest one, re-reads the
region just past it, and repeats. Unlike SplineCam (no max-pool, no residuals) it handles every part the capture
supports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ._capture import Entry, capture, check_model_input, run_captured

__all__ = ["SegmentRegions", "regions_on_segment"]


@dataclass(frozen=True)
class SegmentRegions:
    """Regions met along ``x0 + t (x1 - x0)``, t in [0, 1].

    Attributes
    ----------
    breakpoints : Tensor (K,) float64
        Sorted t in (0, 1) where the path crosses a region boundary of some layer.
    layers : list of str
        For each breakpoint, the layer whose boundary is crossed (the first one in forward order on exact ties).
    num_regions : int
        ``K + 1``: the number of regions the open segment passes through.
    """

    breakpoints: Tensor
    layers: list[str]
    num_regions: int


def _tangent(t: Tensor) -> tuple[Tensor, Tensor]:
    primal, tangent = fwAD.unpack_dual(t)
    return primal, torch.zeros_like(primal) if tangent is None else tangent


def _step(entry: Entry) -> Tensor:  # noqa: C901 - one rule per kind
    """Smallest step s >= 0 (in t) until a unit of this layer changes piece, given value and derivative."""
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    if entry.kind == "binary":
        u, du = _tangent(entry.probe["u"])
        active = entry.states
        moving = torch.where(active, du < 0, du > 0)
        s = torch.where(moving, -u / torch.where(du == 0, torch.ones_like(du), du), inf)
    elif entry.kind == "ternary":
        h, dh = _tangent(entry.probe["h"])
        lo, hi = entry.probe["lo"], entry.probe["hi"]
        state = entry.states
        safe = torch.where(dh == 0, torch.ones_like(dh), dh)
        to_lo = (lo - h) / safe
        to_hi = (hi - h) / safe
        s = torch.full_like(h, float("inf"))
        s = torch.where((state == 0) & (dh > 0), to_lo, s)
        s = torch.where((state == 2) & (dh < 0), to_hi, s)
        s = torch.where((state == 1) & (dh > 0), to_hi, s)
        s = torch.where((state == 1) & (dh < 0), to_lo, s)
    elif entry.kind == "piecewise":  # the breakpoints below and above every unit's piece
        h, dh = _tangent(entry.probe["h"])
        lo, hi = entry.probe["pieces"].bounds(entry.states.long(), h.dtype)
        safe = torch.where(dh == 0, torch.ones_like(dh), dh)
        s = torch.where(dh > 0, (hi - h) / safe, torch.where(dh < 0, (lo - h) / safe, inf))
    else:  # argmax, rank: the selected element meets another element of its window
        h, dh = _tangent(entry.probe["h"])
        windows = entry.probe["windows"]
        v = windows(h, fill=float("-inf"))
        dv = windows(dh, fill=0.0)
        sel = entry.states.long().unsqueeze(-1)
        v_sel, dv_sel = v.gather(-1, sel), dv.gather(-1, sel)
        gain = dv - dv_sel
        if entry.kind == "argmax":  # only elements below the maximum that rise faster can overtake it
            s = torch.where(gain > 0, (v_sel - v) / torch.where(gain > 0, gain, torch.ones_like(gain)), inf)
        else:  # any element crossing the selected one changes its rank
            meet = (v_sel - v) / torch.where(gain == 0, torch.ones_like(gain), gain)
            s = torch.where((gain != 0) & (meet >= 0), meet, inf)
    return s.clamp_min(0).amin() if s.numel() else inf


def regions_on_segment(model: Callable[[Tensor], Tensor], x0: Tensor, x1: Tensor, *, min_step: float = 1e-9,
                       max_regions: int = 100_000) -> SegmentRegions:
    """Exact breakpoints where the path ``x0 + t (x1 - x0)``, t in [0, 1], crosses a region boundary of any layer.

    Computed in float64 (the model is copied to float64 when needed). Each step is one forward-mode pass with
    the current region's pieces fixed; the next breakpoint is the nearest zero crossing, clamp threshold or
    max-pool argmax switch (tie rule as in :mod:`cnnlens.spline._capture`).

    Parameters
    ----------
    model : callable
        Piecewise-affine model in eval mode.
    x0, x1 : Tensor (*in_shape)
        End points, one sample each without the batch dimension (e.g. ``x[0]`` and ``x[1]``).
    min_step : float
        After a breakpoint the next region is read at ``t + min_step``: regions thinner than this (in t) are not
        resolved.
    max_regions : int
        Safety bound on the number of regions (raises ValueError beyond).

    Returns
    -------
    SegmentRegions
        Breakpoints, the layer crossed at each, and the number of regions.
    """
    if not isinstance(x0, Tensor) or not isinstance(x1, Tensor):
        raise TypeError(f"x0 and x1 must be tensors; received {type(x0).__name__} and {type(x1).__name__}.")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape; received {tuple(x0.shape)} and {tuple(x1.shape)}.")
    if not 0 < min_step < 1e-3:
        raise ValueError(f"min_step must lie in (0, 1e-3); received {min_step}.")
    if isinstance(model, nn.Module) and any(p.dtype != torch.float64 for p in model.parameters()):
        model = copy.deepcopy(model).double()
    a, b = x0[None].double(), x1[None].double()
    check_model_input(model, torch.cat([a, b]), what="x0/x1")
    direction = b - a
    breakpoints: list[float] = []
    layers: list[str] = []
    t = 0.0
    while True:
        t_eval = t + min_step
        if t_eval >= 1.0:
            break
        with torch.no_grad(), fwAD.dual_level():
            with capture(model, graph=True, probe=True) as cap:
                run_captured(cap, model, fwAD.make_dual(a + t_eval * direction, direction))
            steps = [_step(e) for e in cap.entries]
        if not steps:
            break
        s = torch.stack(steps)
        k = int(torch.argmin(s))
        t_next = t_eval + float(s[k])
        if t_next >= 1.0:
            break
        breakpoints.append(t_next)
        layers.append(cap.entries[k].name)
        if len(breakpoints) >= max_regions:
            raise ValueError(f"the segment crosses more than {max_regions} regions; raise max_regions or shorten "
                             "the segment.")
        t = t_next
    return SegmentRegions(torch.tensor(breakpoints, dtype=torch.float64), layers, len(breakpoints) + 1)
