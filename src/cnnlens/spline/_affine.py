"""The input-dependent affine map of a piecewise-affine network (eqs. 5-9 of 000) and its class templates (sec. 5).

For a network built from max-affine spline operators, conditioned on the region of x,

.. math::

    f(x) = A[x]\\,x + B[x], \\qquad A[x] \\in \\mathbb{R}^{C \\times D},\\; B[x] \\in \\mathbb{R}^{C}

(eq. 8-9 of 000). The rows of A[x] are the signal-dependent class templates of sec. 5.2 and the class scores are the
inner products <A[x]_c, x> plus biases (eq. 12 / Fig. 1 of 000).

Two independent ways compute A[x], and the result says which one ran (``.path``, ``.fallback_reason``, also logged
at DEBUG level on the logger ``cnnlens.spline``): ``"transposed"``, one reverse sweep of the transposed masked
network (:mod:`._transpose`), and ``"autograd"``, batched autograd over the captured masked graph, taken when some
operation has no exact transpose rule (the reason names it and its module) and always for ``approximate=True``.
Both give the same A up to rounding.

B is not ``f(x) - A x``: it is propagated through the masked network (eq. 7 of 000, :mod:`._exactness`), and
``A x + B == f(x)`` is checked on every call. The same reverse sweep that computes A sums, over the biases of the
network (convolution and linear biases, batch-norm shifts, constants added, the constant pieces of clamps and of
registered units, an affine op's value at 0), the cotangent at each bias times the bias: eq. 7 of 000 read from
the output back, at no extra forward pass (``.bias_method == "swept"``). It takes only the model's own constants
(its parameters, buffers and tensor attributes, and what its ops compute from them) as biases; when some constant
could come from x where the capture cannot see (a value read off x with ``item()`` or ``numpy()``, a tensor from
compiled code or a global), or a recorded tensor does not keep the samples in dim 0, B is instead the forward
pass at input 0 with the recorded pieces forced (``"replayed"``), which also recomputes those constants. Either
way A, B and f(x) are computed independently, and a part of the model the capture did not see breaks the
identity. The measured error is on the result (``.identity_error``); a failed check raises
:class:`cnnlens.ExactnessError` (or a ValueError for a model whose outputs mix the samples of the batch) saying what
the capture missed.

Memory (:func:`affine_map`'s ``max_memory``). A itself takes N * C * D * itemsize bytes (0.6 GB for ResNet-18 at
3x224x224 with 1000 classes in float32); it is allocated once and every chunk writes its rows into it. The
working memory on top of A is bounded by a budget: after the recording forward pass of a chunk of samples, the
sweep's peak per requested row is known (:func:`._transpose.sweep_bytes`), so the classes are swept in chunks of
as many rows as fit; when even one row of a chunk of samples does not fit, the samples are recorded in smaller
chunks. On CPU a sweep's cotangents are also kept to about 128 MiB when the budget allows more (larger sweeps
were measured slower: :data:`_SWEEP_BYTES`). The result is the same whatever the chunking (up to rounding);
``.chunking`` says which one ran.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._capture import Capture, Entry, capture, check_model_input, run_captured
from ._distributed import dataset_templates, distributed_active
from ._exactness import Offset, check_precision, offset_of, raise_inexact, replay_offset, tolerance
from ._transpose import Tape, sweep_bytes, tape_bytes, transpose_rows

__all__ = ["AffineMap", "Chunking", "Templates", "affine_map", "templates"]

_log = logging.getLogger("cnnlens.spline")

TRANSPOSED = "transposed"
AUTOGRAD = "autograd"


class Chunking(NamedTuple):
    """How :func:`affine_map` / :func:`templates` split the work to stay within the memory budget.

    Attributes
    ----------
    samples : int
        The most samples per recorded forward pass.
    classes : int
        The fewest class rows per reverse sweep (over the chunks of samples; the last sweep may have fewer).
    budget : int
        The memory budget in bytes (``max_memory``, or the default of :func:`affine_map`).
    estimate : int
        The estimated peak in bytes, over the chunks: A, plus the recorded pass and the sweep's working memory
        (an upper bound on the transposed path; a rough estimate on the autograd path).
    minimum : int
        The smallest budget that would do (bytes): A plus one class of one sample (of ``chunk_size`` samples when
        given).
    """

    samples: int
    classes: int
    budget: int
    estimate: int
    minimum: int


class _AffineMapFields(NamedTuple):
    A: Tensor
    B: Tensor


class AffineMap(_AffineMapFields):
    """``(A, B)`` with ``A[n] @ x[n].flatten() + B[n] == model(x)[n]`` (eq. 9 of 000).

    Attributes
    ----------
    A : Tensor (N, C, D)
        Slopes: row c of ``A[n]`` is the template of class c for sample n (D = input size flattened). With
        ``classes``, C = len(classes) and row i belongs to class ``classes[i]``.
    B : Tensor (N, C)
        Offsets ``B[x]``, propagated through the masked network at input 0 (eq. 7 of 000, sec. 5.2).
    approximate : bool
        True when some part of the model is not piecewise affine and was linearised at x (``approximate=True``);
        then (A, B) is the local first-order approximation, exact only at x itself.
    linearised : tuple of str
        The operations that were linearised (empty when the map is exact).
    path : str
        How A was computed: ``"transposed"`` (the fast reverse sweep of the transposed masked network) or
        ``"autograd"`` (batched autograd over the captured masked graph; same A, slower).
    fallback_reason : str or None
        None on the transposed path; otherwise why it was not taken: the operation without a transpose rule and
        the module it was called in, or ``approximate=True``. With several chunks of samples, the reasons of all
        chunks that fell back.
    identity_error : float or None
        The measured ``max |A x + B - f(x)|`` relative to ``max(|f(x)|, |A x|, |B|)`` of each sample, with B
        propagated independently of A and f(x): the check of eq. 9 of 000 that every call passes (<= 1e-10 in
        float64, <= 1e-4 in float32, else an error is raised). None when B could not be propagated.
    bias_fallback : str or None
        None when B was propagated; otherwise why B is ``f(x) - A x`` (then the identity holds by construction and
        checks nothing): a linearised part (``approximate=True``) or a replay that took another path (warned).
    bias_method : str or None
        How B was propagated (module docstring): ``"swept"``, summed over the biases in the reverse sweep that
        computes A, or ``"replayed"``, by a forward pass at input 0 with the pieces of x forced (when a constant of
        the model could not be told independent of x; the reason is logged at DEBUG level); None on a fallback.
    chunking : Chunking or None
        How the work was split to stay within the memory budget (samples per chunk, classes per sweep, budget).
    """

    approximate: bool
    linearised: tuple[str, ...]
    path: str
    fallback_reason: str | None
    identity_error: float | None
    bias_fallback: str | None
    bias_method: str | None
    chunking: Chunking | None

    def __new__(cls, A: Tensor, B: Tensor, approximate: bool = False, linearised: Sequence[str] = (),
                path: str = TRANSPOSED, fallback_reason: str | None = None, identity_error: float | None = None,
                bias_fallback: str | None = None, chunking: Chunking | None = None,
                bias_method: str | None = None) -> AffineMap:
        self = super().__new__(cls, A, B)
        self.approximate = approximate
        self.linearised = tuple(linearised)
        self.path = path
        self.fallback_reason = fallback_reason
        self.identity_error = identity_error
        self.bias_fallback = bias_fallback
        self.bias_method = bias_method
        self.chunking = chunking
        return self


def _validate_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; received {chunk_size!r}.")


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_GIB = 2**30
#: Cotangents per sweep are kept to about this many bytes even when the budget allows more: larger sweeps were
#: measured slower on CPU (ResNet-18 at 3x224x224, 2 threads: 33 ms per row at 32 rows, 37 ms at 128 rows).
_SWEEP_BYTES = 2**27


def _parse_memory(value: int | str | None) -> int | None:
    """A memory size in bytes from an int or a string such as ``"2GB"``, ``"1.5 GiB"`` or ``"512MB"`` (kB/MB/GB/TB
    are powers of 1000, KiB/MiB/GiB/TiB powers of 1024, case-insensitive); None stays None."""
    if value is None:
        return None
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([a-zA-Z]*)\s*", value)
        if match and match.group(3).lower() in _UNITS:
            size = float(match.group(1)) * 10 ** int(match.group(2) or 0) * _UNITS[match.group(3).lower()]
    if size is None or not math.isfinite(size) or size < 1:
        raise ValueError(f"max_memory must be a positive number of bytes (an int) or a string such as '2GB', "
                         f"'1.5GiB' or '512MB'; received {value!r}.")
    return int(size)


def _free_memory(device: torch.device, enough: int | None = None) -> int | None:
    """Memory the system can still give this process (bytes): MemAvailable on Linux, free device memory on CUDA;
    None when unknown. With ``enough``: the free pages alone (a lower bound of MemAvailable, one system call) when
    they are at least that much."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if enough is not None and hasattr(os, "sysconf"):
        try:
            floor = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            floor = 0
        if floor >= enough:
            return floor
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _default_budget(a_bytes: int, device: torch.device) -> int:
    """The default ``max_memory``: twice the size of A and at least 1 GiB, but at most A plus 3/4 of the free
    memory (:func:`_free_memory`)."""
    budget = max(2 * a_bytes, _GIB)
    free = _free_memory(device, enough=-(-(budget - a_bytes) * 4 // 3))  # enough that 3/4 of it caps nothing
    return budget if free is None else min(budget, a_bytes + free * 3 // 4)


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", _GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


@dataclass
class _Memory:
    """The output A of one call and the memory plan every chunk follows (module docstring).

    ``limit`` is the user's ``max_memory`` (None: :func:`_default_budget`, set when the first chunk has told the
    number of outputs); ``fixed`` is True when the samples per chunk are the caller's (``chunk_size``) and may not
    be reduced; ``samples`` is the number of samples per chunk that fit with all classes in one sweep, as measured
    on a recording pass of one sample; ``shrink_to`` is set when a chunk of samples does not fit, to the samples per
    chunk that do.
    """

    total: int
    limit: int | None = None
    fixed: bool = True
    a: Tensor | None = None
    budget: int = 0
    minimum: int = 0
    shrink_to: int | None = None
    samples: int = 0
    chunking: Chunking | None = None

    def rows_per_sweep(self, x: Tensor, k: int, held: tuple[int, int], work: tuple[int, int, int]) -> int | None:
        """Class rows per sweep for the chunk ``x`` of samples, whose recorded pass holds ``held`` bytes (a part
        that grows with the samples, a part that does not) and whose sweep needs ``work`` bytes: per row (of all
        its samples), a bounded part, and the transient memory of a forward pass on the chunk (the next chunk's
        recording or a replay), which does not overlap the sweep. None when the chunk must be split
        (``shrink_to``). The first call allocates A (N, k, D)."""
        n = x.shape[0]
        a_bytes = self.total * k * x[0].numel() * x.element_size()
        per_sample, fixed = held
        per_row, bounded, forward = work

        def need(rows: int) -> int:  # working memory on top of A and the recorded pass
            return max(rows * per_row + bounded, forward)

        if self.a is None:  # the first chunk: one sample (the probe, or N = 1) or chunk_size samples
            self.minimum = a_bytes + per_sample + fixed + need(1)
            self.budget = self.limit if self.limit is not None else max(_default_budget(a_bytes, x.device),
                                                                        self.minimum)
            if self.minimum > self.budget:
                what = "one sample" if n == 1 else f"chunk_size={n} samples"
                raise ValueError(
                    f"max_memory={_size(self.budget)} is too small: A alone takes {_size(a_bytes)} ({self.total} "
                    f"samples x {k} classes x {x[0].numel()} inputs x {x.element_size()} bytes) and one class of "
                    f"{what} needs {_size(self.minimum - a_bytes)} more. Raise max_memory to at least "
                    f"{_size(self.minimum)}, or ask for fewer classes (classes=...)"
                    f"{' or pass a smaller chunk_size' if n > 1 else ''}.")
            self.a = x.new_empty(self.total, k, x[0].numel())
        free = self.budget - a_bytes - per_sample - fixed
        if free < need(1):
            if self.fixed or n == 1:
                what = f"chunk_size={n}" if self.fixed else "one sample"
                raise ValueError(
                    f"max_memory={_size(self.budget)} is too small for {what}: A takes {_size(a_bytes)}, the recorded "
                    f"pass {_size(per_sample + fixed)} and one class of the sweep {_size(need(1))}. Raise max_memory"
                    f"{', or pass a smaller chunk_size (or none, to let the budget choose it)' if self.fixed else ''}.")
            self.shrink_to = max(1, min(n - 1, int((free + per_sample - bounded) * n // (per_sample + per_row))))
            return None
        most = min(k, int((free - bounded) // per_row))
        if x.device.type == "cpu":  # measured there; on a GPU the budget alone decides
            most = min(most, max(1, _SWEEP_BYTES // per_row))
        rows = math.ceil(k / math.ceil(k / most))  # equal chunks: no small last sweep
        # chunks without chunk_size: as many samples as fit with all k classes in one sweep (at least one)
        self.samples = max(1, int((free + per_sample - bounded) * n // (per_sample + k * per_row)))
        estimate = a_bytes + per_sample + fixed + need(rows)
        step = rows
        if self.chunking is not None:
            n, rows, estimate = (max(n, self.chunking.samples), min(rows, self.chunking.classes),
                                 max(estimate, self.chunking.estimate))
        self.chunking = Chunking(n, rows, self.budget, estimate, self.minimum)
        return step


def _forward_bytes(codes: int, largest: int) -> int:
    """Transient memory of a forward pass on a chunk (the next chunk's recording, a replay of its regions): a new
    copy of the region codes and a few activations at a time (three of the largest)."""
    return codes + 3 * largest


def _entries_bytes(entries: list[Entry]) -> int:
    """Memory held by the recorded region codes (masks, argmax indices), each storage counted once (states not
    computed yet hold none: :class:`Entry`)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for e in entries for t in e.held()}
    return sum(storages.values())


def _rows_of(classes: Sequence[int] | Tensor | None, num_outputs: int) -> Tensor:
    if classes is None:
        return torch.arange(num_outputs)
    if isinstance(classes, (range, list, tuple)) and classes and \
            all(type(c) is int and 0 <= c < num_outputs for c in classes):  # checked without tensor operations
        return torch.tensor(classes, dtype=torch.long)
    try:
        rows = torch.as_tensor(classes).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"classes must be a non-empty sequence of int class indices; received {classes!r}.") from None
    if rows.is_floating_point() or rows.is_complex() or rows.dtype == torch.bool or rows.numel() == 0:
        raise ValueError(f"classes must be a non-empty sequence of int class indices; received {classes!r}.")
    rows = rows.long()
    if bool(((rows < 0) | (rows >= num_outputs)).any()):
        raise ValueError(f"classes must lie in [0, {num_outputs}) for a model with {num_outputs} outputs; "
                         f"received {rows.tolist()}.")
    return rows


@dataclass
class _Chunk:
    """(A, B, outputs) of one chunk of samples, with the path that computed A (see the module docstring)."""

    a: Tensor
    b: Tensor
    outputs: Tensor
    linearised: list[str]
    entries: list[Entry]
    path: str
    reason: str | None
    offset: Offset | None = None  # B of one chunk, how it was obtained and checked (_exactness.offset_of)
    identity_error: float | None = None  # of all chunks (_chunked_map)
    bias_fallback: str | None = None
    bias_method: str | None = None


def _chunk_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
               approximate: bool, memory: _Memory | None = None, start: int = 0, probe: bool = False,
               named: list | None = None) -> _Chunk | None:
    """One recording forward + batched backward sweeps of the requested rows, as many rows per sweep as
    ``memory`` allows (no Python loop over single classes); A is written into ``memory.a[start:start + N]``.

    Fast path: a plain forward that records the tape, then sweeps of R*N cotangents through the transposed
    masked network (:mod:`._transpose`). Fallback (an op without an exact transpose rule, or approximate=True):
    batched autograd (``is_grads_batched``) over the captured masked graph. Returns None when the chunk's samples
    do not fit in the budget (``memory.shrink_to`` then says how many do), and with ``probe`` after the recording
    pass (which sets ``memory.samples``). ``named``: the model's named modules (:func:`check_model_input`).
    """
    memory = memory if memory is not None else _Memory(x.shape[0])
    if not approximate:
        tape = Tape()
        with torch.no_grad(), capture(model, cap=Capture(graph=False, tape=tape), named=named) as cap:
            xt = x.detach()
            try:
                y = run_captured(cap, model, xt)
            except Exception:
                if probe:  # the chunks that follow meet the same error and report it for their own batch
                    return None
                raise
        n, c = y.shape
        rows = _rows_of(classes, c)
        if tape.ok:
            tape.plan(rows.numel())  # the fusions worth it for this many rows
            held, weights = tape_bytes(tape)
            codes = _entries_bytes(cap.entries)
            largest = max((node.out.numel() for node in tape.nodes), default=0) * x.element_size()
            step = memory.rows_per_sweep(xt, rows.numel(), (held + codes, weights),
                                         (*sweep_bytes(tape, xt, y, rows.numel()), _forward_bytes(codes, largest)))
            if step is None or probe:
                return None
            a = memory.a[start:start + n]
            if not cap.is_tracked(y) and not cap.is_known(y):
                cap.bias_blocker = "the output is not computed from x by operations the capture saw"
            swept = None if cap.bias_blocker is not None else y.new_empty(n, rows.numel())
            for j in range(0, rows.numel(), step):
                b_part = None if swept is None else swept[:, j:j + step]
                if transpose_rows(tape, xt, y, rows[j:j + step], out=a[:, j:j + step], bias=b_part) is None:
                    break  # an operation without a transpose rule: the tape is off, with the reason
        if tape.ok:
            if swept is not None and not cap.is_tracked(y):  # a constant model: A = 0 and B is its output
                swept.copy_(y[:, rows])
            off = offset_of(model, xt, a, y, rows, cap, swept)
            return _Chunk(a, off.b, y[:, rows], cap.linearised, cap.entries, TRANSPOSED, None, off)
        reason = (f"no exact transpose rule for {tape.reason}; A was computed by batched autograd over the captured "
                  "masked graph instead (same A, slower)")
    else:
        reason = "approximate=True computes A by batched autograd over the captured graph"
    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), capture(model, graph=True, approximate=approximate, named=named) as cap:
        try:
            y = run_captured(cap, model, xi)
        except Exception:
            if probe:  # as above
                return None
            raise
    n, c = y.shape
    rows = _rows_of(classes, c)
    r = rows.numel()
    d = x[0].numel()
    # the autograd graph keeps about two tensors per nonlinearity; a batched backward about four of the largest
    units = [math.prod(e.shape) for e in cap.entries] or [d]
    codes = _entries_bytes(cap.entries)
    step = memory.rows_per_sweep(xi, r, (2 * n * sum(units) * x.element_size() + codes, 0),
                                 (n * (4 * max(max(units), c) + 2 * d) * x.element_size(), 0,
                                  _forward_bytes(codes, n * max(units) * x.element_size())))
    if step is None or probe:
        return None
    a = memory.a[start:start + n]
    if not y.requires_grad:  # the output does not depend on x at all
        a.zero_()
    for j in range(0, r if y.requires_grad else 0, step):
        part = rows[j:j + step]
        cot = y.new_zeros(part.numel(), n, c)
        cot[torch.arange(part.numel()), :, part] = 1
        (g,) = torch.autograd.grad(y, xi, cot, is_grads_batched=True, allow_unused=True, retain_graph=True)
        a[:, j:j + step] = 0 if g is None else g.reshape(part.numel(), n, d).transpose(0, 1)
    off = offset_of(model, x.detach(), a, y, rows, cap)
    return _Chunk(a, off.b, y.detach()[:, rows], cap.linearised, cap.entries, AUTOGRAD, reason, off)


def _chunked_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
                 chunk_size: int | None, approximate: bool, caller: str,
                 max_memory: int | str | None = None) -> tuple[_Chunk, Chunking | None]:
    """The :class:`_Chunk` of all of ``x`` within the memory budget (module docstring), and the chunking used;
    warns when linearised.

    The path is "autograd" when any chunk fell back; the reason lists the distinct reasons of those chunks.
    """
    named = check_model_input(model, x)
    check_precision(x, caller)
    _validate_chunk(chunk_size)
    memory = _Memory(x.shape[0], _parse_memory(max_memory), fixed=chunk_size is not None)
    if chunk_size is None and x.shape[0] > 1:  # a recording pass on one sample tells how many fit per chunk
        _chunk_map(model, x[:1], classes, approximate, memory, probe=True, named=named)
        memory.chunking = None  # the chunking reported is that of the chunks that ran
    step = chunk_size or memory.samples or x.shape[0]
    parts: list[_Chunk] = []
    start = 0
    while start < x.shape[0]:
        part = _chunk_map(model, x[start:start + step], classes, approximate, memory, start, named=named)
        if part is None:  # its samples do not fit in the budget: record fewer at a time
            step = memory.shrink_to or 1
            continue
        part.entries = []  # the region codes of a chunk are not kept (memory)
        parts.append(part)
        start += part.a.shape[0]
    offsets = [p.offset for p in parts]
    identity_error, bias_fallback = _checked(model, x, offsets, caller)
    methods = list(dict.fromkeys(o.method for o in offsets if o.method))
    for why in dict.fromkeys(o.why_replayed for o in offsets if o.why_replayed):
        _log.debug("%s: B replayed at input 0 rather than summed in the sweep: %s", caller, why)
    linearised = sorted({op for part in parts for op in part.linearised})
    if linearised:
        warnings.warn(f"{caller}(approximate=True): the model is not piecewise affine ({'; '.join(linearised)}); "
                      "the result is the local linearisation at x (the Jacobian), exact only at x.", stacklevel=3)
    fell_back = [p for p in parts if p.path != TRANSPOSED]
    reason = None
    if fell_back:
        reason = "; ".join(dict.fromkeys(p.reason for p in fell_back if p.reason))
        if len(fell_back) < len(parts):
            reason = f"{len(fell_back)} of {len(parts)} chunks: {reason}"
    path = AUTOGRAD if fell_back else TRANSPOSED
    _log.debug("%s on %d samples: path %s%s, %s", caller, x.shape[0], path, f" ({reason})" if reason else "",
               memory.chunking)
    return _Chunk(memory.a, torch.cat([p.b for p in parts]), torch.cat([p.outputs for p in parts]), linearised, [],
                  path, reason, None, identity_error, bias_fallback, " and ".join(methods) or None), memory.chunking


def _checked(model: Callable[[Tensor], Tensor], x: Tensor, offsets: list[Offset], caller: str
             ) -> tuple[float | None, str | None]:
    """(identity error, bias fallback) over the chunks' offsets; raises when the identity check fails and warns when
    B could not be propagated (:mod:`._exactness`)."""
    errors = [o.errors for o in offsets if o.errors is not None]
    if errors:
        all_errors = torch.cat(errors)
        worst = float(all_errors.max())
        if not worst <= tolerance(x.dtype):  # also NaN
            raise_inexact(model, x, all_errors, all(o.seen for o in offsets), caller)
    fallback = "; ".join(dict.fromkeys(o.fallback for o in offsets if o.fallback))
    if fallback and not fallback.startswith("approximate=True"):
        warnings.warn(f"{caller}: {fallback.rstrip('.')}. The identity A x + B == f(x) then holds by construction "
                      "and is not an independent check (result.bias_fallback says so).", stacklevel=4)
    return (float(all_errors.max()) if errors else None), (fallback or None)


def affine_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None = None, *,
               chunk_size: int | None = None, max_memory: int | str | None = None,
               approximate: bool = False) -> AffineMap:
    """Exact input-dependent affine map ``f(x) = A[x] x + B[x]`` of a piecewise-affine model (eqs. 5-9 of 000).

    The requested output rows are computed in batches, not one class at a time: one forward pass records the region
    of x (ReLU masks, max-pool argmaxes, ...; tie rule in :mod:`cnnlens.spline._capture`), then batches of one-hot
    cotangents (as many rows as the memory budget allows, all of them when they fit) are propagated through the
    masked linear network in reverse sweeps (input gradients only, no weight gradients).

    Parameters
    ----------
    model : callable
        A model built from piecewise-affine parts (modules or functional calls), in eval mode, returning (N, C).
    x : Tensor (N, *in_shape)
        Finite floating-point inputs with the model's dtype.
    classes : sequence of int or LongTensor, optional
        Output rows to compute (default all C); only these cotangents are propagated, so fewer classes cost less.
        Row i of the result belongs to class ``classes[i]`` (repeats allowed).
    chunk_size : int, optional
        Record at most this many samples per forward pass (default: all, or fewer when they do not fit in
        ``max_memory``). The result does not change.
    max_memory : int or str, optional
        Memory budget in bytes for the result and the working memory together (an int, or a string such as
        ``"2GB"``, ``"1.5GiB"``, ``"512MB"``). Default: twice the size of A (N * len(classes) * D * itemsize) and
        at least 1 GiB, at most A plus 3/4 of the free memory. The classes are swept in chunks of as many rows as
        fit (on CPU with at most about 128 MiB of cotangents per sweep, where batching stops paying), the samples
        recorded in smaller chunks when one row does not fit; too small a budget (less than A
        plus one class of one sample) raises ValueError saying how much is needed. The result does not depend on
        the budget (up to rounding); ``result.chunking`` says which chunking ran.
    approximate : bool
        If True, parts that are not piecewise affine (sigmoid, GELU, ...) are linearised at x and the result is the
        local linearisation, flagged ``result.approximate`` with a warning. If False they raise
        :class:`cnnlens.NotPiecewiseAffineError`.

    Returns
    -------
    AffineMap
        ``A`` (N, C', D) and ``B`` (N, C') with C' = len(classes) (default C), and
        ``A[n] @ x[n].flatten() + B[n] == model(x)[n, classes]`` up to rounding; ``.path`` and
        ``.fallback_reason`` say how A was computed (module docstring), ``.chunking`` how the work was split,
        ``.identity_error`` is the measured error of that identity with B propagated independently.

    Raises
    ------
    NotPiecewiseAffineError
        A part is not piecewise affine (named, with its module), e.g. a product of two input-dependent tensors.
    ExactnessError
        ``A x + B`` differs from ``f(x)`` with B propagated: the capture missed part of the model (the message
        says what it could tell: randomness, code it cannot see).
    ValueError
        The model's outputs mix the samples of the batch (it must be per-sample), or invalid inputs.
    TypeError
        TorchScript models (pass the eager module), half precision (use float32/float64), wrong dtypes.

    Examples
    --------
    >>> A, B = affine_map(model, x)  # doctest: +SKIP
    >>> torch.allclose(torch.einsum("ncd,nd->nc", A, x.flatten(1)) + B, model(x))  # doctest: +SKIP
    True
    >>> top = affine_map(model, x, classes=[3, 7], max_memory="2GB")  # doctest: +SKIP
    """
    res, chunking = _chunked_map(model, x, classes, chunk_size, approximate, "affine_map", max_memory)
    return AffineMap(res.a, res.b, approximate=bool(res.linearised), linearised=res.linearised, path=res.path,
                     fallback_reason=res.reason, identity_error=res.identity_error, bias_fallback=res.bias_fallback,
                     chunking=chunking, bias_method=res.bias_method)


@dataclass(frozen=True)
class Templates:
    """Signal-dependent class templates (sec. 5 of 000).

    Attributes
    ----------
    templates : Tensor (N, C', *in_shape)
        ``A[x]_c`` reshaped like the input, for the selected classes.
    biases : Tensor (N, C')
        ``B[x]_c``, propagated through the masked network at input 0 (eq. 7 of 000).
    inner_products : Tensor (N, C')
        ``<A[x]_c, x>`` (eq. 12 / Fig. 1 of 000).
    outputs : Tensor (N, C')
        ``f(x)_c = <A[x]_c, x> + B[x]_c``.
    classes : Tensor (C',)
        The class indices of the columns.
    approximate : bool
        True when the model was linearised (``approximate=True`` and a non piecewise-affine part).
    path : str
        ``"transposed"`` or ``"autograd"``, as :attr:`AffineMap.path`.
    fallback_reason : str or None
        As :attr:`AffineMap.fallback_reason`.
    identity_error : float or None
        The measured error of ``inner_products + biases == outputs``, as :attr:`AffineMap.identity_error`.
    bias_fallback : str or None
        As :attr:`AffineMap.bias_fallback`.
    bias_method : str or None
        As :attr:`AffineMap.bias_method`.
    chunking : Chunking or None
        As :attr:`AffineMap.chunking`.
    """

    templates: Tensor
    biases: Tensor
    inner_products: Tensor
    outputs: Tensor
    classes: Tensor
    approximate: bool = False
    path: str = TRANSPOSED
    fallback_reason: str | None = None
    identity_error: float | None = None
    bias_fallback: str | None = None
    chunking: Chunking | None = None
    bias_method: str | None = None


def templates(model: Callable[[Tensor], Tensor], x: Tensor | Dataset, classes: Sequence[int] | Tensor | None = None,
              *, chunk_size: int | None = None, max_memory: int | str | None = None, approximate: bool = False,
              distributed: bool | None = None) -> Templates:
    """Class templates ``A[x]_c`` of eq. 8 of 000, with biases and the inner products of eq. 12 / Fig. 1.

    Parameters
    ----------
    model, chunk_size, max_memory, approximate
        As in :func:`affine_map`.
    x : Tensor (N, *in_shape) or Dataset
        Inputs; a Dataset (items ``(x, y)``) is read ``chunk_size`` (default 256) samples at a time.
    classes : sequence of int or LongTensor, optional
        Output rows to compute (default all); only these cotangents are propagated, so fewer classes cost less.
    distributed : bool, optional
        As in :func:`partition_codes`: under ``torchrun`` a Dataset is shared out over the ranks, and every rank
        receives all templates in order, identical to one process.

    Returns
    -------
    Templates
        Templates shaped like the input, biases, inner products, outputs and the class indices, with the path
        that computed them (``.path``, ``.fallback_reason``) and the measured identity error.

    Raises
    ------
    As :func:`affine_map`.
    """
    if isinstance(x, Dataset) or distributed_active(distributed, x):
        return dataset_templates(model, x, classes, chunk_size, approximate, distributed)
    res, chunking = _chunked_map(model, x, classes, chunk_size, approximate, "templates", max_memory)
    n, r, _ = res.a.shape
    inner = torch.einsum("nrd,nd->nr", res.a, x.reshape(n, -1))
    rows = torch.arange(r) if classes is None else torch.as_tensor(classes).reshape(-1).long()  # validated above
    return Templates(templates=res.a.reshape(n, r, *x.shape[1:]), biases=res.b, inner_products=inner,
                     outputs=res.outputs, classes=rows, approximate=bool(res.linearised), path=res.path,
                     fallback_reason=res.reason, identity_error=res.identity_error, bias_fallback=res.bias_fallback,
                     chunking=chunking, bias_method=res.bias_method)


def propagated_bias(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``B[x]`` propagated exactly through the network with the regions of x held fixed (eq. 7 of 000).

    Records the regions of x, then replays the forward pass at input 0 with every nonlinearity forced to the recorded
    piece and every value read off an input-dependent tensor (``bool()``, ``item()``: control flow) forced to the
    recorded one: the output is the offset of the region's affine map, computed without using f(x) or A. It is what
    :func:`affine_map` returns as B, here from a recording of its own (used by
    :func:`cnnlens.testing.assert_affine_exact`).

    Raises
    ------
    ReplayDivergenceError
        When the replay takes another path than the recorded pass (control flow on something the capture does not
        see, such as state kept between calls).
    """
    check_model_input(model, x)
    check_precision(x, "propagated_bias")
    with torch.no_grad(), capture(model, graph=False) as rec:
        run_captured(rec, model, x)
    return replay_offset(model, x, rec.entries, rec.decisions)
