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
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._capture import Capture, Entry, ReplayDivergenceError, capture, check_model_input, run_captured
from ._distributed import dataset_templates, distributed_active
from ._transpose import Tape, transpose_rows

__all__ = ["AffineMap", "Templates", "affine_map", "templates"]

_log = logging.getLogger("cnnlens.spline")

TRANSPOSED = "transposed"
AUTOGRAD = "autograd"


class _AffineMapFields(NamedTuple):
    A: Tensor
    B: Tensor


class AffineMap(_AffineMapFields):
    """``(A, B)`` with ``A[n] @ x[n].flatten() + B[n] == model(x)[n]`` (eq. 9 of 000).

    Attributes
    ----------
    A : Tensor (N, C, D)
        Slopes: row c of ``A[n]`` is the template of class c for sample n (D = input size flattened).
    B : Tensor (N, C)
        Offsets ``B[x] = f(x) - A[x] x`` (sec. 5.2 of 000).
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
        the module it was called in, or ``approximate=True``. With ``chunk_size``, the reasons of all chunks that
        fell back.
    """

    approximate: bool
    linearised: tuple[str, ...]
    path: str
    fallback_reason: str | None

    def __new__(cls, A: Tensor, B: Tensor, approximate: bool = False, linearised: Sequence[str] = (),
                path: str = TRANSPOSED, fallback_reason: str | None = None) -> AffineMap:
        self = super().__new__(cls, A, B)
        self.approximate = approximate
        self.linearised = tuple(linearised)
        self.path = path
        self.fallback_reason = fallback_reason
        return self


def _validate_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; received {chunk_size!r}.")


def _rows_of(classes: Sequence[int] | Tensor | None, num_outputs: int) -> Tensor:
    if classes is None:
        return torch.arange(num_outputs)
    rows = torch.as_tensor(classes).reshape(-1)
    if rows.is_floating_point() or rows.numel() == 0:
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


def _chunk_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
               approximate: bool) -> _Chunk:
    """One recording forward + one batched backward of all requested rows (no Python loop over classes).

    Fast path: a plain forward that records the tape, then one sweep of R*N cotangents through the transposed
    masked network (:mod:`._transpose`). Fallback (an op without an exact transpose rule, or approximate=True):
    batched autograd (``is_grads_batched``) over the captured masked graph.
    """
    if not approximate:
        tape = Tape()
        with torch.no_grad(), capture(model, cap=Capture(graph=False, tape=tape)) as cap:
            xt = x.detach()
            y = run_captured(cap, model, xt)
        n, c = y.shape
        rows = _rows_of(classes, c)
        a = transpose_rows(tape, xt, y, rows)
        if a is not None:
            b = y[:, rows] - torch.einsum("nrd,nd->nr", a, x.reshape(n, -1))
            return _Chunk(a.contiguous(), b, y[:, rows], cap.linearised, cap.entries, TRANSPOSED, None)
        reason = (f"no exact transpose rule for {tape.reason}; A was computed by batched autograd over the captured "
                  "masked graph instead (same A, slower)")
    else:
        reason = "approximate=True computes A by batched autograd over the captured graph"
    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), capture(model, graph=True, approximate=approximate) as cap:
        y = run_captured(cap, model, xi)
    n, c = y.shape
    rows = _rows_of(classes, c)
    r = rows.numel()
    d = x[0].numel()
    if not y.requires_grad:  # the output does not depend on x at all
        a = x.new_zeros(n, r, d)
    else:
        cot = y.new_zeros(r, n, c)
        cot[torch.arange(r), :, rows] = 1
        (g,) = torch.autograd.grad(y, xi, cot, is_grads_batched=True, allow_unused=True)
        a = x.new_zeros(n, r, d) if g is None else g.reshape(r, n, d).transpose(0, 1)
    y = y.detach()
    b = y[:, rows] - torch.einsum("nrd,nd->nr", a, x.reshape(n, d))
    return _Chunk(a.contiguous(), b, y[:, rows], cap.linearised, cap.entries, AUTOGRAD, reason)


def _chunked_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
                 chunk_size: int | None, approximate: bool, caller: str) -> _Chunk:
    """The :class:`_Chunk` of all of ``x``, ``chunk_size`` samples at a time; warns when linearised.

    The path is "autograd" when any chunk fell back; the reason lists the distinct reasons of those chunks.
    """
    check_model_input(model, x)
    _validate_chunk(chunk_size)
    step = chunk_size or x.shape[0]
    parts = [_chunk_map(model, x[i:i + step], classes, approximate) for i in range(0, x.shape[0], step)]
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
    _log.debug("%s on %d samples: path %s%s", caller, x.shape[0], path, f" ({reason})" if reason else "")
    return _Chunk(torch.cat([p.a for p in parts]), torch.cat([p.b for p in parts]),
                  torch.cat([p.outputs for p in parts]), linearised, [], path, reason)


def affine_map(model: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None,
               approximate: bool = False) -> AffineMap:
    """Exact input-dependent affine map ``f(x) = A[x] x + B[x]`` of a piecewise-affine model (eqs. 5-9 of 000).

    All C output rows are computed in one vectorised call: one forward pass records the region of x (ReLU masks,
    max-pool argmaxes, ...; tie rule in :mod:`cnnlens.spline._capture`), then a batch of N*C one-hot cotangents is
    propagated through the masked linear network in one backward pass (input gradients only, no weight gradients).

    Parameters
    ----------
    model : callable
        A model built from piecewise-affine parts (modules or functional calls), in eval mode, returning (N, C).
    x : Tensor (N, *in_shape)
        Finite floating-point inputs with the model's dtype.
    chunk_size : int, optional
        Process at most this many samples at a time (bounds memory; the result does not change).
    approximate : bool
        If True, parts that are not piecewise affine (sigmoid, GELU, ...) are linearised at x and the result is the
        local linearisation, flagged ``result.approximate`` with a warning. If False they raise
        :class:`cnnlens.NotPiecewiseAffineError`.

    Returns
    -------
    AffineMap
        ``A`` (N, C, D) and ``B`` (N, C) with ``A[n] @ x[n].flatten() + B[n] == model(x)[n]`` up to rounding;
        ``.path`` and ``.fallback_reason`` say how A was computed (module docstring).

    Examples
    --------
    >>> A, B = affine_map(model, x)  # doctest: +SKIP
    >>> torch.allclose(torch.einsum("ncd,nd->nc", A, x.flatten(1)) + B, model(x))  # doctest: +SKIP
    True
    """
    res = _chunked_map(model, x, None, chunk_size, approximate, "affine_map")
    return AffineMap(res.a, res.b, approximate=bool(res.linearised), linearised=res.linearised, path=res.path,
                     fallback_reason=res.reason)


@dataclass(frozen=True)
class Templates:
    """Signal-dependent class templates (sec. 5 of 000).

    Attributes
    ----------
    templates : Tensor (N, C', *in_shape)
        ``A[x]_c`` reshaped like the input, for the selected classes.
    biases : Tensor (N, C')
        ``B[x]_c = f(x)_c - <A[x]_c, x>``.
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
    """

    templates: Tensor
    biases: Tensor
    inner_products: Tensor
    outputs: Tensor
    classes: Tensor
    approximate: bool = False
    path: str = TRANSPOSED
    fallback_reason: str | None = None


def templates(model: Callable[[Tensor], Tensor], x: Tensor | Dataset, classes: Sequence[int] | Tensor | None = None,
              *, chunk_size: int | None = None, approximate: bool = False,
              distributed: bool | None = None) -> Templates:
    """Class templates ``A[x]_c`` of eq. 8 of 000, with biases and the inner products of eq. 12 / Fig. 1.

    Parameters
    ----------
    model, chunk_size, approximate
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
        that computed them (``.path``, ``.fallback_reason``).
    """
    if isinstance(x, Dataset) or distributed_active(distributed, x):
        return dataset_templates(model, x, classes, chunk_size, approximate, distributed)
    res = _chunked_map(model, x, classes, chunk_size, approximate, "templates")
    n, r, _ = res.a.shape
    inner = torch.einsum("nrd,nd->nr", res.a, x.reshape(n, -1))
    rows = torch.arange(r) if classes is None else torch.as_tensor(classes).reshape(-1).long()  # validated above
    return Templates(templates=res.a.reshape(n, r, *x.shape[1:]), biases=res.b, inner_products=inner,
                     outputs=res.outputs, classes=rows, approximate=bool(res.linearised), path=res.path,
                     fallback_reason=res.reason)


def propagated_bias(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``B[x]`` propagated exactly through the network with the regions of x held fixed (eq. 7 of 000).

    Records the regions of x, then replays the forward pass at input 0 with every nonlinearity forced to the recorded
    piece: the output is the offset of the region's affine map, computed without using f(x) or A. It is an
    independent check of :func:`affine_map` (used by :func:`cnnlens.testing.assert_affine_exact`).

    Raises
    ------
    ReplayDivergenceError
        When the replay takes another path than the recorded pass (control flow on the input values).
    """
    check_model_input(model, x)
    with torch.no_grad():
        with capture(model, graph=False) as rec:
            run_captured(rec, model, x)
        with capture(model, graph=False, forced=rec.entries) as rep:
            out = run_captured(rep, model, torch.zeros_like(x))
    if len(rep.entries) != len(rec.entries):
        raise ReplayDivergenceError(
            f"the replayed forward pass met {len(rep.entries)} nonlinearities but the recorded pass met "
            f"{len(rec.entries)}: the model's control flow depends on the input values, so the regions recorded at x "
            "cannot be replayed at input 0.")
    return out
