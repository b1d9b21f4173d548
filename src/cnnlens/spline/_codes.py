"""Per-layer partition codes t^(l)(x) of eq. 14 of 000, packed, and the units that sit on a region boundary.

At every max-affine layer l the region code of x is the index of the active piece of each unit (eq. 14 of 000):
one bit per unit for ReLU-like units (ReLU, leaky ReLU, RReLU in eval mode, PReLU, abs, one-sided clamp, maximum),
three states for a two-sided clamp / hardtanh (0 below, 1 linear, 2 above), the piece index for elementwise
piecewise-affine units (Hardsigmoid, Hardshrink, Softshrink, Threshold, user rules), the window-relative argmax for
max-pooling, adaptive max-pooling, max/min over dimensions and running maxima, and the index of the selected element
for order statistics (sort, top-k, k-th value, median). Ties follow the rule of :mod:`cnnlens.spline._capture`
(ReLU(0) inactive, first index of the maximum, stable order), the same rule as the affine map and the region walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._capture import Capture, Entry, capture, check_model_input, run_captured
from ._distributed import distributed_active, sharded_partition_codes
from ._windows import pool_windows

__all__ = ["LayerCode", "PartitionCodes", "boundary_units", "partition_codes", "pool_windows"]


@dataclass(frozen=True)
class LayerCode:
    """Region codes of one layer for N samples (eq. 14 of 000).

    Attributes
    ----------
    name : str
        Layer name: the module path for nonlinearity modules ("act1", "features.2", a second call of the same module
        gets ":1"), "<op>_<k>" for functional calls in forward order ("relu_3", "max_pool2d_0").
    kind : str
        "binary" (1 = active piece: pre-activation > 0), "ternary" (0 below / 1 linear / 2 above), "piecewise" (the
        piece index of an elementwise piecewise-affine unit, pieces ordered by their breakpoints), "argmax"
        (row-major index of the maximum within the window: pooling window, reduced dimensions, prefix of a running
        max; first index on ties) or "rank" (index along the dimension of the element an order statistic selects,
        stable order on ties).
    shape : tuple of int
        Per-sample unit shape, e.g. (C, H, W).
    num_states : int
        2, 3, the number of pieces, or the window size.
    data : Tensor
        binary: uint8 (N, ceil(U/8)) bits packed MSB-first like ``numpy.packbits(axis=1)`` (zero padding bits);
        other kinds: (N, U) states, uint8 when num_states <= 256, int16 up to 32768 states, int32 above.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_states: int
    data: Tensor

    @property
    def num_units(self) -> int:
        """Number of units U (product of ``shape``)."""
        return int(np.prod(self.shape, dtype=np.int64))

    def states(self) -> Tensor:
        """The unpacked states as int64 (N, U), for every kind."""
        if self.kind == "binary":
            bits = np.unpackbits(self.data.cpu().numpy(), axis=1, count=self.num_units)
            return torch.from_numpy(bits.astype(np.int64))
        return self.data.long()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, idx: int | slice | Tensor | Sequence[int]) -> LayerCode:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return LayerCode(self.name, self.kind, self.shape, self.num_states, self.data[idx])


class PartitionCodes(Mapping[str, LayerCode]):
    """Ordered mapping layer name -> :class:`LayerCode` (forward order); index by name or by position."""

    def __init__(self, layers: Sequence[LayerCode]) -> None:
        self._layers = {code.name: code for code in layers}
        sizes = {len(code) for code in layers}
        if len(sizes) > 1:
            raise ValueError(f"all layers must hold the same number of samples; received sizes {sorted(sizes)}.")
        self.num_samples = sizes.pop() if sizes else 0

    def __getitem__(self, key: str | int) -> LayerCode:
        if isinstance(key, int):
            names = list(self._layers)
            if not -len(names) <= key < len(names):
                raise IndexError(f"layer position {key} out of range for {len(names)} layers {names}.")
            return self._layers[names[key]]
        if key not in self._layers:
            raise KeyError(f"no layer named {key!r}; the layers are {list(self._layers)}.")
        return self._layers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        inner = ", ".join(f"{c.name}: {c.kind} {c.shape}" for c in self._layers.values())
        return f"PartitionCodes({self.num_samples} samples; {inner})"

    @staticmethod
    def cat(parts: Sequence[PartitionCodes]) -> PartitionCodes:
        """Concatenate codes of the same layers along the samples (streaming over a data set)."""
        if not parts:
            raise ValueError("PartitionCodes.cat needs at least one PartitionCodes; received an empty sequence.")
        names = list(parts[0])
        for p in parts[1:]:
            if list(p) != names:
                raise ValueError(f"cannot concatenate codes of different layers: {names} vs {list(p)}.")
        return PartitionCodes([
            LayerCode(n, parts[0][n].kind, parts[0][n].shape, parts[0][n].num_states,
                      torch.cat([p[n].data for p in parts])) for n in names])


def _state_dtype(num_states: int) -> torch.dtype:
    """The smallest integer dtype that holds states 0..num_states-1."""
    if num_states <= 256:
        return torch.uint8
    return torch.int16 if num_states <= 32768 else torch.int32


def _pack(entry: Entry) -> LayerCode:
    n = entry.states.shape[0]
    flat = entry.states.reshape(n, -1)
    if entry.kind == "binary":
        data = torch.from_numpy(np.packbits(flat.numpy(), axis=1))
    else:
        data = flat.to(_state_dtype(entry.num_states))
    return LayerCode(entry.name, entry.kind, entry.shape, entry.num_states, data)


def _batches(x: Tensor | Dataset, batch_size: int) -> Iterator[Tensor]:
    if isinstance(x, Tensor):
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size]
        return
    if not isinstance(x, Dataset) or not hasattr(x, "__len__"):
        raise TypeError(f"x must be a Tensor (N, *in_shape) or a sized Dataset of (x, y) items; received "
                        f"{type(x).__name__}.")
    for i in range(0, len(x), batch_size):
        items = [x[j] for j in range(i, min(i + batch_size, len(x)))]
        yield torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def _record(model: Callable[[Tensor], Tensor], x: Tensor, probe: bool = False) -> Capture:
    check_model_input(model, x)
    with torch.no_grad(), capture(model, graph=False, probe=probe) as cap:
        run_captured(cap, model, x)
    return cap


def partition_codes(model: Callable[[Tensor], Tensor], x: Tensor | Dataset, layers: Sequence[str | int] | None = None,
                    *, batch_size: int = 256, distributed: bool | None = None) -> PartitionCodes:
    """Region codes t^(l)(x) of eq. 14 of 000 at every max-affine layer, packed.

    One plain forward pass per batch (no gradients); the codes are what the forward pass computes anyway (masks,
    max-pool indices), converted and packed.

    Parameters
    ----------
    model : callable
        A piecewise-affine model in eval mode (see :func:`affine_map`).
    x : Tensor (N, *in_shape) or Dataset
        Inputs; a Dataset (items (x, y)) is encoded in batches of ``batch_size``.
    layers : sequence of str or int, optional
        Layer names or positions to keep (default all).
    batch_size : int
        Samples per forward pass.
    distributed : bool, optional
        Under ``torchrun`` (an initialised ``torch.distributed`` process group of two ranks or more) a Dataset is
        encoded data-parallel: each rank its share of the batches (in DistributedSampler order), every rank receiving
        all codes in order, identical to one process (:mod:`cnnlens.spline._distributed`). None (default): shard a
        Dataset, encode a Tensor on each rank alone; True: shard a Tensor too (the same on every rank); False:
        never shard.

    Returns
    -------
    PartitionCodes
        One :class:`LayerCode` per layer, in forward order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
    if distributed_active(distributed, x):
        return sharded_partition_codes(model, x, layers, batch_size)
    parts = []
    for xb in _batches(x, batch_size):
        cap = _record(model, xb)
        parts.append(PartitionCodes([_pack(e) for e in _select(cap.entries, layers)]))
    if not parts:
        raise ValueError("x holds no samples; pass at least one.")
    return PartitionCodes.cat(parts) if len(parts) > 1 else parts[0]


def _select(entries: list[Entry], layers: Sequence[str | int] | None) -> list[Entry]:
    if layers is None:
        return entries
    if isinstance(layers, (str, int)):
        layers = [layers]
    names = [e.name for e in entries]
    keep = []
    for key in layers:
        if isinstance(key, int):
            if not -len(names) <= key < len(names):
                raise ValueError(f"layer position {key} out of range; the model has {len(names)} layers {names}.")
            keep.append(names[key])
        elif key in names:
            keep.append(key)
        else:
            raise ValueError(f"no layer named {key!r}; the model's max-affine layers are {names}.")
    return [e for e in entries if e.name in keep]


def boundary_units(model: Callable[[Tensor], Tensor], x: Tensor) -> dict[str, Tensor]:
    """Which units of each layer sit exactly on a region boundary at x (where the tie rule decides).

    A ReLU-like unit is on a boundary when its pre-activation equals the threshold exactly (e.g. ``h == 0`` for
    ReLU), a clamp unit when ``h == lo`` or ``h == hi``, an elementwise piecewise unit when ``h`` equals one of its
    breakpoints, a max-pool (or other max-like) unit when its window's maximum is attained more than once, an order
    statistic when its selected value is attained more than once in its fiber. Real digits have many such units
    (flat backgrounds); the affine map is still exact there and uses the piece chosen by the tie rule.

    Returns
    -------
    dict
        Layer name -> bool Tensor (N, *shape), in forward order.
    """
    cap = _record(model, x, probe=True)
    out: dict[str, Tensor] = {}
    for e in cap.entries:
        if e.kind == "binary":
            out[e.name] = e.probe["u"] == 0
        elif e.kind == "ternary":
            h = e.probe["h"]
            out[e.name] = (h == e.probe["lo"]) | (h == e.probe["hi"])
        elif e.kind == "piecewise":
            h = e.probe["h"]
            on = torch.zeros(h.shape, dtype=torch.bool)
            for b in e.probe["pieces"].breakpoints:
                on |= h == torch.as_tensor(b, dtype=h.dtype)
            out[e.name] = on
        else:  # argmax, rank: the selected value is attained more than once in the window
            win = e.probe["windows"](e.probe["h"], fill=float("-inf"))
            sel = win.gather(-1, e.states.long().unsqueeze(-1))
            out[e.name] = (win == sel).sum(dim=-1) > 1
    return out
