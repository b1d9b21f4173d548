"""A record of the affine and pooling operations of one forward pass: op, module path, shapes and arguments.

Like the capture of :mod:`._capture` (the one place in cnnlens that looks inside a model) it runs the forward pass
under a :class:`torch.overrides.TorchFunctionMode` and names each operation by the innermost of the model's modules
whose code is running (read off the call stack), so module and functional calls (``nn.Conv2d`` and ``F.conv2d``)
are seen alike. It checks nothing and changes nothing: every operation runs as it is, so it also works on the
``"meta"`` device (shapes without memory) and on models that are not piecewise affine. Used by
:func:`cnnlens.recos.summary` (the RECOS specification of Tables 1-2 of 003).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._capture import _MAX_POOL, _arg, _ntuple, module_on_stack

__all__ = ["TracedOp", "trace_ops"]

_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_AVG_POOL = {F.avg_pool1d: 1, torch.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}


@dataclass(frozen=True)
class TracedOp:
    """One traced operation.

    Attributes
    ----------
    module : str
        Path of the innermost model module whose code ran the op ("" for the root or a plain function).
    op : str
        ``"conv"``, ``"linear"``, ``"max_pool"`` or ``"avg_pool"``.
    input_shape, output_shape : tuple of int
        Per-sample shapes (batch dimension dropped). For a convolution fed by ``F.pad`` in the same module (the
        non-zero padding modes of ``nn.Conv2d``), the input before that padding.
    weight_shape : tuple of int or None
        conv ``(C_out, C_in / groups, *kernel)``, linear ``(out_features, in_features)``; None for pooling.
    kernel_size, stride, padding, dilation : tuple of int or None
        Per spatial dimension (None for linear); pooling stride defaults to the kernel size.
    groups : int
        Convolution groups (1 otherwise).
    """

    module: str
    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_shape: tuple[int, ...] | None
    kernel_size: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    padding: tuple[int, ...] | None
    dilation: tuple[int, ...] | None
    groups: int = 1


def _per_sample(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape[1:])


def _padding(value: Any, d: int) -> tuple[int, ...] | None:
    return None if isinstance(value, str) else _ntuple(value, d)  # "same" / "valid" stay None


class _Tracer(TorchFunctionMode):
    def __init__(self, paths: dict[int, str]) -> None:
        super().__init__()
        self.paths = paths
        self.ops: list[TracedOp] = []
        self._pad: tuple[Tensor, tuple[int, ...]] | None = None  # last F.pad output and its input shape

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.pad:
            self._pad = (out, _per_sample(args[0]))
        elif func in _CONV or func is F.linear or func in _MAX_POOL or func in _AVG_POOL:
            self.ops.append(self._record(func, args, kwargs, out))
        return out

    def _record(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> TracedOp:
        x = _arg(args, kwargs, 0, "input")
        values = out[0] if isinstance(out, tuple) else out
        current = module_on_stack(self.paths, sys._getframe(1), globals())
        module = current[0] if current is not None else ""
        in_shape = _per_sample(x)
        if func is F.linear:
            weight = _arg(args, kwargs, 1, "weight")
            return TracedOp(module, "linear", in_shape, _per_sample(values), tuple(weight.shape), None, None, None,
                            None)
        if func in _CONV:
            d = _CONV[func]
            weight = _arg(args, kwargs, 1, "weight")
            if self._pad is not None and self._pad[0] is x:
                in_shape = self._pad[1]
            return TracedOp(module, "conv", in_shape, _per_sample(values), tuple(weight.shape),
                            tuple(weight.shape[2:]), _ntuple(_arg(args, kwargs, 3, "stride", 1), d),
                            _padding(_arg(args, kwargs, 4, "padding", 0), d),
                            _ntuple(_arg(args, kwargs, 5, "dilation", 1), d), int(_arg(args, kwargs, 6, "groups", 1)))
        d = _MAX_POOL.get(func) or _AVG_POOL[func]
        kernel = _ntuple(_arg(args, kwargs, 1, "kernel_size"), d)
        stride = _arg(args, kwargs, 2, "stride", None)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else \
            _ntuple(stride, d)
        dilation = _ntuple(_arg(args, kwargs, 4, "dilation", 1), d) if func in _MAX_POOL else (1,) * d
        return TracedOp(module, "max_pool" if func in _MAX_POOL else "avg_pool", in_shape, _per_sample(values), None,
                        kernel, stride, _ntuple(_arg(args, kwargs, 3, "padding", 0), d), dilation)


def trace_ops(model: Callable[[Tensor], Tensor], x: Tensor) -> list[TracedOp]:
    """Run ``model(x)`` once and return its convolution, linear and (max/average) pooling ops in forward order.

    Parameters
    ----------
    model : callable
        Any model (an ``nn.Module`` gives module paths); run as it is (set eval mode and no_grad outside).
    x : Tensor (N, *in_shape)
        The input, on any device (``"meta"`` too).

    Returns
    -------
    list of TracedOp
    """
    paths = {id(m): p for p, m in model.named_modules()} if isinstance(model, nn.Module) else {}
    with _Tracer(paths) as tracer:
        model(x)
    return tracer.ops
