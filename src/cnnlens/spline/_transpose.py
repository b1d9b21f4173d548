"""The transposed masked network: propagate R*N cotangents through a captured forward in one reverse sweep.

The capture records, in forward order, every operation applied to an input-dependent tensor (a tape). With the
regions fixed the network is linear in x (eq. 7 of 000), so the rows of A[x] are the images of one-hot cotangents
under the transposed operations, taken in reverse order: masks and slopes multiply (ReLU-like units, clamps),
``maximum(a, b)`` routes each cotangent to the selected operand, max-pool scatters to the recorded argmax (Prop. 3),
other selections (max over dimensions, running maxima, sort and top-k values) scatter to the selected inputs,
convolutions become transposed convolutions, linear layers multiply by W, a global average pooling
spreads each channel's cotangent evenly over its positions. The R requested rows of all N samples
travel together as one batch of R*N cotangents, so each operation runs once (no loop over classes, no weight
gradients). Convolutions use the fastest exact form measured on CPU (:func:`_conv_form`): a matrix product when
the output is 1x1; on oneDNN (float32 on CPU), for 4 or more cotangents, a transposed convolution in channels-last
layout, and for a strided convolution onto a few input channels (a stem) one stride-1 convolution per output phase;
otherwise PyTorch's own input-gradient kernel (a convolution with the flipped kernel for stride 1 on oneDNN).
Every other affine operation the capture accepts (permutes, indexing, padding, means, broadcasting products,
splits, in-place writes, ...) has the exact generic rule "vjp": the vector-Jacobian product of the recorded op
itself, vectorised over the R rows with :func:`torch.func.vmap` (an affine op has the same VJP at every point, so
it is taken at zeros). Before the sweep a batch-norm (or any per-channel scale) right after a convolution or linear
layer is folded into its weight, and a ReLU-like mask followed only by a max-pool is applied at the pooled
positions, each when it pays for the number of rows (:meth:`Tape.plan`).

Memory: the tape keeps shape-only stand-ins of the recorded tensors, not their values (:class:`Tape`); in the sweep
a cotangent is freed as soon as its operation has run, and a rule whose cotangent is not shared with another
tensor's (the sweep tracks ownership) multiplies and accumulates in place, so the working set is a few cotangents
at a time: :func:`sweep_bytes` bounds it, and the caller sizes its chunks of rows with that bound.

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
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

T = torch.Tensor

__all__ = ["Node", "Tape", "sweep_bytes", "tape_bytes", "transpose_rows"]


@dataclass
class Node:
    """One recorded operation: ``kind`` selects the transpose rule, ``ins``/``out`` are the tensors involved (on
    the tape: their shape-only stand-ins, :meth:`Tape.shadow`)."""

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

    Memory: the sweep needs the shapes of the recorded tensors, not their values, so a node keeps a shape-only
    stand-in of each (a tensor on the "meta" device, the same object for the same tensor: :meth:`shadow`) and the
    forward pass frees its activations as a plain one does (masks, indices and constants stay in the nodes' data).
    """

    nodes: list[Node] = field(default_factory=list)
    ok: bool = True
    reason: str | None = None
    _groups: dict[int, set[int]] = field(default_factory=dict)  # id -> ids of the tensors sharing its memory
    _stale: dict[int, str] = field(default_factory=dict)  # id -> the in-place write that changed it
    _plan: list[Node] | None = field(default=None, repr=False)
    _plan_rows: int = field(default=0, repr=False)
    _shadows: dict[int, tuple[weakref.ref, Tensor]] = field(default_factory=dict, repr=False)
    pending_batch_norms: list[Node] = field(default_factory=list, repr=False)  # nodes whose forms are pending;
    # the storages of their statistics, computed when a write needs them
    _pending_storages: set[int] = field(default_factory=set, repr=False)
    _pending_seen: int = field(default=0, repr=False)

    def shadow(self, t: Tensor) -> Tensor:
        """The shape-only stand-in of ``t`` on the tape: the same object for the same tensor (also after an in-place
        write), a new one for a new tensor even when Python reuses the id of a freed one."""
        entry = self._shadows.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        stand_in = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        self._shadows[id(t)] = (weakref.ref(t), stand_in)
        return stand_in

    def plan(self, rows: int | None = None) -> list[Node]:
        """The nodes the sweep runs for ``rows`` requested rows in all, with the fusions of :func:`_fuse`
        (computed once and reused by every chunk of rows; ``rows=None``: the last plan, or one row)."""
        if self._plan is None or (rows is not None and rows != self._plan_rows):
            _batch_norm_forms(self)
            if not self.ok:  # the sweep does not run (transpose_rows returns None): no fusions to plan
                return self.nodes
            self._plan_rows = rows or self._plan_rows or 1
            with torch.no_grad():
                self._plan = _fuse(self.nodes, self._plan_rows)
        return self._plan

    def before_write(self, t: Tensor) -> None:
        """Called before the model writes into ``t`` in place: the pending batch-norm forms that read its memory
        are computed now, from the values the pass used (:func:`_batch_norm_forms`)."""
        if not self.pending_batch_norms:
            return
        for node in self.pending_batch_norms[self._pending_seen:]:
            self._pending_storages.update(s.untyped_storage().data_ptr() for s in node.data["batch_norm"][0]
                                          if s is not None)
        self._pending_seen = len(self.pending_batch_norms)
        if t.untyped_storage().data_ptr() in self._pending_storages:
            _batch_norm_forms(self)

    def switch_off(self, reason: str) -> None:
        """Give up the transposed sweep (the first reason is kept)."""
        if self.ok:
            self.ok = False
            self.reason = reason

    def add(self, node: Node, describe: Callable[[], str]) -> None:
        """Append ``node`` (a new one, the tape's from now on), its tensors replaced by their stand-ins
        (``describe()`` names its op and module), unless it reads a stale tensor."""
        if not self.ok:
            return
        ins = tuple(self.shadow(t) for t in node.ins)
        if self._stale:
            for t in ins:
                writer = self._stale.get(id(t))
                if writer is not None:
                    self.switch_off(f"the operation {describe()}, which reads a tensor after the in-place operation "
                                    f"{writer} wrote into memory it shares with a view")
                    return
        data = node.data
        real_outs = data["outs"] if "outs" in data else (node.out,)
        if "outs" in data:
            data["outs"] = tuple(map(self.shadow, real_outs))
        node.ins, node.out = ins, self.shadow(node.out)
        self.nodes.append(node)
        if "batch_norm" in data:
            self.pending_batch_norms.append(node)
        if node.kind in ("view", "vjp") and any(o._is_view() for o in real_outs):  # the rules whose ops make views
            group: set[int] = set()
            for t in (*map(self.shadow, real_outs), *ins):
                group |= self._groups.get(id(t), {id(t)})
            for i in group:
                self._groups[i] = group

    def mutated(self, t: Tensor, describe: Callable[[], str]) -> None:
        """Note an in-place write into ``t``: the other tensors sharing its memory are stale from now on."""
        key = id(self.shadow(t))
        group = self._groups.get(key)
        if group:
            what = describe()
            self._stale.update((i, what) for i in group if i != key)


_VIEWS = {T.view, T.reshape, torch.reshape, T.flatten, torch.flatten, T.contiguous, T.view_as, T.reshape_as,
          T.clone, torch.clone}
_ADD = {torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__}
_SUB = {torch.sub, torch.subtract, T.sub, T.sub_, T.__sub__, T.__isub__}
_MUL = {torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__}
_DIV = {torch.div, torch.divide, torch.true_divide, T.div, T.div_, T.__truediv__, T.__itruediv__}
_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_POOLS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
          F.adaptive_avg_pool3d: 3}
_ADAPTIVE_AVG = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
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


def _channel_offset(bias: Tensor | None, dim: int) -> Tensor | None:
    """A per-channel bias (conv, batch-norm shift) shaped to broadcast against a ``dim``-d output (N, C, ...),
    detached when it requires grad (a layer's parameter; a batch-norm shift made without autograd is not)."""
    if bias is None:
        return None
    return (bias.detach() if bias.requires_grad else bias).reshape(1, -1, *[1] * (dim - 2))


def _with_offset(data: dict[str, Any], offset: Tensor | None) -> dict[str, Any]:
    """``data`` with the node's constant term ``offset`` (broadcastable to its output), when it has one.

    The offsets of the nodes are the biases of eq. 7 of 000: B[x] is the sum over the nodes of the cotangent of a
    node's output times its offset (:func:`transpose_rows`)."""
    if offset is not None:
        data["offset"] = offset
    return data


class _Shares:
    """B[x] (R, N) of a sweep: ``add(g, offset)`` adds a node's share ``<g_row, offset>`` for each of the R*N
    cotangents ``g`` of its output (eq. 7 of 000). The dimensions along which ``offset`` is constant are summed out
    of ``g`` first, so a per-channel offset (a convolution's or batch-norm's, a linear layer's bias) costs one
    reduction of the cotangent and no cotangent-sized temporary. Offsets the same for every sample keep those sums
    and are summed against the offsets in one matrix-vector product (at most ``_SHARES`` elements wait), fewer small
    operations than one per node; per-sample offsets, and offsets with nothing to sum (the cotangent itself, which
    the node's rule may overwrite), add at once."""

    def __init__(self, b_rows: Tensor, r: int) -> None:
        self.b_rows, self.r = b_rows, r
        self._sums: list[Tensor] = []
        self._offsets: list[Tensor] = []
        self._waiting = 0

    def add(self, g: Tensor, offset: Tensor) -> None:
        rn = g.shape[0]
        if offset.dtype != g.dtype:
            offset = offset.to(g.dtype)
        if offset.dim() == 1 and g.dim() == 2:  # a linear layer's bias
            gs = g
        else:
            if offset.dim() != g.dim():
                offset = offset.reshape((1,) * (g.dim() - offset.dim()) + tuple(offset.shape))
            dims = [d for d in range(1, g.dim()) if offset.shape[d] == 1 and g.shape[d] > 1]
            gs = g.sum(dims) if dims else g  # (the dims summed out are those where offset has size 1: same order)
            if offset.shape[0] != 1:  # an offset per sample
                n = rn // self.r
                self.b_rows += torch.einsum("rnd,nd->rn", gs.reshape(self.r, n, -1), offset.reshape(n, -1))
                return
        if gs is g:  # the cotangent itself, which the node's rule may overwrite: added now
            self.b_rows.view(-1).addmv_(g.reshape(rn, -1), offset.reshape(-1))
            return
        self._sums.append(gs if gs.dim() == 2 else gs.reshape(rn, -1))
        self._offsets.append(offset.reshape(-1))
        self._waiting += self._sums[-1].numel()
        if self._waiting > _SHARES:
            self.total()

    def total(self) -> Tensor:
        """B of the shares added so far (the waiting sums added in)."""
        if self._sums:
            sums = self._sums[0] if len(self._sums) == 1 else torch.cat(self._sums, 1)
            offsets = self._offsets[0] if len(self._offsets) == 1 else torch.cat(self._offsets)
            self.b_rows.view(-1).addmv_(sums, offsets)
            self._sums, self._offsets, self._waiting = [], [], 0
        return self.b_rows


#: At most this many elements of per-channel sums wait for :meth:`_Shares.total` (a small fraction of a sweep).
_SHARES = 2**18


def _batch_norm_forms(tape: Tape) -> None:
    """Fill in ``scale`` and ``offset`` of the tape's batch-norm nodes: ``y = scale * x + shift`` per channel in
    eval mode, ``scale = weight / sqrt(var + eps)``, ``shift = bias - mean * scale`` (the shift shaped to broadcast
    against the output: the node's share of B[x]).

    Computed on every pass from the statistics the pass used, for all layers at once: per group of layers of one
    dtype, device and eps, the statistics are concatenated (one operation each) and the forms take four operations
    for the group instead of five per layer (ResNet-18's 20 layers: 0.25 against 0.41 ms, in one run on the laptop).
    Nothing is cached between calls, so writes through ``.data`` (which version counters do not count) are seen. A
    statistic the model writes in place later in the pass has its forms computed before the write
    (:meth:`Tape.before_write`, called by the capture); one written where the capture could not see it (its version
    counter moved all the same) switches the tape off: the values the pass used are gone. A write that neither sees
    (through a NumPy view) leaves the forms out of step with the pass, and the identity check of the map raises.
    """
    groups: dict[tuple, list[Node]] = {}
    pending = tape.pending_batch_norms
    tape.pending_batch_norms = []
    tape._pending_storages.clear()
    tape._pending_seen = 0
    for node in pending:
        stats, versions, eps, _ = node.data["batch_norm"]
        if any(t is not None and t._version != v for t, v in zip(stats, versions, strict=True)):
            tape.switch_off("a batch-norm whose statistics or affine parameters the model wrote in place after "
                            "their use in the same pass")
            return
        key = (eps, stats[1].device, *(None if t is None else t.dtype for t in stats))
        groups.setdefault(key, []).append(node)
    with torch.no_grad():
        for (eps, *_), nodes in groups.items():
            stats = [node.data["batch_norm"][0] for node in nodes]
            mean, var, weight, bias = (None if stats[0][i] is None else torch.cat([st[i] for st in stats])
                                       for i in range(4))
            scale = torch.rsqrt(var + eps)
            scale = scale if weight is None else scale * weight
            shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
            sizes = [st[1].numel() for st in stats]
            for node, s, t in zip(nodes, scale.split(sizes), shift.split(sizes), strict=True):
                node.data["scale"] = s
                node.data["offset"] = _channel_offset(t, node.data["batch_norm"][3])


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
        data = {"func": func, "args": (None, *args[1:]), "params": _conv_params(func, args)}  # no activation kept
        bias = args[2] if len(args) > 2 else None
        return Node("conv", (x,), out, _with_offset(data, _channel_offset(bias, out.dim())))
    if func is F.linear:
        if not alone or kwargs or x.dim() < 2:
            return None
        bias = args[2] if len(args) > 2 else None
        return Node("linear", (x,), out, _with_offset({"func": func, "args": (None, *args[1:])},
                                                      None if bias is None else bias.detach()))
    if func is F.batch_norm:  # F.batch_norm hands weight, bias, eps, ... to the mode as keywords
        if not alone or len(args) < 3 or x.dim() < 2:
            return None
        weight = kwargs.get("weight", args[3] if len(args) > 3 else None)
        eps = kwargs.get("eps", args[7] if len(args) > 7 else 1e-5)
        bias = kwargs.get("bias", args[4] if len(args) > 4 else None)
        if args[1] is None or args[2] is None or isinstance(eps, Tensor):
            return None
        stats = (args[1], args[2], weight, bias)  # constants: the capture runs without autograd
        # the affine form is computed for all batch-norms of the pass at once (_batch_norm_forms, by Tape.plan)
        return Node("channel_scale", (x,), out, {"batch_norm": (
            stats, tuple(None if t is None else t._version for t in stats), float(eps), out.dim())})
    if func in _VIEWS or func in _DROPOUT:
        same_batch = x.dim() >= 1 and out.shape[0] == x.shape[0] and out.dtype == x.dtype
        keep = func not in _DROPOUT or out.shape == x.shape
        return Node("view", (x,), out) if (alone and same_batch and keep) else None
    if func in _ADD or func in _SUB:
        if len(args) > 2 or set(kwargs) - {"alpha"} or any(a.shape != out.shape for a in tracked) or \
                any(isinstance(a, Tensor) and is_tracked(a) for a in kwargs.values()):
            return None
        alpha = kwargs.get("alpha", 1)
        signs, offset = [], None
        for i, a in enumerate(args[:2]):
            sign = 1.0 if i == 0 else (-alpha if func in _SUB else alpha)
            if isinstance(a, Tensor) and is_tracked(a):
                signs.append(sign)
            else:  # a constant term: its share of B (eq. 7 of 000)
                term = (a.detach() if isinstance(a, Tensor) else torch.tensor(a, dtype=out.dtype)) * sign
                offset = term if offset is None else offset + term
        return Node("sum", tuple(a for a in args if isinstance(a, Tensor) and is_tracked(a)), out,
                    _with_offset({"signs": signs}, offset))
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
        if func in _ADAPTIVE_AVG and all(k == 1 for k in out.shape[2:]) and out.shape[:2] == x.shape[:2]:
            return Node("global_mean", (x,), out)  # the mean over all positions (ResNet's head)
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

    ins = tuple(leaves[i] for i in pos)
    for i in pos:  # ``fn`` takes them as arguments: the closure does not keep the activations alive
        leaves[i] = None
    return Node("vjp", ins, outs[0], {"fn": fn, "outs": tuple(outs)})


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


def _onednn(g: Tensor) -> bool:
    """Whether convolutions on ``g`` run on oneDNN (float32 on CPU), where the channels-last forms below win."""
    return g.device.type == "cpu" and g.dtype == torch.float32 and torch.backends.mkldnn.is_available() and \
        torch.backends.mkldnn.enabled


def _conv_params(func: Any, args: tuple) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """(stride, padding, dilation, groups) of a recorded ``conv{1,2,3}d(x, weight, bias, ...)`` call."""
    d = _CONV[func]
    stride = _tup(args[3] if len(args) > 3 else 1, d)
    padding = _tup(args[4] if len(args) > 4 else 0, d)  # string paddings take the generic rule
    dilation = _tup(args[5] if len(args) > 5 else 1, d)
    return stride, padding, dilation, args[6] if len(args) > 6 else 1


@functools.lru_cache(maxsize=4096)
def _conv_form(g_shape: torch.Size, x_shape: torch.Size, weight_shape: torch.Size, params: tuple,
               onednn: bool, cl_weight: bool = True) -> str:
    """Which exact form :func:`_conv_t` takes, as measured on CPU (1 and 2 threads) on the layers of ResNet-18 at
    224x224 (R*N = 1 to 64 cotangents), MobileNet-v1 (16) and LeNet-5 (2560):

    * "matmul": a GEMM when the output is 1x1;
    * on oneDNN, "pointwise": a strided 1x1 convolution (ResNet's downsampling shortcuts) as a GEMM in
      channels-last order written to every stride-th input position (1.1-2.5x faster than PyTorch's input-gradient
      kernel with the sum into the other branch's cotangent; in float64 it is not faster);
    * on oneDNN, "phases": a strided convolution onto fewer than 16 input channels as one stride-1 convolution per
      output phase (1.7x faster than the transposed convolution for ResNet-18's stem);
    * on oneDNN, "channels_last": layers with 16 or more channels as transposed convolutions in channels-last
      layout: with a full kernel when the sweep holds the weight in that order (``cl_weight``:
      :func:`_sweep_weight`; 1.1-2x faster than PyTorch's input-gradient kernel at every R*N, while with the weight
      in NCHW order oneDNN reorders it on every call and is slower than that kernel for the wide layers), grouped
      (depthwise) and 1x1 layers from R*N = 4 on (1.2-1.5x faster; slower below); the others take that kernel;
    * "planes": one input channel and stride 1 (LeNet's first layer) as GEMM + shifted adds;
    * on oneDNN, "flipped": other stride-1 layers as a convolution with the flipped kernel;
    * "backward": the rest, with PyTorch's input-gradient kernel (in float64 as fast as the flipped form at 32 rows,
      1.25x faster at 8, and without its whole-batch im2col buffer)."""
    stride, padding, dilation, groups = params
    plain = all(v == 1 for v in dilation)
    if groups == 1 and all(s == 1 for s in g_shape[2:]) and all(p == 0 for p in padding) and \
            all(k == n for k, n in zip(weight_shape[2:], x_shape[2:], strict=True)):
        return "matmul"
    if len(stride) == 2 and onednn:
        if groups == 1 and all(k == 1 for k in weight_shape[2:]) and all(p == 0 for p in padding) and \
                any(s > 1 for s in stride):
            return "pointwise"
        if groups == 1 and plain and any(s > 1 for s in stride) and x_shape[1] < 16:
            return "phases"
        if min(x_shape[1], g_shape[1]) >= 16:
            if groups > 1 or all(k == 1 for k in weight_shape[2:]):  # depthwise, 1x1: no weight reorder to save
                return "channels_last" if g_shape[0] >= 4 else "backward"
            return "channels_last" if cl_weight else "backward"
    if groups == 1 and all(s == 1 for s in stride) and plain and \
            all(p <= k - 1 for p, k in zip(padding, weight_shape[2:], strict=True)):
        if weight_shape[1] == 1:
            return "planes"
        if onednn:
            return "flipped"
    return "backward"


def _conv_t(g: Tensor, x_shape: torch.Size, func: Any, args: tuple, weight: Tensor,
            params: tuple | None = None, onednn: bool | None = None) -> Tensor:
    """Input gradient of ``func(x, weight, bias, stride, padding, dilation, groups)`` for cotangents ``g``, in the
    form :func:`_conv_form` picks; ``weight`` is the layer's weight, with a following batch-norm folded in
    (:func:`_fuse`); ``params``: :func:`_conv_params` of the call, ``onednn``: :func:`_onednn` of ``g``, when
    known."""
    params = params or _conv_params(func, args)
    stride, padding, dilation, groups = params
    onednn = _onednn(g) if onednn is None else onednn
    form = _conv_form(g.shape, x_shape, weight.shape, params, onednn, _is_channels_last(weight))
    if form == "matmul":
        return (g.reshape(g.shape[0], -1) @ weight.reshape(weight.shape[0], -1)).reshape(g.shape[0], *x_shape[1:])
    if form == "pointwise":  # a GEMM in channels-last order, written to every stride-th input position
        res = g.new_zeros(g.shape[0], *x_shape[2:], x_shape[1])
        res[(slice(None), *(slice(None, None, s) for s in stride))] = \
            g.permute(0, 2, 3, 1) @ weight.reshape(weight.shape[0], -1)
        return res.permute(0, 3, 1, 2)
    if form == "phases":
        return _conv_t_phases(g, weight, stride, padding, x_shape)
    if form == "channels_last":
        out_pad = [n - ((o - 1) * s - 2 * p + v * (k - 1) + 1) for n, o, s, p, v, k in
                   zip(x_shape[2:], g.shape[2:], stride, padding, dilation, weight.shape[2:], strict=True)]
        return F.conv_transpose2d(g.contiguous(memory_format=torch.channels_last), weight, None, stride, padding,
                                  out_pad, groups, dilation)
    if form == "planes":  # one input channel (first layer on grey images): oneDNN is 3-5x slower here
        return _conv_t_planes(g, weight, padding, x_shape)
    if form == "flipped":
        flipped = weight.flip(list(range(2, len(weight.shape)))).transpose(0, 1)
        return func(g, flipped, None, 1, [k - 1 - p for k, p in zip(weight.shape[2:], padding, strict=True)])
    d = len(stride)
    return torch.ops.aten.convolution_backward(g, g.new_empty(g.shape[0], *x_shape[1:]), weight, None, list(stride),
                                               list(padding), list(dilation), False, [0] * d, groups,
                                               [True, False, False])[0]


def _conv_workspace(node: Node, onednn: bool, batch: int) -> tuple[int, int]:
    """Temporary elements of :func:`_conv_t` beyond its result for ``batch`` = R * N cotangents, as (per row, in
    all): layout copies and im2col buffers grow with the rows, the chunked forms' buffers are bounded."""
    g, x = node.data.get("conv_out", node.out), node.ins[0]  # ("conv_out": a max-pool follows, merged in)
    weight = node.data.get("weight", node.data["args"][1])
    params = node.data["params"]
    form = _conv_form((batch, *g.shape[1:]), x.shape, weight.shape, params, onednn, _is_channels_last(weight))
    if form == "phases":  # per chunk of cotangents: their copy in the convolution's layout and the phases
        taps, _, _, pads = _phase_geometry(weight.shape, params[0], params[1], x.shape, g.shape)
        phases = math.prod(n + 2 * p - t + 1 for n, p, t in zip(g.shape[2:], pads, taps, strict=True))
        return 0, min(batch, _PHASE_CHUNK) * (g[0].numel() + math.prod(params[0]) * x.shape[1] * phases)
    if form == "planes":  # per chunk: the cotangents in (C, B) order and one plane per kernel offset
        per = g[0].numel() + math.prod(weight.shape[2:]) * math.prod(g.shape[2:])
        return 2 * x.numel(), min(batch, _PLANES_CHUNK) * per
    return g.numel() + x.numel(), 0  # a layout copy of g, the result in the backend's layout


def _conv_t_phases(g: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                   x_shape: torch.Size) -> Tensor:
    """Transposed strided convolution (no groups, no dilation) in "sub-pixel" form: input position
    ``u = s * m + a`` only meets the kernel taps ``k = a + p (mod s)``, so each output phase ``a`` is a stride-1
    correlation of ``g`` with its sub-kernel. All phases run as ONE stride-1 convolution with
    ``prod(s) * C_in`` outputs (sub-kernels zero-padded to ``ceil(k / s)`` taps and flipped), then one strided
    copy per phase interleaves them."""
    d = len(stride)
    cout, cin = weight.shape[:2]
    taps, starts, counts, pads = _phase_geometry(weight.shape, stride, padding, x_shape, g.shape)
    phases = list(itertools.product(*[range(s) for s in stride]))
    sub = weight.new_zeros(len(phases), cin, cout, *taps)
    for i, phase in enumerate(phases):
        first = [(a + p) % s for a, p, s in zip(phase, padding, stride, strict=True)]
        piece = weight[(slice(None), slice(None), *(slice(f, None, s) for f, s in zip(first, stride, strict=True)))]
        where = (i, slice(None), slice(None), *(slice(t - n, t) for t, n in zip(taps, piece.shape[2:], strict=True)))
        sub[where] = piece.transpose(0, 1).flip(list(range(2, 2 + d)))
    shift = [p - (t - 1) for p, t in zip(pads, taps, strict=True)]
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    kernel = sub.reshape(len(phases) * cin, cout, *taps)
    layout = torch.channels_last if d == 2 else torch.contiguous_format  # oneDNN's own: no reorder copies
    res = g.new_empty(g.shape[0], cin, *x_shape[2:])
    for start in range(0, g.shape[0], _PHASE_CHUNK):  # bounded temporaries: the cotangents' copy, the phases
        out = conv(g[start:start + _PHASE_CHUNK].contiguous(memory_format=layout), kernel, None, 1, pads)
        for i, phase in enumerate(phases):
            dst = (slice(start, start + _PHASE_CHUNK), slice(None),
                   *(slice(a, None, s) for a, s in zip(phase, stride, strict=True)))
            src = (slice(None), slice(i * cin, (i + 1) * cin),
                   *(slice(qs[a] + h, qs[a] + h + ms[a]) for a, qs, ms, h in zip(phase, starts, counts, shift,
                                                                                  strict=True)))
            res[dst] = out[src]
    return res


def _phase_geometry(weight_shape: torch.Size, stride: tuple[int, ...], padding: tuple[int, ...], x_shape: torch.Size,
                    g_shape: torch.Size) -> tuple[list[int], list[list[int]], list[list[int]], list[int]]:
    """(taps, starts, counts, pads) of :func:`_conv_t_phases` per spatial dim: ``ceil(k / s)`` taps per phase;
    phase ``a`` has ``M = ceil((X - a) / s)`` outputs, read at the stride-1 convolution's positions ``q .. q + M - 1``
    with ``q = (a + p) // s`` (``starts``, ``counts``) when g is padded by ``taps - 1``; ``pads``: the padding the
    convolution takes, ``taps - 1`` on both sides or the right margin the phases read when that is wider (no padded
    copy of g)."""
    taps = [-(-k // s) for k, s in zip(weight_shape[2:], stride, strict=True)]
    starts = [[(a + p) // s for a in range(s)] for p, s in zip(padding, stride, strict=True)]
    counts = [[-(-(n - a) // s) for a in range(s)] for n, s in zip(x_shape[2:], stride, strict=True)]
    pads = [max(t - 1, max(q + m for q, m in zip(qs, ms, strict=True)) - n)
            for t, qs, ms, n in zip(taps, starts, counts, g_shape[2:], strict=True)]
    return taps, starts, counts, pads


_PHASE_CHUNK = 16  # cotangents per convolution call of the phase form
_PLANES_CHUNK = 256  # and of the planes form


def _conv_t_planes(g: Tensor, weight: Tensor, padding: tuple[int, ...], x_shape: torch.Size,
                   chunk: int = _PLANES_CHUNK, pool: tuple[Tensor, torch.Size] | None = None) -> Tensor:
    """Transposed stride-1 convolution onto ONE input channel: a GEMM per chunk, then one shifted add per kernel
    offset (col2im by slices). Measured faster on CPU than oneDNN, NNPACK and ``fold`` for first layers.

    The chunks share two buffers (the cotangents in (C, B) order and the planes), allocated once: a buffer allocated
    anew per chunk (the planes of LeNet-5's first layer are 20 MB for 256 cotangents) is handed back to the system and
    faulted in again on every chunk (about 29,000 page faults per ``templates`` call at batch 256, counted).

    ``pool``: ``g`` is the cotangent of a max-pool of the convolution's output, given as ``(idx, out_shape)``: the
    pool's argmax per sample (N, C, *pooled) and the convolution's output shape (N, C, *positions). Each chunk of
    ``g`` is scattered to its argmax positions straight into the first buffer (:func:`_pool_into_planes`)."""
    cout, ks = weight.shape[0], tuple(weight.shape[2:])
    osz = tuple(g.shape[2:] if pool is None else pool[1][2:])
    wt = weight.reshape(cout, -1).t().contiguous()  # (K, Cout), K = prod(kernel)
    full = g.new_zeros(g.shape[0], *[o + k - 1 for o, k in zip(osz, ks, strict=True)])
    offsets = list(itertools.product(*[range(k) for k in ks]))
    positions = math.prod(osz)
    rows = min(chunk, g.shape[0])
    columns, planes_buf = g.new_empty(cout * rows * positions), g.new_empty(len(offsets) * rows * positions)
    for start in range(0, g.shape[0], chunk):
        part = g[start:start + chunk]
        m = part.shape[0] * positions
        cols = columns[:cout * m].view(cout, part.shape[0], *osz)
        if pool is None:
            cols.copy_(part.transpose(0, 1))
        else:
            cols.zero_()
            cols.view(cout, part.shape[0], -1).transpose(0, 1).scatter_add_(
                2, _sample_rows(pool[0].flatten(2), start, part.shape[0]), part.flatten(2))
        planes = torch.mm(wt, cols.view(cout, m), out=planes_buf[:len(offsets) * m].view(len(offsets), m))
        planes = planes.view(len(offsets), part.shape[0], *osz)
        target = full[start:start + chunk]
        for r, off in enumerate(offsets):
            # add_ on the view: ``target[...] += v`` would also copy the view back onto itself (__setitem__)
            target[(slice(None), *(slice(o, o + n) for o, n in zip(off, osz, strict=True)))].add_(planes[r])
    crop = tuple(slice(p, p + n) for p, n in zip(padding, x_shape[2:], strict=True))
    return full[(slice(None), *crop)].unsqueeze(1)


def _sample_rows(t: Tensor, start: int, count: int) -> Tensor:
    """Rows ``start .. start + count - 1`` of the R*N cotangents (row-major in (R, N)) taken from ``t``'s N samples:
    a slice when they do not wrap around N, else an index copy."""
    n = t.shape[0]
    first = start % n
    if first + count <= n:
        return t[first:first + count]
    return t[torch.arange(start, start + count, device=t.device) % n]


def _tup(v: Any, d: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * d


def _rows(g: Tensor, r: int) -> Tensor:
    return g.view(r, -1, *g.shape[1:])


def _scaled(g: Tensor, node: Node, r: int, own: bool) -> Tensor:
    """``g`` times the node's factor (a constant shaped like one row's tensor, broadcast over the R rows): its
    ``coef``, or for a ReLU-like unit its ``mask`` as bytes 1 / 0, which the product casts (no float copy of the mask:
    one operation fewer, 3-10% faster than a cast and a product, measured at ResNet-18's sizes); in place when the
    sweep owns ``g``. A 4-d factor takes ``g``'s channels-last layout (a mixed-layout product is 1.6x slower; a mask
    is reordered as bytes, 1.4-3x faster than a cast into that order); a ``coef`` converted once is kept."""
    cl = _is_channels_last(g)
    coef = node.data.get("coef")
    if coef is None:
        coef = node.data["mask"].view(torch.uint8)  # (products and casts from uint8 are faster than from bool)
        if cl and coef.dim() == 4:
            coef = coef.contiguous(memory_format=torch.channels_last)
    elif cl and coef.dim() == 4:
        coef = node.data["coef"] = coef.contiguous(memory_format=torch.channels_last)  # kept: no second copy
    if r == 1 and coef.shape == g.shape:  # one row: no broadcast over rows
        return g.mul_(coef) if own else g * coef
    rows = _rows(g, r)
    return rows.mul_(coef).view(g.shape) if own else (rows * coef).reshape(g.shape)


#: The max-pool nodes of the sweep: a unit may be fused into them at the argmax (:func:`_fuse`).
_MAX_POOLS = frozenset({"gather", "pooled_planes"})


def _at_argmax(node: Node, g: Tensor, r: int, own: bool) -> Tensor:
    """The cotangent ``g`` of a max-pool (a "gather" or "pooled_planes" node) in the layout its rule scatters in,
    times the factor of the unit fused into the pool at its argmax (:func:`_fuse`) when it has one: in place when
    the sweep owns ``g`` or the layout took a copy. The layout is channels-last when both ``g`` and the argmax are
    (a channels-last pool of the recording pass: :func:`._capture._pool_with_indices`), else contiguous (R*N, C, ...):
    then a channels-last argmax and factor are put in that order once, kept for the next sweeps of the plan, so
    that the pool's input cotangent is in the order the layer before the pool was given (a convolution's form may
    be slower in the other)."""
    data = node.data
    if _is_channels_last(data["idx"]) and not _is_channels_last(g):
        data.update({k: v.contiguous() for k, v in data.items() if k in ("idx", "mask", "coef")})
    rows = g if _is_channels_last(data["idx"]) else g.contiguous()
    if "coef" not in data and "mask" not in data:
        return rows
    return _scaled(rows, node, r, own or rows.data_ptr() != g.data_ptr())


def _apply(node: Node, g: Tensor, r: int, own: bool, onednn: bool) -> list[Tensor]:  # noqa: C901 - one rule per kind
    """The rule of ``node`` for its output cotangent ``g``; ``own``: the sweep owns ``g`` (no other tensor's
    cotangent shares its memory), so it may be overwritten; ``onednn``: :func:`_onednn` of the sweep. The cotangent
    of a max-pool ("gather", "pooled_planes") comes with its fused unit's factor applied (:func:`_at_argmax`)."""
    kind = node.kind
    if kind == "scale":
        return [_scaled(g, node, r, own)]
    if kind == "channel_scale":
        scale = node.data["scale"].view(1, -1, *[1] * (g.dim() - 2))
        return [g.mul_(scale) if own else g * scale]
    if kind == "view":
        return [g.reshape(g.shape[0], *node.ins[0].shape[1:])]
    if kind == "sum":
        return [g if s == 1 else g * s for s in node.data["signs"]]
    if kind == "linear":
        return [g @ node.data.get("weight", node.data["args"][1])]
    if kind == "conv":
        weight = node.data.get("weight", node.data["args"][1])
        return [_conv_t(g, node.ins[0].shape, node.data["func"], node.data["args"], weight, node.data["params"],
                        onednn)]
    if kind == "gather":
        idx = node.data["idx"]
        x = node.ins[0]
        n, c = idx.shape[:2]
        if _is_channels_last(idx):  # (a channels-last max-pool: _capture._pool_with_indices) scatter in that order
            flat_idx = idx.permute(0, 2, 3, 1).reshape(1, n, -1, c).expand(r, n, idx[0, 0].numel(), c)  # views
            out = g.new_zeros(r, n, x[0, 0].numel(), c)
            out.scatter_add_(2, flat_idx, g.permute(0, 2, 3, 1).reshape(r, n, -1, c))
            return [out.view(r * n, *x.shape[2:], c).permute(0, 3, 1, 2)]
        flat_idx = idx.reshape(1, n, c, -1).expand(r, n, c, idx[0, 0].numel())  # a view: no copy per row
        out = g.new_zeros(r, n, c, x[0, 0].numel())
        out.scatter_add_(3, flat_idx, g.view(r, n, c, -1))
        return [out.view(r * n, *x.shape[1:])]
    if kind == "pooled_planes":
        weight = node.data.get("weight", node.data["args"][1])
        return [_conv_t_planes(g, weight, node.data["params"][1], node.ins[0].shape,
                               pool=(node.data["idx"], node.data["conv_out"].shape))]
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
    if kind == "global_mean":  # each position gets 1 / (number of positions) of its channel's cotangent
        x = node.ins[0]
        return [(g / math.prod(x.shape[2:])).expand(g.shape[0], *x.shape[1:]).contiguous()]
    if kind == "generic":  # a pooling: autograd's VJP at a broadcast zero (no input-sized buffer, no functorch)
        x = node.ins[0]
        zero = torch.zeros((), dtype=g.dtype, device=g.device).expand(g.shape[0], *x.shape[1:]).requires_grad_()
        with torch.enable_grad():
            out = node.data["func"](zero, *node.data["args"], **node.data["kwargs"])
        return list(torch.autograd.grad(out, zero, g))
    raise _NoRule(f"a recorded operation of kind {kind!r}")


def _apply_vjp(node: Node, gs: list[Tensor | None], r: int) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """The generic rule: the op's own VJP at zeros (the same at every point of an affine op), over the R rows;
    also the op's value at zeros, its constant term (the node's share of B[x], eq. 7 of 000)."""
    outs = node.data["outs"]
    like = next(g for g in gs if g is not None)  # the device of the sweep (the nodes hold stand-ins)
    primals = [torch.zeros(t.shape, dtype=t.dtype, device=like.device) for t in node.ins]
    with torch.enable_grad():
        at_zero, pull = torch.func.vjp(node.data["fn"], *primals)
    cots = tuple(torch.zeros(r, *o.shape, dtype=o.dtype, device=like.device) if g is None else g.view(r, *o.shape)
                 for g, o in zip(gs, outs, strict=True))
    grads = torch.func.vmap(pull)(cots)
    return [gi.reshape(r * t.shape[0], *t.shape[1:]) for gi, t in zip(grads, node.ins, strict=True)], at_zero


def _readers(nodes: list[Node]) -> dict[int, int]:
    """id(tensor) -> how many inputs of ``nodes`` read it."""
    uses: dict[int, int] = {}
    for node in nodes:
        for t in node.ins:
            uses[id(t)] = uses.get(id(t), 0) + 1
    return uses


def _fuse(nodes: list[Node], rows: int) -> list[Node]:
    """The nodes the sweep runs for ``rows`` rows: the recorded ones with these exact rewrites (same numbers up to
    rounding).

    * A per-channel scale (batch-norm in eval mode) whose input is only read by it and was made by a convolution
      (or a linear layer on (N, C) tensors) is folded into that layer's weight: ``W^T (s * g) = (s W)^T g``, one
      pass over the cotangents fewer per batch-norm; done when the weight is smaller than the ``rows``
      cotangents of the layer's output it saves a pass over.
    * The weight of a 2-d convolution whose transposed form is "channels_last" (:func:`_conv_form`) is held in
      channels-last order where that layout changes its form to the faster one (:func:`_sweep_weight`).
    * A ReLU-like mask (also in place) followed only by a max-pool is applied at the argmax positions (pooled
      size) instead of on the whole pre-pool tensor (~window-size fewer multiplications); always for a ReLU,
      whose mask at the argmax the recording pass read off the pooled values (``picked``: :func:`._capture._selected`),
      otherwise when the ``rows`` multiplications it saves cost more than gathering the mask once (about 8
      multiplications per element, measured).
    * A max-pool of a one-input-channel convolution's output is merged into that convolution
      (:func:`_pool_into_planes`).
    """
    uses = _readers(nodes)
    fused: list[Node] = []
    made_by: dict[int, int] = {}  # id(tensor) -> position in ``fused`` of the latest node that wrote it
    for node in nodes:
        source = fused[made_by[id(node.ins[0])]] if node.ins and id(node.ins[0]) in made_by else None
        prev = fused[-1] if fused else None
        if node.kind == "channel_scale" and source is not None and uses.get(id(node.ins[0]), 0) == 1 and \
                (source.kind == "conv" or (source.kind == "linear" and source.out.dim() == 2)) and \
                source.data["args"][1].numel() <= rows * node.out.numel():
            weight = source.data["args"][1]
            scale = node.data["scale"].to(weight.dtype).view(-1, *[1] * (weight.dim() - 1))
            if "scale" in source.data:  # a second batch-norm folded into the same layer
                scale = scale * source.data["scale"]
            offset = node.data["offset"]  # the fused layer's bias: scale * (the layer's bias) + the shift
            if "offset" in source.data:
                offset = offset + source.data["offset"] * node.data["scale"].reshape(offset.shape)
            fused[made_by[id(node.ins[0])]] = Node(source.kind, source.ins, node.out,
                                                   {**source.data, "scale": scale, "offset": offset})
            made_by[id(node.out)] = made_by[id(node.ins[0])]
            continue
        in_place = prev is not None and prev.ins[0] is prev.out  # relu_(h): h read by the mask and the pool
        key = "coef" if prev is not None and "coef" in prev.data else "mask"  # a scale's factor, or its mask
        picked = node.data.get("picked") if key == "mask" else None  # the mask at the argmax, when recorded
        if node.kind == "gather" and prev is not None and prev.kind == "scale" and prev.out is node.ins[0] and \
                "offset" not in prev.data and uses.get(id(prev.out), 0) == 1 + in_place and \
                prev.data[key].shape == prev.out.shape and \
                (picked is not None or rows * prev.out.numel() >= 8 * node.data["idx"].numel()):
            idx = node.data["idx"]
            if picked is None:
                picked = prev.data[key].flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
            fused[-1] = Node("gather", (prev.ins[0],), node.out, {"idx": idx, key: picked})
        else:
            fused.append(node)
        made_by[id(node.out)] = len(fused) - 1
    return _pool_into_planes([_sweep_weight(node, rows) if node.kind in ("conv", "linear") else node
                              for node in fused], rows)


def _pool_into_planes(nodes: list[Node], rows: int) -> list[Node]:
    """``nodes`` with each max-pool ("gather", a unit's factor fused in or not) whose input is read by it alone and
    made by a convolution in the "planes" form (:func:`_conv_form`: one input channel, LeNet-5's first layer) with a
    per-channel offset merged with that convolution into one "pooled_planes" node, at the pool's place. Its rule
    scatters each chunk of the pool's cotangents straight into the planes form's buffer (:func:`_conv_t_planes`),
    so the cotangent of the convolution's output is never made: for LeNet-5 at batch 256 and 10 rows a 48 MB tensor,
    which glibc maps afresh and the system faults in on every call (11,762 page faults per ``templates`` call,
    counted). B's share of the offset is summed at the pooled size: a scatter keeps each channel's sum."""
    uses = _readers(nodes)
    made_by: dict[int, int] = {}
    merged: list[Node | None] = list(nodes)
    for i, node in enumerate(nodes):
        j = made_by.get(id(node.ins[0])) if node.kind == "gather" else None
        conv = nodes[j] if j is not None else None
        offset = conv.data.get("offset") if conv is not None else None
        if conv is not None and conv.kind == "conv" and uses[id(node.ins[0])] == 1 and \
                (offset is None or all(s == 1 for s in offset.shape[2:])) and \
                _conv_form((rows * conv.out.shape[0], *conv.out.shape[1:]), conv.ins[0].shape,
                           conv.data["args"][1].shape, conv.data["params"], _onednn(conv.data["args"][1]),
                           False) == "planes":
            pool = {k: v.contiguous() for k, v in node.data.items() if k in ("idx", "mask", "coef")}  # C order
            merged[i] = Node("pooled_planes", conv.ins, node.out, {**conv.data, **pool, "conv_out": conv.out})
            merged[j] = None
        made_by[id(node.out)] = i
    return [node for node in merged if node is not None]


def _is_channels_last(t: Tensor) -> bool:
    """Whether a 4-d tensor (a 2-d convolution's weight, a max-pool's argmax, a cotangent) is in channels-last order
    and not also plain contiguous (1x1 kernels, one channel)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _sweep_weight(node: Node, rows: int) -> Node:
    """``node`` (a convolution or linear layer) with the weight the sweep uses, as ``data["weight"]``: the layer's
    own with a folded batch-norm scale (:func:`_fuse`), in channels-last order when holding it so turns its
    transposed convolution into the faster "channels_last" form (:func:`_conv_form`: oneDNN, 2-d, 16 or more
    channels, no groups, a kernel wider than 1x1) and the weight has at most twice as many elements as the ``rows``
    cotangents of the layer's output (its one reordering pass then costs less than the time the layout saves,
    measured on ResNet-18 at 224x224)."""
    scale = node.data.get("scale")
    weight = node.data["args"][1]
    layout = torch.contiguous_format
    if node.kind == "conv" and weight.dim() == 4 and weight.numel() <= 2 * rows * node.out.numel():
        form = functools.partial(_conv_form, (rows * node.out.shape[0], *node.out.shape[1:]), node.ins[0].shape,
                                 weight.shape, node.data["params"], _onednn(weight))
        if form(cl_weight=True) == "channels_last" != form(cl_weight=False):
            layout = torch.channels_last
    if scale is None and (layout is torch.contiguous_format or _is_channels_last(weight)):
        return node
    data = {k: v for k, v in node.data.items() if k != "scale"}
    if scale is None:
        data["weight"] = weight.contiguous(memory_format=layout)
    else:
        data["weight"] = torch.mul(weight, scale, out=torch.empty_like(weight, memory_format=layout))
    return Node(node.kind, node.ins, node.out, data)


#: Rules whose results are new tensors (the sweep owns them); "view" and "cat" return views of their cotangent
#: (owned when it is), "sum" hands the same cotangent to several inputs, the rest are left unowned.
_FRESH = frozenset({"scale", "channel_scale", "linear", "conv", "gather", "pooled_planes", "select", "global_mean"})


def _owned(node: Node, own: bool) -> list[bool]:
    """Per input of ``node``: whether the cotangent its rule returned is owned by the sweep (see ``_FRESH``)."""
    if node.kind in _FRESH:
        return [True] * len(node.ins)
    if node.kind in ("view", "cat"):
        return [own] * len(node.ins)
    if node.kind == "sum":
        signs = node.data["signs"]
        alone = own and sum(s == 1 for s in signs) == 1
        return [alone if s == 1 else True for s in signs]
    return [False] * len(node.ins)


def _accumulate(cot: dict[int, Tensor], owned: set[int], key: int, g: Tensor, new: bool) -> None:
    """Add ``g`` (owned by the sweep when ``new``) to the cotangent ``cot[key]``: in place into whichever of the
    two the sweep owns, else into a new tensor (no reference outlives the call: memory is freed on time)."""
    prev = cot.get(key)
    if prev is None:
        cot[key] = g
    elif key in owned:
        prev.add_(g)
        return
    else:
        cot[key] = g.add_(prev) if new else prev + g
        new = True
    if new:
        owned.add(key)


def transpose_rows(tape: Tape, x: Tensor, y_raw: Tensor, rows: Tensor, out: Tensor | None = None,
                   bias: Tensor | None = None) -> Tensor | None:
    """Rows ``rows`` of A[x] for every sample: (N, R, D), or None when the tape holds an op without a rule.

    ``out``: an (N, R, D) tensor (a slice of a preallocated A) to write the rows into instead of a new tensor.
    ``bias``: an (N, R) tensor to write the same rows of B[x] into, accumulated in the same sweep as the sum over
    the recorded nodes of ``<cotangent of the node's output, the node's constant term>`` (the biases of eq. 7 of 000,
    propagated by the transposed masked network; valid when every node's output keeps the samples in dim 0).
    Returns None when the tape holds an op without a rule; then ``tape.reason`` says which op. Errors of the rules
    themselves (out of memory, bugs) propagate.
    """
    if not tape.ok:
        return None
    n = x.shape[0]
    r = rows.numel()
    c = y_raw[0].numel()
    seed = y_raw.new_zeros(r, n, c)
    seed[torch.arange(r), :, rows] = 1
    y_key, x_key = id(tape.shadow(y_raw)), id(tape.shadow(x))
    cot: dict[int, Tensor] = {y_key: seed.view(r * n, *y_raw.shape[1:])}
    owned = {y_key}  # cotangents no other cotangent shares memory with: their rules may work in place
    shares = None if bias is None else _Shares(y_raw.new_zeros(r, n), r)
    onednn = _onednn(x)
    try:
        with torch.no_grad():
            for node in reversed(tape.plan()):
                if node.kind == "vjp":
                    gs = [cot.pop(id(o), None) for o in node.data["outs"]]
                    owned.difference_update(id(o) for o in node.data["outs"])
                    if all(g is None for g in gs):
                        continue
                    grads, at_zero = _apply_vjp(node, gs, r)
                    fresh = [False] * len(node.ins)
                    if shares is not None:
                        for g, const in zip(gs, at_zero, strict=True):
                            if g is not None:
                                shares.add(g, const)
                    del gs, at_zero
                else:
                    g = cot.pop(id(node.out), None)
                    if g is None:
                        continue
                    own = id(node.out) in owned
                    owned.discard(id(node.out))
                    if node.kind in _MAX_POOLS:  # the factor of the unit fused in first: B's share is taken after it
                        g = _at_argmax(node, g, r, own)
                    if shares is not None and "offset" in node.data:  # before the rule, which may work in place
                        shares.add(g, node.data["offset"])
                    grads, fresh = _apply(node, g, r, own, onednn), _owned(node, own)
                    del g  # freed as soon as its rule has run (unless a result is a view of it)
                for inp, new in zip(node.ins, fresh, strict=True):
                    _accumulate(cot, owned, id(inp), grads.pop(0), new)
    except _NoRule as err:
        tape.switch_off(f"{err} (no transpose rule)")
        return None
    gx = cot.pop(x_key, None)
    if shares is not None:
        bias.copy_(shares.total().T)
    if out is None:
        out = x.new_empty(n, r, x[0].numel())
    if gx is None:
        return out.zero_()
    out.view(n, r, *x.shape[1:]).copy_(gx.view(r, n, *x.shape[1:]).transpose(0, 1))  # any layout, no temporary
    return out


def _workspace(node: Node, onednn: bool, batch: int) -> tuple[int, int]:
    """Temporary elements a rule needs beyond its results, as (per row, in all): a copy of the cotangent (layouts,
    the mask of a max-pool), the per-input selections of ``select``, the zeros and internals of an op's own VJP."""
    outs = node.data["outs"] if node.kind == "vjp" else (node.out,)
    if node.kind == "conv":
        return _conv_workspace(node, onednn, batch)
    if node.kind == "pooled_planes":  # and the pool's cotangent times its factor, a chunk's argmax (int64)
        per_row, bounded = _conv_workspace(node, onednn, batch)
        return per_row + node.out.numel(), bounded + 2 * min(batch, _PLANES_CHUNK) * node.data["idx"][0].numel()
    if node.kind == "gather":
        return node.out.numel(), node.out.numel() if "mask" in node.data else 0
    if node.kind == "scale" and "mask" in node.data:  # the mask reordered (bytes: counted as elements), B's share
        return node.out.numel() if "offset" in node.data else 0, node.out.numel()
    if node.kind in ("scale", "channel_scale", "sum", "linear") and "offset" in node.data and \
            node.data["offset"].numel() > (node.out.shape[1] if node.out.dim() > 1 else 1):  # B's share: a product
        return node.out.numel(), 0
    if node.kind in ("select", "generic", "vjp"):
        return sum(t.numel() for t in (*node.ins, *outs)), 0
    if node.kind == "global_mean":  # the scaled cotangent before its expansion
        return node.out.numel(), 0
    return 0, 0


def sweep_bytes(tape: Tape, x: Tensor, y_raw: Tensor, rows: int) -> tuple[int, int]:
    """The memory :func:`transpose_rows` allocates for ``rows`` rows at a time, for the samples of this tape, as
    ``(per row, in all)`` bytes, an upper bound: the same walk as the sweep on sizes only, with every rule's
    results (none when it works in place on a cotangent it owns), its workspace (:func:`_workspace`) and
    accumulation through a temporary sum. Backend scratch memory (oneDNN) is not counted."""
    onednn = _onednn(x)
    batch = rows * x.shape[0]
    live = {id(tape.shadow(y_raw)): y_raw.numel()}
    owned = set(live)
    total = y_raw.numel()
    peak, worst = (total, 0), total * rows  # peak: (per row, bounded); worst: its elements for ``rows`` rows
    for node in reversed(tape.plan()):
        outs = node.data["outs"] if node.kind == "vjp" else (node.out,)
        sizes = [live.pop(id(o), 0) for o in outs]
        if not any(sizes):
            continue
        own = node.kind != "vjp" and id(node.out) in owned
        owned.difference_update(id(o) for o in outs)
        results = 0 if own and node.kind in ("scale", "channel_scale") else sum(t.numel() for t in node.ins)
        per_row, bounded = _workspace(node, onednn, batch)
        if (total + results + per_row) * rows + bounded > worst:
            peak = (total + results + per_row, bounded)
            worst = peak[0] * rows + bounded
        total -= sum(sizes)
        fresh = [False] * len(node.ins) if node.kind == "vjp" else _owned(node, own)
        for t, new in zip(node.ins, fresh, strict=True):
            if id(t) in live:
                if id(t) not in owned:
                    if (total + t.numel()) * rows > worst:
                        peak = (total + t.numel(), 0)
                        worst = peak[0] * rows
                    owned.add(id(t))
            else:
                live[id(t)] = t.numel()
                total += t.numel()
                if new:
                    owned.add(id(t))
    return peak[0] * x.element_size(), peak[1] * x.element_size()


def tape_bytes(tape: Tape) -> tuple[int, int]:
    """Memory held by the recorded tape (bytes) as ``(samples, weights)``: the distinct storages of its masks,
    argmax indices and constants (which grow with the number of samples), and of the weights with a batch-norm
    folded in (which do not); the model's own parameters aside (the activations are not kept: :class:`Tape`)."""
    tensors: dict[int, tuple[Tensor, bool]] = {}  # id -> (tensor, is a folded weight); each tensor looked at once
    nodes = {id(node): node for node in (*tape.nodes, *tape.plan())}  # the recorded nodes keep bypassed tensors
    for node in nodes.values():  # (their inputs and outputs are stand-ins on the meta device: Tape.add)
        for key, value in node.data.items():
            if isinstance(value, Tensor) and key not in ("args", "kwargs", "fn", "outs"):
                tensors[id(value)] = (value, key == "weight")
    storages: dict[int, tuple[int, bool]] = {}
    for t, fixed in tensors.values():
        if not issubclass(type(t), torch.nn.Parameter) and t.device.type != "meta":  # (isinstance is slow here)
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = (storage.nbytes(), fixed)
    return sum(b for b, fixed in storages.values() if not fixed), sum(b for b, fixed in storages.values() if fixed)
