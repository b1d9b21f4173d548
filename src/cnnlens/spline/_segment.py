"""Exact region boundaries crossed by a straight path x0 -> x1 (beyond 000: a walk through the spline partition).

Inside one region the network is affine (eq. 9 of 000), so along ``x(t) = x0 + t (x1 - x0)`` every pre-activation,
clamp input and pooled value is affine in t. One forward-mode pass (value and derivative d/dt with the region's
pieces held fixed) therefore gives, for every unit, the exact step to its next boundary: a ReLU-like zero crossing,
a clamp threshold, a breakpoint of an elementwise piecewise unit (Hardsigmoid, Hardshrink, ...), the next argmax
switch inside a window (max-pooling, adaptive max-pooling, max over dimensions, running max), or the next crossing
of the element an order statistic (sort, top-k, median) selects. The walk jumps to the nearest one, re-reads the
region just past it, and repeats. Unlike SplineCam (no max-pool, no residuals) it handles every part the capture
supports.

The values and their slopes along the path are read in one *paired* pass on the batch ``[x; x + scale d]``: every
nonlinearity decides its piece on the points x and applies the same piece to the points further along the path, so
the second half is x's region replayed there and the difference of the halves is each value's slope (exact up to
rounding; :func:`cnnlens.spline._capture.capture` with ``paired=True``). One pass of 2N samples costs less than a
recording pass and a replay of N each (half the per-operation overhead); a model whose control flow reads values off
the input is read with the two passes instead.

A walk is sequential, and a forward pass on one point costs far more than its share of a batched pass, so the walk
advances up to ``batch_size`` *fronts* together, one batched read per round (adapted to the model by default: the
batch grows while the measured cost per point falls). Front 0 starts at t = 0; the others are
started ahead of it, spaced a few regions apart (from the region widths read so far), and walk on their own. When a
front steps into a region another front has already read, it takes over that front's boundaries from there on. A
region read from any of its points is the same region, so the merged walk is the walk from t = 0, read with fewer,
larger passes; the result always describes a prefix [0, t_reached] of the segment.
"""

from __future__ import annotations

import bisect
import copy
import functools
import math
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._progress import phase
from ._capture import (
    UNFORCEABLE,
    Entry,
    ReplayDivergenceError,
    UnpairableError,
    capture,
    check_model_input,
    run_captured,
)
from ._windows import pool_window_view, pool_windows

__all__ = ["SegmentRegions", "regions_on_segment"]

#: A new front is started about this many region widths ahead of the previous one (fewer: more regions read twice,
#: one per front; more: coarser progress of the prefix).
_REGIONS_PER_FRONT = 8
#: Steps to two boundaries closer than this (relative) are one crossing, named after the first layer in forward order.
_TIE = 1e-12
#: The adaptive batch (``batch_size=None``, :class:`_BatchSize`): the fewest fronts it starts from, the records of a
#: round it starts from (the largest power of two of fronts within them), the largest batch, the memory the records
#: of one round may take (every nonlinearity's input, both halves of the paired pass), and the factor by which
#: doubling the batch must cut the cost per point to be kept.
_FIRST_BATCH, _START_RECORDS, _MAX_BATCH, _RECORD_BUDGET, _GAIN = 8, 2**23, 256, 2**28, 0.95


#: glibc's malloc serves blocks above a threshold (128 KB at first) with fresh mappings, whose pages fault in on first
#: use, and raises that threshold to the size of a freed mapped block (up to 32 MB), the heap's trim threshold to
#: twice it. A walk allocates the records of every round anew (about 30 MB per round for the small ResNet at 16
#: points): with low thresholds every round faults its pages in again (measured, small ResNet, 8-32 fronts: 260-290
#: page faults and 0.5-0.8 ms of system time per region, 5.0-7.6 ms per region in all), after one block of 32 MB was
#: freed 6-27 faults per region (3.5-4.4 ms per region in all). :func:`regions_on_segment`
#: allocates and frees one such block (no page touched) first, as a program that once used a buffer of that size
#: has done; with other allocators it changes nothing.
_MAPPED_BLOCK = 2**25 - 2**13  # bytes: the chunk with its header stays within glibc's 32 MB maximum


@dataclass(frozen=True)
class SegmentRegions:
    """Regions met along ``x0 + t (x1 - x0)``, t in [0, 1] (or the prefix [0, t_reached] of a partial walk).

    Attributes
    ----------
    breakpoints : Tensor (K,) float64
        Sorted t in (0, t_reached) where the path crosses a region boundary of some layer.
    layers : list of str
        For each breakpoint, the layer whose boundary is crossed (the first one in forward order on exact ties).
    num_regions : int
        ``K + 1``: the number of regions the open segment (0, t_reached) passes through.
    partial : bool
        True when the walk stopped early (``max_regions`` or ``max_seconds``); then only [0, t_reached] was walked.
    t_reached : float
        1.0 for a complete walk. For a partial walk, the boundary that ends the last region listed: the full walk
        has the same breakpoints below it and one more at it.
    """

    breakpoints: Tensor
    layers: list[str]
    num_regions: int
    partial: bool = False
    t_reached: float = 1.0


def _first_crossing(s: Tensor) -> Tensor:
    """Per sample, the smallest of the steps ``s`` (N, *units) of one layer, clamped at 0: float64 (N,)."""
    if not s.numel():
        return torch.full(s.shape[:1], math.inf, dtype=torch.float64)
    return s.flatten(1).amin(1).clamp_min(0)


#: The sign bit of a float64 read as an int64.
_SIGN_BIT = -(2**63)
#: The bit pattern of +inf read as an int64, with its sign bit flipped (the order of :func:`_least_nonnegative`).
_INF_FLIPPED = 0x7FF0000000000000 ^ _SIGN_BIT


def _least_nonnegative(q: Tensor) -> Tensor:
    """Per sample, the smallest entry of ``q`` (N, *units) that is >= +0.0, NaN excluded; +inf if none: (N,).

    Same result as ``torch.where(q >= 0, q, inf)`` followed by a minimum, for ``q`` without -0.0 (or where -0.0
    counts as negative), at a fraction of its cost (CPU ``torch.where`` is not vectorised): flipping the sign bit of
    the bit patterns read as int64 orders them as unsigned integers, in which +0.0 < the positive doubles (in their
    order) < +inf < NaN < every negative double, -0.0 included; clamping at +inf in that order sends NaN and the
    negatives to +inf, and flipping back leaves doubles in [+0.0, +inf], whose float64 minimum (vectorised, unlike
    the int64 one: 2x faster overall) is the answer. ``q`` is consumed (overwritten).
    """
    if not q.numel():
        return torch.full(q.shape[:1], math.inf, dtype=torch.float64)
    bits = q.view(torch.int64).bitwise_xor_(_SIGN_BIT).clamp_(max=_INF_FLIPPED).bitwise_xor_(_SIGN_BIT)
    value = bits.view(torch.float64)
    return value.amin(tuple(range(1, q.dim()))) if q.dim() > 1 else value  # in any memory layout, without a copy


_ZERO = torch.zeros((), dtype=torch.float64)


def _binary_step(active: Tensor, u: Tensor, ahead: Tensor) -> Tensor:
    """Steps of two-piece units to their zero crossing (the piece is ``u > 0``, eq. 14 of 000).

    With ``d = u - ahead`` (minus the slope, in units of the replay offset), the step is ``t = u / d`` where the
    unit moves towards its boundary: active (``u > 0``) and falling, or inactive and rising. For ``u != 0`` that is
    exactly where ``t > 0`` (``d == 0`` gives ``t = ±inf`` or NaN, never a crossing), so the sign of ``t`` replaces
    the rule by pieces; only ``t == ±0`` (``u`` exactly zero, or an underflow) needs the pieces, and the layers
    where a sample's minimum is zero (rare) are recomputed with them.
    """
    t = torch.sub(u, ahead)
    t = torch.addcdiv(_ZERO, u, t, out=t)  # +0.0 + u / t: -0.0 becomes +0.0, every zero step is kept (decided below)
    s = _least_nonnegative(t)
    if not bool((s == 0).any()):
        return s
    d = u - ahead
    return _first_crossing(torch.where(torch.where(active, d > 0, d < 0), u / d, math.inf))


def _max_pool_step(windows: functools.partial, h: Tensor, ahead: Tensor, idx: Tensor) -> Tensor:
    """The argmax rule of :func:`_step` for max-pooling, on the windows as a strided view (no copy of overlapping
    windows; :func:`pool_window_view`), the window dimensions first so that the selected element of every window
    broadcasts over them; only the per-sample minimum is needed, not which window a step belongs to. ``h`` holds the
    values at the points, ``ahead`` the replay further along the path.

    ``idx`` is PyTorch's flat per-channel index of every window's maximum (the entry's selector). Windows that tile
    the input (stride = kernel, no padding or dilation, no partial window) are read off ``h`` itself viewed as
    (N, C, out_1, k_1, out_2, k_2, ...) and permuted to (N, C, k_1, k_2, ..., out_1, out_2, ...), the differences
    written into buffers of that order: there the selected elements broadcast over leading dimensions and the
    innermost loop runs over the windows, not over a window's few elements (2x2 windows: 1.3x faster than on
    the unpermuted view, which itself was 1.3-1.9x faster than the strided window view). Every difference is the
    one of the explicit rule, element by element, and the minimum does not depend on the order: the same bits.
    """
    d = idx.dim() - 2
    n, c, *out = idx.shape
    kw = windows.keywords
    flat = idx.reshape(n, c, -1)
    sel_shape = (n, c, *[1] * d, *out)
    v_sel = h.reshape(n, c, -1).gather(2, flat).view(sel_shape)
    if kw["k"] == kw["s"] and not any(kw["p"]) and all(v == 1 for v in kw["dil"]) and \
            all(o * k <= size for o, k, size in zip(out, kw["k"], h.shape[2:], strict=True)):
        tiles = (n, c, *[v for o, k in zip(out, kw["k"], strict=True) for v in (o, k)])
        crop = (slice(None), slice(None), *[slice(0, o * k) for o, k in zip(out, kw["k"], strict=True)])
        tiled = (0, 1, *range(3, 2 + 2 * d, 2), *range(2, 2 + 2 * d, 2))  # (N, C, o1, k1, ...) -> (N, C, *k, *out)
        v, a = h[crop].reshape(tiles).permute(tiled), ahead[crop].reshape(tiles).permute(tiled)
        dv_sel = ahead.reshape(n, c, -1).gather(2, flat).view(sel_shape) - v_sel  # (ahead - h) at the selection
        num = torch.sub(v_sel, v, out=torch.empty(v.shape, dtype=h.dtype))
        gain = torch.sub(a, v, out=torch.empty(v.shape, dtype=h.dtype)).sub_(dv_sel)
        return _least_nonnegative(num.div_(gain))  # see the argmax rule of _step
    dh = ahead - h
    args = (kw["k"], kw["s"], kw["p"], kw["dil"], kw["ceil_mode"])
    order = (0, 1, *range(2 + d, 2 + 2 * d), *range(2, 2 + d))  # (N, C, *out, *k) -> (N, C, *k, *out)
    v = pool_window_view(h, *args, fill=-math.inf).permute(order)
    dv = pool_window_view(dh, *args, fill=0.0).permute(order)
    dv_sel = dh.reshape(n, c, -1).gather(2, flat).view(sel_shape)
    return _least_nonnegative((v_sel - v).div_(dv - dv_sel))  # see the argmax rule of _step


def _step(here: Entry, ahead: Entry) -> Tensor:
    """Per sample of the batch, the smallest step s >= 0 until a unit of this layer changes piece: float64 (N,).

    ``here`` is the record of the points (its pieces are the points' own: ``u > 0`` for binary units, the argmax
    for max-like ones) and ``ahead`` the replay of the same pieces at the points plus the replay offset; steps are
    in units of that offset (the caller scales them), the slope of every value being ``ahead - here``.
    """
    if here.kind == "binary":
        return _binary_step(here.states, here.probe["u"], ahead.probe["u"])
    h = here.probe["h"]
    windows = here.probe.get("windows")
    if here.kind == "argmax" and isinstance(windows, functools.partial) and windows.func is pool_windows:
        return _max_pool_step(windows, h, ahead.probe["h"], here.selector)
    dh = ahead.probe["h"] - h
    if here.kind == "ternary":
        lo, hi = here.probe["lo"], here.probe["hi"]
        state = here.states
        to_lo = (lo - h) / dh
        to_hi = (hi - h) / dh
        up, down = dh > 0, dh < 0
        s = torch.where(up & (state != 2), torch.where(state == 0, to_lo, to_hi), math.inf)
        return _first_crossing(torch.where(down & (state != 0), torch.where(state == 2, to_hi, to_lo), s))
    if here.kind == "piecewise":  # the breakpoints below and above every unit's piece
        lo, hi = here.probe["pieces"].bounds(here.states.long(), h.dtype)
        return _first_crossing(torch.where(dh > 0, (hi - h) / dh, torch.where(dh < 0, (lo - h) / dh, math.inf)))
    # argmax, rank: the selected element meets another element of its window
    v = windows(h, fill=float("-inf"))
    dv = windows(dh, fill=0.0)
    sel = here.states.long().unsqueeze(-1)
    gain = dv - dv.gather(-1, sel)
    num = v.gather(-1, sel) - v
    if here.kind == "argmax":  # only elements below the maximum that rise faster can overtake it
        # num >= +0 (the selected element is the window's maximum, -inf padding gives +inf), so num / gain is
        # >= +0 exactly where gain > 0 (or +inf: gain == +0, no crossing either way) and -0.0 or negative elsewhere
        return _least_nonnegative(num.div_(gain))
    meet = num / gain  # rank: any element crossing the selected one changes its rank
    return _first_crossing(torch.where((gain != 0) & (meet >= 0), meet, math.inf))


@dataclass
class _Front:
    """One walk front: it reads the region of ``start``, then of ``ends[i] + min_step`` after each boundary.

    ``evals[i]`` is the i-th point read and ``ends[i]`` the end of its region (the next boundary, crossed in layer
    ``layers[i]``; >= 1 when the region reaches the end of the segment), so ``[evals[i], ends[i])`` lies in one
    region. After a merge the lists continue with the other front's records.
    """

    start: float
    min_step: float
    evals: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    @property
    def pending(self) -> float:
        """The next point to read."""
        return self.ends[-1] + self.min_step if self.ends else self.start

    @property
    def done(self) -> bool:
        """Whether the last region read reaches the end of the segment (up to ``min_step``)."""
        return bool(self.ends) and self.pending >= 1.0

    def breakpoints(self) -> list[float]:
        return self.ends if not self.done or self.ends[-1] < 1.0 else self.ends[:-1]


def _halves(entry: Entry, n: int) -> tuple[Entry, Entry]:
    """The record of the points (first ``n`` samples) and of the points moved along the path (the rest) that a
    paired pass holds in one entry (:func:`cnnlens.spline._capture.capture`, ``paired=True``), as :func:`_step`
    takes them: the per-sample probes (``u``, ``h``), states and selectors are split, the rest is shared."""
    def cut(v: object, part: slice) -> object:
        if isinstance(v, Tensor):
            return v[part]
        return tuple(cut(w, part) for w in v) if isinstance(v, tuple) else v

    parts = []
    for part in (slice(None, n), slice(n, None)):
        probe = {k: cut(v, part) if k in ("u", "h") else v for k, v in entry.probe.items()}
        parts.append(Entry(entry.name, entry.kind, entry.shape, entry.num_states, cut(entry.states, part),
                           cut(entry.selector, part), probe))
    return parts[0], parts[1]


class _Reader:
    """Reads regions along ``a + t direction``: for each point, the step to the nearest boundary ahead and its layer.

    The slope of every value along the path is its value with the point's pieces held fixed, further along the path,
    minus its value (exact up to rounding, as from forward-mode differentiation; :func:`_step`). Both are read in one
    *paired* pass on the batch ``[x; x + scale direction]``, in which every nonlinearity takes the pieces of the
    first half on the second half too (``capture(paired=True)``): half the per-operation overhead of a recording
    pass and a replay. A model the paired pass cannot follow (control flow on values read off the input) is read
    with the two passes from then on. The step is taken ``scale`` = a power of two >= |a| / |direction| ahead, so
    that the input difference ``(x + scale d) - x`` keeps the direction's precision even on short segments.
    """

    def __init__(self, model: Callable[[Tensor], Tensor], a: Tensor, direction: Tensor) -> None:
        self.model, self.a, self.direction = model, a, direction
        reach = float(direction.abs().max())
        self.scale = 2.0 ** max(0, math.ceil(math.log2((float(a.abs().max()) + reach) / reach))) if reach > 0 else 1.0

    #: False once the model needed two passes (an instance attribute from then on)
    paired = True
    #: whether the paired pass keeps the inputs of the nonlinearities by reference (no copies); False once the
    #: model overwrote one of them in place after its nonlinearity
    shared = True
    #: memory of the records of the last pass per point (the probes of both halves)
    bytes_per_point = 0.0

    def points(self, t: list[float]) -> Tensor:
        """The points ``a + t_i direction``, a batch."""
        return self.a + torch.tensor(t, dtype=torch.float64).view(-1, *([1] * (self.a.dim() - 1))) * self.direction

    def passes(self, x: Tensor) -> tuple[list[Entry], list[Entry]]:
        """The entries recorded at the points ``x`` and their replay at ``x + scale direction``."""
        here, ahead = self._passes(x)
        self.bytes_per_point = sum(v.nbytes for e in (*here, *ahead) for k, v in e.probe.items()
                                   if k in ("u", "h")) / x.shape[0]
        return here, ahead

    def _passes(self, x: Tensor) -> tuple[list[Entry], list[Entry]]:
        ahead_x = x + self.scale * self.direction
        with torch.no_grad():
            if self.paired:
                try:
                    with capture(self.model, probe=True, paired=True, shared_probes=self.shared) as both:
                        run_captured(both, self.model, torch.cat([x, ahead_x]))
                except UnpairableError:
                    self.paired = False
                else:
                    if not both.probes_intact():  # the model overwrote an input of a nonlinearity later on
                        self.shared = False
                        return self._passes(x)
                    halves = [_halves(e, x.shape[0]) for e in both.entries]
                    return [h for h, _ in halves], [f for _, f in halves]
            with capture(self.model, graph=False, probe=True) as here:
                run_captured(here, self.model, x)
            if not here.entries:
                return [], []
            try:
                with capture(self.model, graph=False, probe=True, forced=here.entries) as ahead:
                    run_captured(ahead, self.model, ahead_x)
                if len(ahead.entries) != len(here.entries):  # a path with fewer nonlinearities
                    raise ReplayDivergenceError(
                        f"the replayed forward pass met {len(ahead.entries)} nonlinearities, where the recorded pass "
                        f"met {len(here.entries)}: {UNFORCEABLE}, so the regions recorded at x cannot be replayed at "
                        "another input.")
            except ReplayDivergenceError as err:
                raise ReplayDivergenceError(f"regions_on_segment reads the slopes along the path by replaying the "
                                            f"regions of each point further along it, which this model does not "
                                            f"allow: {err}") from err
        return here.entries, ahead.entries

    def steps(self, here: list[Entry], ahead: list[Entry]) -> Tensor:
        """Steps (layers, N) in units of t: the replay offset is ``scale`` (a power of two: the scaling is exact)."""
        with torch.no_grad():
            return torch.stack([_step(e, f) for e, f in zip(here, ahead, strict=True)]).mul_(self.scale)

    def read(self, t: list[float]) -> tuple[list[float], list[int], list[str]]:
        """For each point ``a + t_i direction``: the step to the nearest boundary ahead and the index of its layer
        in the names returned."""
        here, ahead = self.passes(self.points(t))
        names = [e.name for e in here]
        if not names:
            return [math.inf] * len(t), [0] * len(t), names
        steps = self.steps(here, ahead)
        best = steps.min(0).values
        # the first layer in forward order among those crossing there: boundaries of two layers that coincide (a
        # ReLU after a leaky ReLU) differ by rounding only
        which = (steps <= best + _TIE * best.clamp_min(1)).to(torch.uint8).argmax(0)
        return best.tolist(), which.tolist(), names


class _BatchSize:
    """Fronts per round: ``batch_size`` when given, else adapted to the model (``batch_size=None``).

    A larger batch shares the per-operation overhead of a pass among more points, until its activations leave the
    CPU caches (or their buffers outgrow the allocator's reuse and every pass faults its pages in anew): then the
    cost per point rises again (``benchmarks/bench_walk.py``). Adapted, the batch starts, after the first round (one
    point: the records' size per point is then known), at the largest power of two of fronts, at least
    ``_FIRST_BATCH``, whose records take at most ``_START_RECORDS``: LeNet-5 32 (0.2 MB per point), the small
    ResNet 8 (1.2 MB), ResNet-18 at 32x32 8 (1.0 MB). Where per-operation overhead dominates (LeNet-5) the cost
    per point falls up to 64 points and more (but more fronts read more regions twice: 1.09 points per region at
    32 fronts, 1.18 at 64, on the benchmark's 620 regions); where the arithmetic does, it rises once a round's
    records outgrow about 20 MB (the small ResNet: best at 16). From there it doubles while the CPU time per point
    of full rounds (the best of two at each size) falls by at least ``1 - _GAIN``, within ``_MAX_BATCH``, the
    memory budget ``_RECORD_BUDGET`` and the fronts the rest of the segment holds at the full spacing (on a short
    walk more fronts would mostly read regions twice: LeNet-5 grew to 128 on the benchmark's 620 regions, 1.26
    points per region, and now stops at 64, 1.17); then it stays at the best size.
    """

    def __init__(self, batch_size: int | None) -> None:
        self.size = batch_size or _FIRST_BATCH
        self.settled = batch_size is not None
        self._started = self.settled  # whether the starting size is set (from the records of the first round)
        self._best = (math.inf, self.size)  # (cost per point, batch size)
        self._costs: list[float] = []  # of full rounds at the current size

    def observe(self, points: int, seconds: float, bytes_per_point: float, room: float = math.inf) -> None:
        """Note the CPU time of a round on ``points`` points whose records took ``bytes_per_point`` each; ``room``:
        the fronts the rest of the segment holds at the full spacing (more fronts would read more regions twice)."""
        if not self._started:
            self._started = True
            fit = min(_MAX_BATCH, _START_RECORDS / max(bytes_per_point, 1.0))
            self.size = max(_FIRST_BATCH, 2 ** math.floor(math.log2(max(fit, 1.0))))
            self._best = (math.inf, self.size)
        if self.settled or points < self.size:
            return
        self._costs.append(seconds / points)
        if len(self._costs) < 2:
            return
        cost, self._costs = min(self._costs), []
        grow = self.size * 2
        if cost < _GAIN * self._best[0]:
            self._best = (cost, self.size)
            if grow <= min(_MAX_BATCH, _RECORD_BUDGET / max(bytes_per_point, 1.0), room):
                self.size = grow
                return
        self.size = self._best[1]
        self.settled = True


def _spawn(fronts: list[_Front], batch_size: int, spacing: float, floor: float, min_step: float) -> None:
    """Fill free slots of the batch: the leftmost stretch not yet walked that is longer than ``2 * spacing`` gets
    a new front ``spacing`` past its beginning. Near the end of the walk, when no stretch is that long, the spacing
    is halved (down to ``floor``) rather than leaving slots idle."""
    active = sum(not f.done for f in fronts)
    while active < batch_size:
        for i, front in enumerate(fronts):
            if front.done:
                continue
            lo = front.pending
            hi = fronts[i + 1].start if i + 1 < len(fronts) else 1.0
            if hi - lo > 2 * spacing:
                fronts.insert(i + 1, _Front(lo + spacing, min_step))
                active += 1
                break
        else:
            if spacing / 2 < floor:
                return
            spacing /= 2


def _merge(fronts: list[_Front], tol: float) -> None:
    """Join each front to the next one once its next point lies in a region the next one has read.

    Then the walk from that point would meet exactly the boundaries the next front met from there on, so the front
    takes them over. Boundaries the next front met *before* that point lie within ``min_step`` past the front's own
    last boundary, where the walk does not look (regions thinner than ``min_step``), and are dropped.
    """
    for i in range(len(fronts) - 2, -1, -1):
        front = fronts[i]
        while i + 1 < len(fronts):
            nxt = fronts[i + 1]
            if front.done:  # its last region reaches t = 1: the fronts after it lie within min_step of its end
                del fronts[i + 1:]
                break
            q = front.pending
            if q < nxt.start - tol:
                break
            j = bisect.bisect_right(nxt.ends, q)  # the first region of nxt ending after q
            if j == len(nxt.ends):  # q lies past all nxt has read: nxt has nothing to give
                del fronts[i + 1]
                continue
            if nxt.evals[j] - tol > q:  # q lies just past a boundary of nxt, where nxt did not read: read it
                break
            front.evals += nxt.evals[j:]
            front.ends += nxt.ends[j:]
            front.layers += nxt.layers[j:]
            del fronts[i + 1]


def _failure(model: Callable[[Tensor], Tensor], x: Tensor) -> Exception | None:
    """The error a plain forward pass of ``model`` on ``x`` raises, or None when it runs."""
    try:
        with torch.no_grad():
            model(x)
    except Exception as err:  # noqa: BLE001 - any failure means: not this reading of the input's shape
        return err
    return None


def _endpoints(model: Callable[[Tensor], Tensor], x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """x0 and x1 as batches of one sample in float64.

    A leading dimension of size 1 is ambiguous: one sample whose first dimension is 1 (a 1x32x32 image) or a batch
    of one. It is read as one sample when the model runs on it that way (as before), else as a batch of one.
    """
    a, b = x0.double()[None], x1.double()[None]
    failure = _failure(model, a)
    if failure is None:
        return a, b
    ambiguous = x0.dim() >= 2 and x0.shape[0] == 1
    if ambiguous and _failure(model, a[0]) is None:
        return a[0], b[0]
    also = f" nor as a batch of one (shape {tuple(x0.shape)})" if ambiguous else ""
    raise ValueError(f"the model does not run on x0 as one sample (a batch of shape {tuple(a.shape)}){also}: "
                     f"{type(failure).__name__}: {str(failure).strip()}. Pass x0 and x1 as single samples "
                     "(*in_shape, e.g. x[0]) or as batches of one (1, *in_shape, e.g. x[:1]).") from failure


def regions_on_segment(model: Callable[[Tensor], Tensor], x0: Tensor, x1: Tensor, *, min_step: float = 1e-9,
                       max_regions: int = 100_000, max_seconds: float | None = None,
                       batch_size: int | None = None, progress: bool = True) -> SegmentRegions:
    """Exact breakpoints where the path ``x0 + t (x1 - x0)``, t in [0, 1], crosses a region boundary of any layer.

    Computed in float64 (the model is copied to float64 when needed). Each region is read from the values and
    slopes along the path of every unit with the region's pieces fixed; the next breakpoint is the nearest zero
    crossing, clamp threshold or max-pool argmax switch (tie rule as in :mod:`cnnlens.spline._capture`). The walk
    advances up to ``batch_size`` fronts at once, each region costing a share of one batched paired pass (module
    docstring); the result is the walk from t = 0.

    Parameters
    ----------
    model : callable
        Piecewise-affine model in eval mode.
    x0, x1 : Tensor (*in_shape) or (1, *in_shape)
        End points: one sample each, without the batch dimension (``x[0]``, ``x[1]``) or as a batch of one
        (``x[:1]``, ``x[1:2]``).
    min_step : float
        After a breakpoint the next region is read at ``t + min_step``: regions thinner than this (in t) are not
        resolved.
    max_regions : int
        Stop after this many regions (a safety bound): the result is then partial (``.partial``, ``.t_reached``).
    max_seconds : float, optional
        Time budget: stop after the first round of the walk that ends past it, with a partial result.
    batch_size : int, optional
        Points read per pass (1: the plain sequential walk; the pass holds each point twice). Memory grows with it;
        past the size where a batch's activations leave the CPU caches, so does the time per point. None (the
        default) adapts it: the batch starts where the records of a round take about 8 MB (at least 8 points) and
        doubles while the measured CPU time per point falls (up to 256 points, 256 MB of records per round and the
        fronts the rest of the segment holds; ``benchmarks/bench_walk.py`` compares fixed sizes).
    progress : bool
        Show a progress bar (how far along the segment the walk has come) when stderr is a terminal.

    Returns
    -------
    SegmentRegions
        Breakpoints, the layer crossed at each, the number of regions, and whether the walk is partial. A partial
        result also warns, naming where it stopped and why.
    """
    if not isinstance(x0, Tensor) or not isinstance(x1, Tensor):
        raise TypeError(f"x0 and x1 must be tensors; received {type(x0).__name__} and {type(x1).__name__}.")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape; received {tuple(x0.shape)} and {tuple(x1.shape)}.")
    if not 0 < min_step < 1e-3:
        raise ValueError(f"min_step must lie in (0, 1e-3); received {min_step}.")
    if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
        raise ValueError(f"max_regions must be a positive int; received {max_regions!r}.")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be a positive number of seconds or None; received {max_seconds!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None (adaptive); received {batch_size!r}.")
    if isinstance(model, nn.Module) and any(p.dtype != torch.float64 for p in model.parameters()):
        model = copy.deepcopy(model).double()
    check_model_input(model, torch.stack([x0, x1]).double(), what="x0/x1")  # before any forward pass (eval mode)
    a, b = _endpoints(model, x0, x1)
    torch.empty(_MAPPED_BLOCK, dtype=torch.uint8)  # freed at once: the allocator's thresholds (_MAPPED_BLOCK)
    direction = b - a
    tol = min(1e-12, min_step / 4)  # the same point reached by two fronts differs by rounding only
    reader = _Reader(model, a, direction)
    fronts = [_Front(min_step, min_step)]  # front 0: the walk from t = 0 (its first read just past 0)
    batch = _BatchSize(batch_size)
    widths: deque[float] = deque(maxlen=4 * (batch_size or 64))
    began = time.monotonic()
    stop = ""
    with phase("region walk", 100, enabled=progress) as advance:
        shown = 0.0
        while not fronts[0].done:
            room = math.inf  # fronts the rest of the segment holds at the full spacing
            if widths:
                width = max(statistics.median(widths), 2 * min_step)
                _spawn(fronts, batch.size, _REGIONS_PER_FRONT * width, 2 * width, min_step)
                room = (1.0 - fronts[0].pending) / (_REGIONS_PER_FRONT * width)
            active = [f for f in fronts if not f.done][:batch.size]  # more after the adaptive batch shrank
            points = [f.pending for f in active]
            clock = time.process_time()
            steps, which, names = reader.read(points)
            batch.observe(len(points), time.process_time() - clock, reader.bytes_per_point, room)
            for front, t, s, k in zip(active, points, steps, which, strict=True):
                end = t + s
                if math.isfinite(end):
                    widths.append(end - (front.ends[-1] if front.ends else t))
                front.evals.append(t)
                front.ends.append(end)
                front.layers.append(names[k] if names else "")
            _merge(fronts, tol)
            head = fronts[0]
            reached = 1.0 if head.done else head.ends[-1]
            advance(100 * reached - shown, status=f"{len(head.ends)} regions")
            shown = 100 * reached
            if len(head.breakpoints()) >= max_regions:
                stop = f"max_regions={max_regions}"
                break
            if max_seconds is not None and not head.done and time.monotonic() - began >= max_seconds:
                stop = f"max_seconds={max_seconds}"
                break
    head = fronts[0]
    found = head.breakpoints()
    layers = head.layers[:len(found)]
    if not stop:
        return SegmentRegions(torch.tensor(found, dtype=torch.float64), layers, len(found) + 1)
    keep = min(len(found), max_regions) - 1 if stop.startswith("max_regions") else len(found) - 1
    t_reached = found[keep]
    warnings.warn(f"regions_on_segment stopped at {stop}: the result covers t in [0, {t_reached:.6g}] "
                  f"({keep + 1} regions) of the segment only (result.partial is True).", stacklevel=2)
    return SegmentRegions(torch.tensor(found[:keep], dtype=torch.float64), layers[:keep], keep + 1, partial=True,
                          t_reached=t_reached)
