"""The input-dependent affine map of a piecewise-affine network (eqs. 5-9 of 000) and its class templates (sec. 5).

For a network built from max-affine spline operators, conditioned on the region of x,

.. math::

    f(x) = A[x]\\,x + B[x], \\qquad A[x] \\in \\mathbb{R}^{C \\times D},\\; B[x] \\in \\mathbb{R}^{C}

(eq. 8-9 of 000). The rows of A[x] are the signal-dependent class templates of sec. 5.2 and the class scores are the
inner products <A[x]_c, x> plus biases (eq. 12 / Fig. 1 of 000).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._capture import Capture, Entry, capture, check_model_input, run_captured
from ._transpose import Tape, transpose_rows

__all__ = ["AffineMap", "Templates", "affine_map", "templates"]

_log = logging.getLogger(__name__)


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
    """

    approximate: bool
    linearised: tuple[str, ...]

    def __new__(cls, A: Tensor, B: Tensor, approximate: bool = False,
                linearised: Sequence[str] = ()) -> AffineMap:
        self = super().__new__(cls, A, B)
        self.approximate = approximate
        self.linearised = tuple(linearised)
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


def _chunk_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
               approximate: bool) -> tuple[Tensor, Tensor, Tensor, list[str], list[Entry]]:
    """One recording forward + one batched backward of all requested rows (no Python loop over classes).

    Fast path: a plain forward that records the tape, then one sweep of R*N cotangents through the transposed
    masked network (:mod:`._transpose`). Fallback (ops without a transpose rule, or approximate=True): batched
    autograd (``is_grads_batched``) over the captured masked graph.
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
            return a.contiguous(), b, y[:, rows], cap.linearised, cap.entries
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
    return a.contiguous(), b, y[:, rows], cap.linearised, cap.entries


def _chunked_map(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None,
                 chunk_size: int | None, approximate: bool, caller: str) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """(A, B, outputs, linearised ops) of ``x``, ``chunk_size`` samples at a time; warns when linearised."""
    check_model_input(model, x)
    _validate_chunk(chunk_size)
    step = chunk_size or x.shape[0]
    parts = [_chunk_map(model, x[i:i + step], classes, approximate) for i in range(0, x.shape[0], step)]
    linearised = sorted({op for part in parts for op in part[3]})
    if linearised:
        warnings.warn(f"{caller}(approximate=True): the model is not piecewise affine ({'; '.join(linearised)}); "
                      "the result is the local linearisation at x (the Jacobian), exact only at x.", stacklevel=3)
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]),
            linearised)


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
        ``A`` (N, C, D) and ``B`` (N, C) with ``A[n] @ x[n].flatten() + B[n] == model(x)[n]`` up to rounding.

    Examples
    --------
    >>> A, B = affine_map(model, x)  # doctest: +SKIP
    >>> torch.allclose(torch.einsum("ncd,nd->nc", A, x.flatten(1)) + B, model(x))  # doctest: +SKIP
    True
    """
    a, b, _, linearised = _chunked_map(model, x, None, chunk_size, approximate, "affine_map")
    return AffineMap(a, b, approximate=bool(linearised), linearised=linearised)


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
    """

    templates: Tensor
    biases: Tensor
    inner_products: Tensor
    outputs: Tensor
    classes: Tensor
    approximate: bool = False


def templates(model: Callable[[Tensor], Tensor], x: Tensor, classes: Sequence[int] | Tensor | None = None, *,
              chunk_size: int | None = None, approximate: bool = False) -> Templates:
    """Class templates ``A[x]_c`` of eq. 8 of 000, with biases and the inner products of eq. 12 / Fig. 1.

    Parameters
    ----------
    model, x, chunk_size, approximate
        As in :func:`affine_map`.
    classes : sequence of int or LongTensor, optional
        Output rows to compute (default all); only these cotangents are propagated, so fewer classes cost less.

    Returns
    -------
    Templates
        Templates shaped like the input, biases, inner products, outputs and the class indices.
    """
    a, b, out, linearised = _chunked_map(model, x, classes, chunk_size, approximate, "templates")
    n, r, _ = a.shape
    inner = torch.einsum("nrd,nd->nr", a, x.reshape(n, -1))
    rows = torch.arange(r) if classes is None else torch.as_tensor(classes).reshape(-1).long()  # validated above
    return Templates(templates=a.reshape(n, r, *x.shape[1:]), biases=b, inner_products=inner, outputs=out,
                     classes=rows, approximate=bool(linearised))


def propagated_bias(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``B[x]`` propagated exactly through the network with the regions of x held fixed (eq. 7 of 000).

    Records the regions of x, then replays the forward pass at input 0 with every nonlinearity forced to the recorded
    piece: the output is the offset of the region's affine map, computed without using f(x) or A. It is an
    independent check of :func:`affine_map` (used by :func:`cnnlens.testing.assert_affine_exact`).
    """
    check_model_input(model, x)
    with torch.no_grad():
        with capture(model, graph=False) as rec:
            run_captured(rec, model, x)
        with capture(model, graph=False, forced=rec.entries) as rep:
            out = run_captured(rep, model, torch.zeros_like(x))
    if len(rep.entries) != len(rec.entries):
        raise RuntimeError(f"the replayed forward pass met {len(rep.entries)} nonlinearities but the recorded pass "
                           f"met {len(rec.entries)}; the model's control flow depends on the input values.")
    return out
