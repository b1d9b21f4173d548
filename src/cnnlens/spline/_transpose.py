"""The transposed masked network: propagate R*N cotangents through a captured forward in one reverse sweep.

The capture records, in forward order, every operation applied to an input-dependent tensor (a tape). With the
regions fixed the network is linear in x (eq. 7 of 000), so the rows of A[x] are the images of one-hot cotangents
under the transposed operations, taken in reverse order: masks and slopes multiply (ReLU-like units, clamps),
``maximum(a, b)`` routes each cotangent to the selected operand, max-pool scatters to the recorded argmax (Prop. 3),
other selections (max over dimensions, running maxima, sort and top-k values) scatter to the selected inputs,
convolutions become transposed convolutions, linear layers multiply by W. The R requested rows of all N samples
travel together as one batch of R*N cotangents, so each operation runs once (no loop over classes, no weight
gradients). Convolutions use the fastest exact form measured on CPU: a matrix product when the output is 1x1, a
convolution with the flipped kernel for stride 1, otherwise PyTorch's own input-gradient kernel. Every other affine
operation the capture accepts (permutes, indexing, padding, means, broadcasting products, splits, in-place writes,
...) has the exact generic rule "vjp": the vector-Jacobian product of the recorded op itself, vectorised over the R
rows with :func:`torch.func.vmap` (an affine op has the same VJP at every point, so it is taken at zeros).

The sweep is exact or it does not run: an operation it cannot transpose (an ``out=`` argument, a read of a tensor
after an in-place write into memory it shares with a view, an input-dependent 0-dim tensor) switches the tape off
with a reason (:meth:`Tape.switch_off`); :func:`transpose_rows` then returns None and the caller falls back to
batched autograd over the same captured (masked) graph, which gives the same A. Any other error (out of memory, a
bug) propagates.

Cotangent layout: the cotangent of a recorded tensor ``t`` is a tensor of shape ``(R * t.shape[0], *t.shape[1:])``
(row r of sample n at position ``r * N + n``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

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
    """Operations on input-dependent tensors in forward order.

    ``ok`` turns False on the first operation the sweep cannot transpose exactly, and ``reason`` then says which
    one (op and module).

    In-place writes: the cotangent of a tensor written in place is keyed by the same object before and after the
    write, which the reverse sweep handles (the write's rule takes the "after" cotangent and leaves the "before"
    one). A write also changes every tensor sharing its memory (views and their bases, linked in ``_groups`` when
    a recorded op returns a view); those become stale, and an op that later reads a stale tensor switches the tape
    off (autograd's version counters follow such aliasing, the tape does not).
    """

    nodes: list[Node] = field(default_factory=list)
    ok: bool = True
    reason: str | None = None
    _groups: dict[int, set[int]] = field(default_factory=dict)  # id -> ids of the tensors sharing its memory
    _stale: dict[int, str] = field(default_factory=dict)  # id -> the in-place write that changed it

    def switch_off(self, reason: str) -> None:
        """Give up the transposed sweep (the first reason is kept)."""
        if self.ok:
            self.ok = False
            self.reason = reason

    def add(self, node: Node, describe: Callable[[], str]) -> None:
        """Append ``node`` (``describe()`` names its op and module), unless it reads a stale tensor."""
        if not self.ok:
            return
        if self._stale:
            for t in node.ins:
                writer = self._stale.get(id(t))
                if writer is not None:
                    self.switch_off(f"the operation {describe()}, which reads a tensor after the in-place operation "
                                    f"{writer} wrote into memory it shares with a view")
                    return
        self.nodes.append(node)
        if node.kind in ("view", "vjp"):  # the only rules whose ops can return views
            outs = node.data.get("outs", (node.out,))
            if any(o._is_view() for o in outs):
                group: set[int] = set()
                for t in (*outs, *node.ins):
                    group |= self._groups.get(id(t), {id(t)})
                for i in group:
                    self._groups[i] = group

    def mutated(self, t: Tensor, describe: Callable[[], str]) -> None:
        """Note an in-place write into ``t``: the other tensors sharing its memory are stale from now on."""
        group = self._groups.get(id(t))
        if group:
            what = describe()
            self._stale.update((i, what) for i in group if i != id(t))


_VIEWS = {T.view, T.reshape, torch.reshape, T.flatten, torch.flatten, T.contiguous, T.view_as, T.reshape_as,
          T.clone, torch.clone}
_ADD = {torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__}
_SUB = {torch.sub, torch.subtract, T.sub, T.sub_, T.__sub__, T.__isub__}
_MUL = {torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__}
_DIV = {torch.div, torch.divide, torch.true_divide, T.div, T.div_, T.__truediv__, T.__itruediv__}
_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_POOLS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
          F.adaptive_avg_pool3d: 3}
_DROPOUT = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_IN_PLACE_DUNDER = {T.__iadd__, T.__isub__, T.__imul__, T.__itruediv__, T.__setitem__}


class _NoRule(Exception):  # noqa: N818 - internal signal: fall back to autograd
    pass


@functools.lru_cache(maxsize=1024)
def _mutates_first(func: Any) -> bool:
    """Whether ``func`` writes into its first argument (``x.add_``, ``x += y``, ``x[i] = v``, ``x.copy_``)."""
    if func in _IN_PLACE_DUNDER:
        return True
    name = getattr(func, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


def _specific(func: Any, args: tuple, kwargs: dict, out: Any, tracked: list[Tensor],
              is_tracked: Callable[[Any], bool]) -> Node | None:
    """The node of a dedicated (fast) rule, or None when the generic rule must take the op.

    ``tracked``: the input-dependent tensors among the arguments (also inside lists and keywords).
    """
    if not isinstance(out, Tensor) or not args or not isinstance(args[0], Tensor) or out.dim() == 0:
        return None
    x = args[0]
    alone = len(tracked) == 1 and tracked[0] is x
    if func in _CONV:
        padding = args[4] if len(args) > 4 else 0
        if kwargs or not alone or x.dim() != _CONV[func] + 2 or isinstance(padding, str):
            return None
        return Node("conv", (x,), out, {"func": func, "args": args})
    if func is F.linear:
        return Node("linear", (x,), out, {"func": func, "args": args}) if (alone and not kwargs and x.dim() >= 2) \
            else None
    if func is F.batch_norm:  # F.batch_norm hands weight, bias, eps, ... to the mode as keywords
        if not alone or len(args) < 3 or x.dim() < 2:
            return None
        weight = kwargs.get("weight", args[3] if len(args) > 3 else None)
        eps = kwargs.get("eps", args[7] if len(args) > 7 else 1e-5)
        scale = torch.rsqrt(args[2] + eps)
        scale = scale if weight is None else scale * weight.detach()
        return Node("channel_scale", (x,), out, {"scale": scale})
    if func in _VIEWS or func in _DROPOUT:
        same_batch = x.dim() >= 1 and out.shape[0] == x.shape[0] and out.dtype == x.dtype
        keep = func not in _DROPOUT or out.shape == x.shape
        return Node("view", (x,), out) if (alone and same_batch and keep) else None
    if func in _ADD or func in _SUB:
        if len(args) > 2 or set(kwargs) - {"alpha"} or any(a.shape != out.shape for a in tracked) or \
                any(isinstance(a, Tensor) and is_tracked(a) for a in kwargs.values()):
            return None
        alpha = kwargs.get("alpha", 1)
        signs = [1.0 if i == 0 else (-alpha if func in _SUB else alpha)
                 for i, a in enumerate(args[:2]) if isinstance(a, Tensor) and is_tracked(a)]
        return Node("sum", tuple(a for a in args if isinstance(a, Tensor) and is_tracked(a)), out, {"signs": signs})
    if func in _MUL or func in _DIV:
        if len(args) != 2 or kwargs or len(tracked) != 1 or tracked[0].shape != out.shape:
            return None
        a, c = (args[0], args[1]) if tracked[0] is args[0] else (args[1], args[0])
        if isinstance(c, Tensor) and c.dim() > out.dim():
            return None
        coef = c.detach() if isinstance(c, Tensor) else torch.tensor(c, dtype=out.dtype)
        return Node("scale", (a,), out, {"coef": 1 / coef if func in _DIV else coef})
    if func in _POOLS:
        if not alone or x.dim() != _POOLS[func] + 2:
            return None
        return Node("generic", (x,), out, {"func": func, "args": args[1:], "kwargs": kwargs})
    if func in (torch.cat, torch.concat, torch.concatenate):
        parts = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if not isinstance(dim, int) or set(kwargs) - {"dim"}:
            return None
        dim = dim % out.dim()
        if dim == 0 or not all(isinstance(p, Tensor) and is_tracked(p) and p.dim() == out.dim() for p in parts):
            return None
        return Node("cat", tuple(parts), out, {"dim": dim})
    return None


def _generic(tape: Tape, func: Any, args: tuple, kwargs: dict, out: Any, is_tracked: Callable[[Any], bool],
             describe: Callable[[], str]) -> Node | None:
    """The exact "vjp" node of any affine op (the capture checked it is affine in its tracked arguments)."""
    if kwargs.get("out") is not None:
        tape.switch_off(f"the operation {describe()} with an out= argument")
        return None
    mutated = _mutates_first(func) and bool(args) and isinstance(args[0], Tensor)
    outs = [args[0]] if mutated else ([out] if isinstance(out, Tensor) else tree_leaves(out))
    leaves, spec = tree_flatten((args, kwargs))
    pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and is_tracked(leaf)]
    if not outs or not all(isinstance(o, Tensor) and o.is_floating_point() for o in outs):
        tape.switch_off(f"the operation {describe()}, whose result is not a floating-point tensor")
        return None
    if not pos or all(o.dim() == 0 for o in outs):
        return None  # a scalar (h.sum() for control flow): no cotangent unless an op below reads it
    if any(o.dim() == 0 for o in outs) or any(leaves[i].dim() == 0 for i in pos):
        tape.switch_off(f"the operation {describe()} on an input-dependent 0-dim tensor (no sample dimension)")
        return None
    consts = {i: leaf.detach() for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and i not in pos}

    def fn(*tracked: Tensor) -> tuple[Tensor, ...]:
        values = list(leaves)
        for i, const in consts.items():
            values[i] = const
        for i, t in zip(pos, tracked, strict=True):
            values[i] = t
        if mutated:
            values[0] = values[0].clone()  # the op writes into a copy: a function of the state before the write
        a, k = tree_unflatten(values, spec)
        res = func(*a, **k)
        if mutated:
            return (a[0],)
        return (res,) if isinstance(res, Tensor) else tuple(tree_leaves(res))

    return Node("vjp", tuple(leaves[i] for i in pos), outs[0], {"fn": fn, "outs": tuple(outs)})


def record_linear(tape: Tape, func: Any, args: tuple, kwargs: dict, out: Any, tracked: list[Tensor],
                  is_tracked: Callable[[Any], bool], describe: Callable[[], str]) -> None:
    """Record an affine op (called by the capture after running it).

    ``tracked`` lists the input-dependent tensors among the arguments; ``describe()`` names the op and the module
    it was called in, for the reason of a switch-off.
    """
    if not tape.ok:
        return
    node = _specific(func, args, kwargs, out, tracked, is_tracked)
    if node is None:
        node = _generic(tape, func, args, kwargs, out, is_tracked, describe)
        if node is None:
            return
    tape.add(node, describe)
    if _mutates_first(func) and args and isinstance(args[0], Tensor):
        tape.mutated(args[0], describe)


def _conv_t(g: Tensor, x_shape: torch.Size, func: Any, args: tuple) -> Tensor:
    """Input gradient of ``func(x, weight, bias, stride, padding, dilation, groups)`` for cotangents ``g``."""
    d = _CONV[func]
    weight = args[1].detach()
    stride = _tup(args[3] if len(args) > 3 else 1, d)
    padding = _tup(args[4] if len(args) > 4 else 0, d)  # string paddings take the generic rule
    dilation = _tup(args[5] if len(args) > 5 else 1, d)
    groups = args[6] if len(args) > 6 else 1
    in_shape = (g.shape[0], *x_shape[1:])
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
    if kind == "take":  # a selection (max over dimensions, running max, sort, ...): scatter to the selected inputs
        src = node.data["src"]
        x = node.ins[0]
        n = x.shape[0]
        out = g.new_zeros(r, n, x[0].numel())
        out.scatter_add_(2, src.reshape(1, n, -1).expand(r, n, -1), g.reshape(r, n, -1))
        return [out.view(r * n, *x.shape[1:])]
    if kind == "select":  # maximum(a, b) / minimum(a, b): the cotangent goes to the selected operand
        mask = node.data["mask"]
        rows = _rows(g, r)
        zero = torch.zeros((), dtype=g.dtype)
        grads = []
        for t, take in zip(node.ins, node.data["take"], strict=True):
            part = torch.where(mask if take else ~mask, rows, zero).sum_to_size(r, *t.shape)
            grads.append(part.reshape(r * t.shape[0], *t.shape[1:]))
        return grads
    if kind == "cat":
        sizes = [p.shape[node.data["dim"]] for p in node.ins]
        return list(torch.split(g, sizes, dim=node.data["dim"]))
    if kind == "generic":
        x = node.ins[0]
        func, args, kwargs = node.data["func"], node.data["args"], node.data["kwargs"]
        dummy = g.new_zeros(g.shape[0], *x.shape[1:])
        _, vjp = torch.func.vjp(lambda z: func(z, *args, **kwargs), dummy)
        return [vjp(g)[0]]
    raise _NoRule(f"a recorded operation of kind {kind!r}")


def _apply_vjp(node: Node, gs: list[Tensor | None], r: int) -> list[Tensor]:
    """The generic rule: the op's own VJP at zeros (the same at every point of an affine op), over the R rows."""
    outs = node.data["outs"]
    primals = [t.new_zeros(t.shape) for t in node.ins]
    with torch.enable_grad():
        _, pull = torch.func.vjp(node.data["fn"], *primals)
    cots = tuple(o.new_zeros(r, *o.shape) if g is None else g.view(r, *o.shape) for g, o in zip(gs, outs,
                                                                                                strict=True))
    grads = torch.func.vmap(pull)(cots)
    return [gi.reshape(r * t.shape[0], *t.shape[1:]) for gi, t in zip(grads, node.ins, strict=True)]


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
    """Rows ``rows`` of A[x] for every sample: (N, R, D), or None when the tape holds an op without a rule.

    Then ``tape.reason`` says which op. Errors of the rules themselves (out of memory, bugs) propagate.
    """
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
                if node.kind == "vjp":
                    gs = [cot.pop(id(o), None) for o in node.data["outs"]]
                    if all(g is None for g in gs):
                        continue
                    grads = _apply_vjp(node, gs, r)
                else:
                    g = cot.pop(id(node.out), None)
                    if g is None:
                        continue
                    grads = _apply(node, g, r)
                for inp, gi in zip(node.ins, grads, strict=True):
                    prev = cot.get(id(inp))
                    cot[id(inp)] = gi if prev is None else prev + gi
    except _NoRule as err:
        tape.switch_off(f"{err} (no transpose rule)")
        return None
    gx = cot.get(id(x))
    if gx is None:
        return x.new_zeros(n, r, x[0].numel())
    return gx.reshape(r, n, -1).transpose(0, 1)
