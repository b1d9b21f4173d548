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

B is not ``f(x) - A x``: it is propagated through the masked network at input 0 (eq. 7 of 000, one extra forward
pass, :mod:`._exactness`), and ``A x + B == f(x)`` is checked on every call. The measured error is on the result
(``.identity_error``); a failed check raises :class:`cnnlens.ExactnessError` (or a ValueError for a model whose
outputs mix the samples of the batch) saying what the capture missed.
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

from ._capture import Capture, Entry, capture, check_model_input, run_captured
from ._distributed import dataset_templates, distributed_active
from ._exactness import Offset, check_precision, offset_of, raise_inexact, replay_offset, tolerance
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
        the module it was called in, or ``approximate=True``. With ``chunk_size``, the reasons of all chunks that
        fell back.
    identity_error : float or None
        The measured ``max |A x + B - f(x)|`` relative to ``max(|f(x)|, |A x|, |B|)`` of each sample, with B
        propagated independently of A and f(x): the check of eq. 9 of 000 that every call passes (<= 1e-10 in
        float64, <= 1e-4 in float32, else an error is raised). None when B could not be propagated.
    bias_fallback : str or None
        None when B was propagated; otherwise why B is ``f(x) - A x`` (then the identity holds by construction and
        checks nothing): a linearised part (``approximate=True``) or a replay that took another path (warned).
    """

    approximate: bool
    linearised: tuple[str, ...]
    path: str
    fallback_reason: str | None
    identity_error: float | None
    bias_fallback: str | None

    def __new__(cls, A: Tensor, B: Tensor, approximate: bool = False, linearised: Sequence[str] = (),
                path: str = TRANSPOSED, fallback_reason: str | None = None, identity_error: float | None = None,
                bias_fallback: str | None = None) -> AffineMap:
        self = super().__new__(cls, A, B)
        self.approximate = approximate
        self.linearised = tuple(linearised)
        self.path = path
        self.fallback_reason = fallback_reason
        self.identity_error = identity_error
        self.bias_fallback = bias_fallback
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
    offset: Offset | None = None  # B of one chunk, how it was obtained and checked (_exactness.offset_of)
    identity_error: float | None = None  # of all chunks (_chunked_map)
    bias_fallback: str | None = None


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
            off = offset_of(model, xt, a, y, rows, cap)
            return _Chunk(a.contiguous(), off.b, y[:, rows], cap.linearised, cap.entries, TRANSPOSED, None, off)
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
    off = offset_of(model, x.detach(), a, y, rows, cap)
    return _Chunk(a.contiguous(), off.b, y.detach()[:, rows], cap.linearised, cap.entries, AUTOGRAD, reason, off)


def _chunked_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
                 chunk_size: int | None, approximate: bool, caller: str) -> _Chunk:
    """The :class:`_Chunk` of all of ``x``, ``chunk_size`` samples at a time; warns when linearised.

    The path is "autograd" when any chunk fell back; the reason lists the distinct reasons of those chunks.
    """
    check_model_input(model, x)
    check_precision(x, caller)
    _validate_chunk(chunk_size)
    step = chunk_size or x.shape[0]
    parts = [_chunk_map(model, x[i:i + step], classes, approximate) for i in range(0, x.shape[0], step)]
    identity_error, bias_fallback = _checked(model, x, [p.offset for p in parts], caller)
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
                  torch.cat([p.outputs for p in parts]), linearised, [], path, reason, None, identity_error,
                  bias_fallback)


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
        ``.path`` and ``.fallback_reason`` say how A was computed (module docstring), ``.identity_error`` is the
        measured error of that identity with B propagated independently.

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
    """
    res = _chunked_map(model, x, None, chunk_size, approximate, "affine_map")
    return AffineMap(res.a, res.b, approximate=bool(res.linearised), linearised=res.linearised, path=res.path,
                     fallback_reason=res.reason, identity_error=res.identity_error, bias_fallback=res.bias_fallback)


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
        that computed them (``.path``, ``.fallback_reason``) and the measured identity error.

    Raises
    ------
    As :func:`affine_map`.
    """
    if isinstance(x, Dataset) or distributed_active(distributed, x):
        return dataset_templates(model, x, classes, chunk_size, approximate, distributed)
    res = _chunked_map(model, x, classes, chunk_size, approximate, "templates")
    n, r, _ = res.a.shape
    inner = torch.einsum("nrd,nd->nr", res.a, x.reshape(n, -1))
    rows = torch.arange(r) if classes is None else torch.as_tensor(classes).reshape(-1).long()  # validated above
    return Templates(templates=res.a.reshape(n, r, *x.shape[1:]), biases=res.b, inner_products=inner,
                     outputs=res.outputs, classes=rows, approximate=bool(res.linearised), path=res.path,
                     fallback_reason=res.reason, identity_error=res.identity_error, bias_fallback=res.bias_fallback)


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
