"""The transposed masked network: propagate R*N cotangents through a captured forward in one reverse sweep.

The capture records, in forward order, every operation applied to an input-dependent tensor (a tape). With the
regions fixed the network is linear in x (eq. 7 of 000), so the rows of A[x] are the images of one-hot cotangents
under the transposed operations, taken in reverse order: masks and slopes multiply (ReLU-like units, clamps),
max-pool scatters to the recorded argmax (Prop. 3), convolutions become transposed convolutions, linear layers
multiply by W. The R requested rows of all N samples travel together as one batch of R*N cotangents, so each
operation runs once (no loop over classes, no weight gradients). Convolutions use the fastest exact form measured
on CPU: a matrix product when the output is 1x1, a convolution with the flipped kernel for stride 1, otherwise
PyTorch's own input-gradient kernel.

Any operation without a rule here makes :func:`transpose_rows` return None and the caller falls back to batched
autograd over the same captured (masked) graph, which gives the same A.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

T = torch.Tensor

__all__ = ["Node", "Tape", "transpose_rows"]


@dataclass
class Node:
    """One recorded operation: ``kind`` selects the transpose rule, ``ins``/``out`` are the tensors involved."""

    kind: str
    ins: tuple[Tensor, ...]
    out: Tensor
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tape:
    """Operations on input-dependent tensors in forward order; ``ok`` turns False on an op without a rule."""

    nodes: list[Node] = field(default_factory=list)
    ok: bool = True


_VIEWS = {T.view, T.reshape, torch.reshape, T.flatten, torch.flatten, T.contiguous, T.view_as, T.reshape_as,
          T.clone, torch.clone}
_ADD = {torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__}
_SUB = {torch.sub, torch.subtract, T.sub, T.sub_, T.__sub__, T.__isub__}
_MUL = {torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__}
_DIV = {torch.div, torch.divide, torch.true_divide, T.div, T.div_, T.__truediv__, T.__itruediv__}
_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_POOLS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
          F.adaptive_avg_pool3d}
_DROPOUT = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}


class _NoRule(Exception):  # noqa: N818 - internal signal: fall back to autograd
    pass


def record_linear(tape: Tape, func: Any, args: tuple, kwargs: dict, out: Any, is_tracked: Any) -> None:
    """Record an affine op (called by the capture after running it); unknown ops switch the tape off."""
    if not tape.ok:
        return
    tracked = tuple(a for a in args if isinstance(a, Tensor) and is_tracked(a))
    if func in _CONV or func is F.linear:
        if kwargs or len(tracked) != 1 or tracked[0] is not args[0]:
            tape.ok = False
            return
        tape.nodes.append(Node("conv" if func in _CONV else "linear", tracked, out, {"func": func, "args": args}))
    elif func is F.batch_norm:
        mean, var = args[1], args[2]
        weight = kwargs.get("weight", args[3] if len(args) > 3 else None)
        eps = kwargs.get("eps", args[7] if len(args) > 7 else 1e-5)
        scale = torch.rsqrt(var + eps)
        scale = scale if weight is None else scale * weight.detach()
        del mean
        tape.nodes.append(Node("channel_scale", (args[0],), out, {"scale": scale}))
    elif func in _VIEWS:
        tape.nodes.append(Node("view", (args[0],), out))
    elif func in _DROPOUT:
        tape.nodes.append(Node("view", (args[0],), out))
    elif func in _ADD or func in _SUB:
        alpha = kwargs.get("alpha", 1)
        if any(a.shape != out.shape for a in tracked) or (len(args) > 2):
            tape.ok = False
            return
        signs = []
        for i, a in enumerate(args[:2]):
            if isinstance(a, Tensor) and is_tracked(a):
                signs.append(1.0 if i == 0 else (-alpha if func in _SUB else alpha))
        tape.nodes.append(Node("sum", tuple(a for a in args[:2] if isinstance(a, Tensor) and is_tracked(a)), out,
                               {"signs": signs}))
    elif func in _MUL or func in _DIV:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        x, c = (a, b) if (isinstance(a, Tensor) and is_tracked(a)) else (b, a)
        if not isinstance(x, Tensor) or x.shape != out.shape or kwargs.get("rounding_mode") is not None:
            tape.ok = False
            return
        coef = c.detach() if isinstance(c, Tensor) else torch.tensor(c, dtype=out.dtype)
        tape.nodes.append(Node("scale", (x,), out, {"coef": 1 / coef if func in _DIV else coef}))
    elif func in _POOLS:
        tape.nodes.append(Node("generic", (args[0],), out, {"func": func, "args": args[1:], "kwargs": kwargs}))
    elif func in (torch.cat, torch.concat, torch.concatenate):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        parts = args[0]
        if dim == 0 or any(not (isinstance(p, Tensor) and is_tracked(p)) for p in parts):
            tape.ok = False
            return
        tape.nodes.append(Node("cat", tuple(parts), out, {"dim": dim % out.dim()}))
    else:
        tape.ok = False


def _conv_t(g: Tensor, x_shape: torch.Size, func: Any, args: tuple) -> Tensor:
    """Input gradient of ``func(x, weight, bias, stride, padding, dilation, groups)`` for cotangents ``g``."""
    d = _CONV[func]
    weight = args[1].detach()
    stride = _tup(args[3] if len(args) > 3 else 1, d)
    padding = args[4] if len(args) > 4 else 0
    dilation = _tup(args[5] if len(args) > 5 else 1, d)
    groups = args[6] if len(args) > 6 else 1
    in_shape = (g.shape[0], *x_shape[1:])
    if isinstance(padding, str):
        raise _NoRule
    padding = _tup(padding, d)
    if groups == 1 and all(s == 1 for s in g.shape[2:]) and all(p == 0 for p in padding) and \
            all(k == n for k, n in zip(weight.shape[2:], x_shape[2:], strict=True)):
        return (g.reshape(g.shape[0], -1) @ weight.reshape(weight.shape[0], -1)).reshape(in_shape)
    if groups == 1 and all(s == 1 for s in stride) and all(v == 1 for v in dilation) and \
            all(p <= k - 1 for p, k in zip(padding, weight.shape[2:], strict=True)):
        flipped = weight.flip(list(range(2, 2 + d))).transpose(0, 1)
        pad = [k - 1 - p for k, p in zip(weight.shape[2:], padding, strict=True)]
        if weight.shape[1] == 1:  # one input channel (first layer on grey images): oneDNN is 3-5x slower here
            return _conv_t_planes(g, weight, padding, x_shape)
        return func(g, flipped, None, 1, pad)
    mask = [True, False, False]
    return torch.ops.aten.convolution_backward(g, g.new_empty(in_shape), weight, None, list(stride),
                                               list(padding), list(dilation), False, [0] * d, groups, mask)[0]


def _conv_t_planes(g: Tensor, weight: Tensor, padding: tuple[int, ...], x_shape: torch.Size,
                   chunk: int = 256) -> Tensor:
    """Transposed stride-1 convolution onto ONE input channel: a GEMM per chunk, then one shifted add per kernel
    offset (col2im by slices). Measured faster on CPU than oneDNN, NNPACK and ``fold`` for first layers."""
    cout, ks, osz = weight.shape[0], tuple(weight.shape[2:]), tuple(g.shape[2:])
    wt = weight.reshape(cout, -1).t().contiguous()  # (K, Cout), K = prod(kernel)
    full = g.new_zeros(g.shape[0], *[o + k - 1 for o, k in zip(osz, ks, strict=True)])
    offsets = list(itertools.product(*[range(k) for k in ks]))
    for start in range(0, g.shape[0], chunk):
        part = g[start:start + chunk]
        planes = (wt @ part.transpose(0, 1).reshape(cout, -1)).view(len(offsets), part.shape[0], *osz)
        target = full[start:start + chunk]
        for r, off in enumerate(offsets):
            # add_ on the view: ``target[...] += v`` would also copy the view back onto itself (__setitem__)
            target[(slice(None), *(slice(o, o + n) for o, n in zip(off, osz, strict=True)))].add_(planes[r])
    crop = tuple(slice(p, p + n) for p, n in zip(padding, x_shape[2:], strict=True))
    return full[(slice(None), *crop)].unsqueeze(1)


def _tup(v: Any, d: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * d


def _rows(g: Tensor, r: int) -> Tensor:
    return g.view(r, -1, *g.shape[1:])


def _apply(node: Node, g: Tensor, r: int) -> list[Tensor]:  # noqa: C901 - one rule per kind
    kind = node.kind
    if kind == "mask":
        return [(_rows(g, r) * node.data["coef"]).reshape(g.shape)]
    if kind == "scale":
        return [(_rows(g, r) * node.data["coef"]).reshape(g.shape)]
    if kind == "channel_scale":
        scale = node.data["scale"].view(1, -1, *[1] * (g.dim() - 2))
        return [g * scale]
    if kind == "view":
        return [g.reshape(g.shape[0], *node.ins[0].shape[1:])]
    if kind == "sum":
        return [g if s == 1 else g * s for s in node.data["signs"]]
    if kind == "linear":
        weight = node.data["args"][1].detach()
        return [g @ weight]
    if kind == "conv":
        return [_conv_t(g, node.ins[0].shape, node.data["func"], node.data["args"])]
    if kind == "gather":
        idx = node.data["idx"]
        x = node.ins[0]
        n, c = idx.shape[:2]
        flat_idx = idx.reshape(1, n, c, -1).expand(r, n, c, idx[0, 0].numel())  # a view: no copy per row
        out = g.new_zeros(r, n, c, x[0, 0].numel())
        if "coef" in node.data:
            g = (_rows(g, r) * node.data["coef"]).reshape(g.shape)
        out.scatter_add_(3, flat_idx, g.reshape(r, n, c, -1))
        return [out.view(r * n, *x.shape[1:])]
    if kind == "cat":
        sizes = [p.shape[node.data["dim"]] for p in node.ins]
        return list(torch.split(g, sizes, dim=node.data["dim"]))
    if kind == "generic":
        x = node.ins[0]
        func, args, kwargs = node.data["func"], node.data["args"], node.data["kwargs"]
        dummy = g.new_zeros(g.shape[0], *x.shape[1:])
        _, vjp = torch.func.vjp(lambda z: func(z, *args, **kwargs), dummy)
        return [vjp(g)[0]]
    raise _NoRule


def _fuse_scale_into_gather(nodes: list[Node]) -> list[Node]:
    """ReLU-like mask followed only by max-pool: apply the mask at the argmax positions (pooled size) instead of on
    the whole pre-pool tensor. Same numbers, ~window-size fewer multiplications."""
    uses: dict[int, int] = {}
    for node in nodes:
        for t in node.ins:
            uses[id(t)] = uses.get(id(t), 0) + 1
    fused: list[Node] = []
    for node in nodes:
        prev = fused[-1] if fused else None
        if node.kind == "gather" and prev is not None and prev.kind == "scale" and prev.out is node.ins[0] and \
                uses.get(id(prev.out), 0) == 1 and prev.ins[0] is not prev.out and \
                prev.data["coef"].shape == prev.out.shape:
            idx = node.data["idx"]
            coef = prev.data["coef"].flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
            fused[-1] = Node("gather", (prev.ins[0],), node.out, {"idx": idx, "coef": coef})
        else:
            fused.append(node)
    return fused


def transpose_rows(tape: Tape, x: Tensor, y_raw: Tensor, rows: Tensor) -> Tensor | None:
    """Rows ``rows`` of A[x] for every sample: (N, R, D), or None when some op has no transpose rule."""
    if not tape.ok:
        return None
    n = x.shape[0]
    r = rows.numel()
    c = y_raw[0].numel()
    seed = y_raw.new_zeros(r, n, c)
    seed[torch.arange(r), :, rows] = 1
    cot: dict[int, Tensor] = {id(y_raw): seed.view(r * n, *y_raw.shape[1:])}
    try:
        with torch.no_grad():
            for node in reversed(_fuse_scale_into_gather(tape.nodes)):
                g = cot.pop(id(node.out), None)
                if g is None:
                    continue
                for inp, gi in zip(node.ins, _apply(node, g, r), strict=True):
                    prev = cot.get(id(inp))
                    cot[id(inp)] = gi if prev is None else prev + gi
    except (_NoRule, RuntimeError):
        return None
    gx = cot.get(id(x))
    if gx is None:
        return x.new_zeros(n, r, x[0].numel())
    return gx.reshape(r, n, -1).transpose(0, 1)
