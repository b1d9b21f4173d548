"""Windows of the selection operators: for each output unit, the inputs it selects one from (Prop. 3 of 000).

A max-like unit (max-pooling, adaptive max-pooling, a max/min reduction over dimensions, a running maximum) and an
order-statistic unit (sort, top-k, k-th value, median) output one element of a set of inputs, its *window*; the
region code of eq. 14 of 000 is the position of the selected element within the window. Each function here returns,
for a tensor ``t`` (N, *in_shape), the windows (N, *out_shape, K), K the largest window size, in a fixed order
(row-major within the window), with positions outside a window filled with ``fill`` (-inf for values, 0 for
tangents, -1 for indices). The same functions give the values (:mod:`._activations`), the boundaries of the segment
walk (:mod:`._segment`) and the input positions of the selected elements (:func:`selected_positions`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Windows", "adaptive_code", "adaptive_layout", "adaptive_windows", "fiber_windows", "pool_window_view",
           "pool_windows", "prefix_windows", "reduction_windows", "selected_positions"]

#: windows(t, fill) -> (N, *out_shape, K)
Windows = Callable[[Tensor, float], Tensor]


def pool_windows(h: Tensor, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], dil: tuple[int, ...],
                 ceil_mode: bool, fill: float) -> Tensor:
    """The max-pool windows of ``h`` (N, C, *spatial) as (N, C, *out, K), row-major within the window.

    Padding (and the extra right border of ``ceil_mode``) is filled with ``fill`` (-inf for values, 0 for
    tangents), so the window-relative index equals the one of :func:`torch.nn.functional.max_pool2d`.
    """
    view = pool_window_view(h, k, s, p, dil, ceil_mode, fill)
    return view.reshape(*view.shape[: 2 + len(k)], -1)


def pool_window_view(h: Tensor, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], dil: tuple[int, ...],
                     ceil_mode: bool, fill: float) -> Tensor:
    """The windows of :func:`pool_windows` as a strided view (N, C, *out, *k) of a padded copy of ``h``: overlapping
    windows are not copied."""
    d = len(k)
    spatial = h.shape[2:]
    outs = []
    pads: list[int] = []
    for i in range(d):
        span = dil[i] * (k[i] - 1) + 1
        num = spatial[i] + 2 * p[i] - span
        o = (-(-num // s[i]) if ceil_mode else num // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= spatial[i] + p[i]:
            o -= 1
        outs.append(o)
        extra = max(0, (o - 1) * s[i] + span - (spatial[i] + 2 * p[i]))
        pads = [p[i], p[i] + extra] + pads  # F.pad takes the last dimension first
    hp = F.pad(h, pads, value=fill)
    for i in range(d):
        span = dil[i] * (k[i] - 1) + 1
        hp = hp.unfold(2 + i, span, s[i])
        if dil[i] > 1:
            hp = hp[..., ::dil[i]]
        hp = hp.narrow(2 + i, 0, outs[i])
    return hp


@functools.lru_cache(maxsize=64)
def adaptive_layout(in_sizes: tuple[int, ...], out_sizes: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor,
                                                                                      tuple[int, ...]]:
    """(positions, valid, starts, kmax) of adaptive pooling from ``in_sizes`` to ``out_sizes`` (cached).

    Output cell j of a dimension of size L -> O covers inputs ``[floor(j L / O), ceil((j + 1) L / O))`` (PyTorch's
    rule). The windows are laid out in the box of the largest window size per dimension (``kmax``), row-major:
    ``positions`` (*out, K) holds the flat spatial input index of each box position (0 where ``valid`` is False),
    ``starts`` (d, max(out)) the first input index of each cell per dimension.
    """
    d = len(in_sizes)
    per_dim, valids, starts, kmax = [], [], [], []
    for L, O in zip(in_sizes, out_sizes, strict=True):
        j = torch.arange(O)
        start = torch.div(j * L, O, rounding_mode="floor")
        end = torch.div((j + 1) * L + O - 1, O, rounding_mode="floor")
        k = int((end - start).max())
        m = torch.arange(k)
        per_dim.append(start[:, None] + m[None, :])
        valids.append(m[None, :] < (end - start)[:, None])
        starts.append(start)
        kmax.append(k)
    strides = [math.prod(in_sizes[i + 1:]) for i in range(d)]
    pos = torch.zeros((), dtype=torch.int64)
    valid = torch.ones((), dtype=torch.bool)
    for i in range(d):
        # dims: out_0..out_{d-1}, k_0..k_{d-1}; dimension i contributes to out_i and k_i
        shape = [1] * (2 * d)
        shape[i] = out_sizes[i]
        shape[d + i] = kmax[i]
        pos = pos + (per_dim[i] * strides[i]).view(shape)
        valid = valid & valids[i].view(shape)
    pos = torch.where(valid, pos, 0).reshape(*out_sizes, -1)
    start_table = torch.zeros(d, max(out_sizes), dtype=torch.int64)
    for i in range(d):
        start_table[i, : out_sizes[i]] = starts[i]
    return pos, valid.reshape(*out_sizes, -1), start_table, tuple(kmax)


def adaptive_windows(t: Tensor, out_sizes: tuple[int, ...], fill: float) -> Tensor:
    """The adaptive max-pool windows of ``t`` (N, C, *spatial) as (N, C, *out, K), row-major in the largest box."""
    pos, valid, _, _ = adaptive_layout(tuple(t.shape[2:]), tuple(out_sizes))
    win = t.flatten(2)[:, :, pos.reshape(-1)].view(*t.shape[:2], *pos.shape)
    return win.masked_fill(~valid, fill)


def adaptive_code(idx: Tensor, in_sizes: tuple[int, ...], out_sizes: tuple[int, ...]) -> Tensor:
    """The box-relative index of PyTorch's flat adaptive max-pool index ``idx`` (N, C, *out)."""
    _, _, starts, kmax = adaptive_layout(tuple(in_sizes), tuple(out_sizes))
    d = len(in_sizes)
    code = torch.zeros_like(idx)
    rem = idx
    for i in range(d):
        stride = math.prod(in_sizes[i + 1:])
        coord = torch.div(rem, stride, rounding_mode="floor")
        rem = rem - coord * stride
        shape = [1] * idx.dim()
        shape[2 + i] = out_sizes[i]
        code = code * kmax[i] + (coord - starts[i, : out_sizes[i]].view(shape))
    return code


def reduction_windows(t: Tensor, dims: tuple[int, ...], keepdim: bool, fill: float = 0.0) -> Tensor:
    """The windows of a reduction of ``t`` over ``dims`` (all >= 1): (N, *out, K), row-major over ``dims``.

    ``out`` is ``t``'s shape without ``dims`` (with ones in their place when ``keepdim``). No position is padded, so
    ``fill`` is unused (it is accepted like by the other window functions).
    """
    kept = [i for i in range(t.dim()) if i not in dims]
    win = t.permute(*kept, *dims)
    out = [t.shape[i] if i not in dims else 1 for i in range(t.dim())] if keepdim else [t.shape[i] for i in kept]
    return win.reshape(*out, -1)


def prefix_windows(t: Tensor, dim: int, fill: float) -> Tensor:
    """The windows of a running maximum along ``dim``: output i selects from inputs 0..i -> (N, *shape, L)."""
    moved = t.movedim(dim, -1)
    size = moved.shape[-1]
    win = moved.unsqueeze(-2).expand(*moved.shape[:-1], size, size)
    later = torch.ones(size, size, dtype=torch.bool).triu(1)  # [i, j]: j > i is outside window i
    return win.masked_fill(later, fill).movedim(-2, dim)


def fiber_windows(t: Tensor, dim: int, count: int, keep: bool, fill: float = 0.0) -> Tensor:
    """The windows of an order statistic along ``dim``: every output selects from the whole fiber (N, *out, L).

    ``count`` outputs per fiber (L for sort, k for top-k, 1 for k-th value and median); ``keep``: whether ``dim``
    stays in the output (sort, top-k, keepdim=True); otherwise ``count`` must be 1. ``fill`` is unused.
    """
    moved = t.movedim(dim, -1)
    if not keep:
        return moved
    win = moved.unsqueeze(-2).expand(*moved.shape[:-1], count, moved.shape[-1])
    return win.movedim(-2, dim)


def selected_positions(windows: Windows, in_shape: tuple[int, ...], code: Tensor) -> Tensor:
    """Flat per-sample input index of the element that each output selects: (N, *out) int64.

    ``code`` (N, *out) holds the window-relative index of the selected element (the region code).
    """
    grid = torch.arange(math.prod(in_shape), dtype=torch.float64).view(1, *in_shape)
    index = windows(grid, fill=-1.0).long()
    return index.expand(code.shape[0], *index.shape[1:]).gather(-1, code.long().unsqueeze(-1)).squeeze(-1)
