"""Pre-activations of every max-affine layer: the quantities whose signs are the partition codes (eq. 14 of 000).

At layer l the region code t^(l)(x) of eq. 14 of 000 is the index of the active piece of each unit. Its argument is
a pre-activation that :func:`activations` returns, so that the code is a sign (binary and ternary layers), a piece
index (elementwise piecewise layers), an argmax (max-like layers) or a rank position (order statistics) of it, with
the tie rule of :mod:`cnnlens.spline._capture`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._capture import Entry
from ._codes import _batches, _record, _select
from ._ops import Pieces

__all__ = ["Activations", "activations"]


class Activations(dict[str, Tensor]):
    """Layer name -> pre-activation tensor (forward order), as returned by :func:`activations`.

    Attributes
    ----------
    kinds : dict of str to str
        Layer name -> ``"binary"``, ``"ternary"``, ``"piecewise"``, ``"argmax"`` or ``"rank"`` (the kinds of
        :class:`LayerCode`).
    bounds : dict of str to (Tensor, Tensor)
        Ternary layer name -> ``(lo, hi)``, the clamp bounds (0-dim or broadcastable to the unit shape).
    pieces : dict of str to Pieces
        Piecewise layer name -> its :class:`cnnlens.spline.Pieces` (breakpoints, slopes, offsets, ties): the code is
        ``pieces.code(h)`` and the layer's output ``pieces(h)``.
    ranks : dict of str to Tensor
        Rank layer name -> the rank of every output unit (int64, the unit shape): the code is the index of the
        element at that rank in the stable descending order of the window.
    """

    kinds: dict[str, str]
    bounds: dict[str, tuple[Tensor, Tensor]]
    pieces: dict[str, Pieces]
    ranks: dict[str, Tensor]

    def __init__(self, values: dict[str, Tensor], kinds: dict[str, str],
                 bounds: dict[str, tuple[Tensor, Tensor]] | None = None, pieces: dict[str, Pieces] | None = None,
                 ranks: dict[str, Tensor] | None = None) -> None:
        super().__init__(values)
        self.kinds = dict(kinds)
        self.bounds = dict(bounds or {})
        self.pieces = dict(pieces or {})
        self.ranks = dict(ranks or {})


def _pre_activation(entry: Entry) -> Tensor:
    if entry.kind == "binary":
        return entry.probe["u"]
    if entry.kind in ("ternary", "piecewise"):
        return entry.probe["h"]
    return entry.probe["windows"](entry.probe["h"], fill=float("-inf"))


def activations(model: Callable[[Tensor], Tensor], x: Tensor | Dataset, layers: Sequence[str | int] | None = None,
                *, batch_size: int = 256) -> Activations:
    """Pre-activations of every max-affine layer, keyed like :func:`partition_codes` (eq. 14 of 000).

    The region code of eq. 14 of 000 at layer l is read off these tensors (tie rule of
    :mod:`cnnlens.spline._capture`):

    .. math::

        t^{(l)}_u(x) = \\mathbb{1}[u^{(l)}_u(x) > 0] \\;\\text{(binary)}, \\qquad
        t^{(l)}_u(x) = \\begin{cases} 0 & h \\le lo \\\\ 2 & h \\ge hi \\\\ 1 & \\text{else} \\end{cases}
        \\;\\text{(ternary)}, \\qquad
        t^{(l)}_u(x) = \\operatorname{argmax}_k w^{(l)}_{u,k}(x) \\;\\text{(max-like)}.

    The model is run once per batch under the capture of :mod:`cnnlens.spline._capture` (probe mode), so module
    and functional nonlinearities (``nn.ReLU``, ``F.relu``, ``x.clamp(min=0)``, ``torch.maximum``, ...) are all
    seen, in the order the forward pass really runs them; for in-place ops the value before the op is returned.

    Parameters
    ----------
    model : callable
        A piecewise-affine model in eval mode (see :func:`affine_map`).
    x : Tensor (N, *in_shape) or Dataset
        Inputs; a Dataset (items (x, y)) is run in batches of ``batch_size``.
    layers : sequence of str or int, optional
        Layer names or positions to keep (default all), as in :func:`partition_codes`.
    batch_size : int
        Samples per forward pass (does not change the result).

    Returns
    -------
    Activations
        A dict layer name -> Tensor, in forward order, with the same keys as ``partition_codes(model, x, layers)``
        (``.kinds`` gives each layer's kind):

        * binary layers (ReLU, leaky ReLU, PReLU, abs, one-sided clamp, maximum/minimum): the quantity ``u`` whose
          sign is the code bit (``u > 0`` is the active piece), shape (N, *unit_shape): the input ``h`` for ReLU,
          leaky ReLU, PReLU and abs; ``h - lo`` for ``clamp(min=lo)``; ``hi - h`` for ``clamp(max=hi)``;
          ``a - b`` for ``maximum(a, b)`` and ``b - a`` for ``minimum(a, b)``. The ReLU's output is ``relu(u)``.
        * ternary layers (two-sided clamp, hardtanh, relu6): the input ``h``, shape (N, *unit_shape); the code is
          0 for ``h <= lo``, 2 for ``h >= hi`` and 1 in between (``.bounds[name]`` is ``(lo, hi)``).
        * piecewise layers (Hardsigmoid, Hardshrink, Softshrink, Threshold, registered ElementwisePiecewise ops):
          the input ``h``, shape (N, *unit_shape); the code is the piece index ``.pieces[name].code(h)`` and the
          output ``.pieces[name](h)``.
        * argmax layers (max-pooling, adaptive max-pooling, amax / max over dimensions, cummax): the windows, shape
          (N, *out_shape, K) with K the window size, row-major within the window (for adaptive pooling: within the
          box of the largest window; for a reduction: over the reduced dimensions in increasing order) and
          positions outside a window filled with -inf; ``argmax`` over the last dimension (first index on ties) is
          the code and ``amax`` the output. Min-like layers (amin, min over a dimension, cummin) give the windows
          of ``-h``, so the same holds (their output is ``-amax``).
        * rank layers (values of sort, top-k, k-th value, median): the fiber along the sorted dimension for every
          output, shape (N, *out_shape, L); the code is the index of the element of rank ``.ranks[name]`` in the
          stable descending order of the last dimension (lower index first on ties). Ascending orders (sort,
          k-th value, median, topk(largest=False)) give the fibers of ``-h``.

    Raises
    ------
    ValueError, TypeError
        For invalid inputs or models, with the messages of :func:`partition_codes`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
    parts: list[dict[str, Tensor]] = []
    kinds: dict[str, str] = {}
    bounds: dict[str, tuple[Tensor, Tensor]] = {}
    pieces: dict[str, Pieces] = {}
    ranks: dict[str, Tensor] = {}
    for xb in _batches(x, batch_size):
        entries = _select(_record(model, xb, probe=True).entries, layers)
        if parts and [e.name for e in entries] != list(parts[0]):
            raise ValueError(f"the model met the layers {[e.name for e in entries]} on one batch and {list(parts[0])} "
                             "on another: its control flow depends on the input values, so the layers cannot be "
                             "stacked over batches. Pass batch_size >= the number of samples.")
        parts.append({e.name: _pre_activation(e) for e in entries})
        kinds = {e.name: e.kind for e in entries}
        bounds = {e.name: (e.probe["lo"], e.probe["hi"]) for e in entries if e.kind == "ternary"}
        pieces = {e.name: e.probe["pieces"] for e in entries if e.kind == "piecewise"}
        ranks = {e.name: e.probe["ranks"] for e in entries if e.kind == "rank"}
    if not parts:
        raise ValueError("x holds no samples; pass at least one.")
    values = parts[0] if len(parts) == 1 else {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return Activations(values, kinds, bounds, pieces, ranks)
