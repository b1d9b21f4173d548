"""The independent check of an affine map: ``A[x] x + B[x] == f(x)`` with B propagated, not ``f(x) - A x``.

For a piecewise-affine network, conditioned on the region of x (and on the control-flow path the forward pass took),
the network is the masked network of eq. 7 of 000, an affine function of its input. Its offset ``B[x]`` is eq. 7's
sum over the biases, each carried to the output by the masked layers after it. Two ways compute it without f(x):

* summed in the reverse sweep that computes A (``SWEPT``, :func:`._transpose.transpose_rows`): the cotangent of
  row c at every bias (convolution and linear biases, batch-norm shifts, constant operands, the constant pieces of
  clamps and registered units) times the bias. It takes the model's constants as they are, so it is used only when
  the capture found each of them to be the model's own (parameters, buffers, tensor attributes, what ops compute
  from them): a constant made from x where the capture cannot see (numpy, ``item()``, compiled code) would enter
  B at its value at x and keep the identity true for a wrong A;
* replayed (``REPLAYED``, :func:`replay_offset`): the forward pass at 0 with every nonlinearity forced to the piece
  recorded at x and every value the model read off an input-dependent tensor (``bool()``, ``item()``) forced to
  the recorded one; the model's code runs again, so such a constant is recomputed at 0 and breaks the identity.

A, B and f(x) are then independent computations (a reverse sweep, the biases summed in it or a forward at 0, the
model's own forward at x), and eq. 9 of 000, ``A[x] x + B[x] = f(x)``, checks them against each other. It fails, and
:func:`raise_inexact` says why, when the capture did not see everything the model computes: TorchScript or other
compiled code called from a plain function, a model whose outputs mix the samples of the batch, random numbers or
state in ``forward``, or a precision too low for the model.

Half precision is refused (:func:`check_precision`) rather than warned about: its unit roundoff (2^-11 for float16,
2^-8 for bfloat16) makes the identity fail by up to 1.1e-3 (float16) and 8.8e-3 (bfloat16) of the outputs already
on LeNet-5 (random weights, 64 inputs, 5 seeds; 5e-7 in float32), more on deeper networks. A tolerance safely above
that would also pass a map that misses a part of the network weighing a few percent, so no check could tell an
exact map from a wrong one; computing in float32 on the user's behalf would silently answer for another network
(the float32 one, whose regions differ near boundaries). The user converts, knowingly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._errors import ExactnessError
from ._capture import UNFORCEABLE, Capture, Entry, ReplayDivergenceError, capture, run_captured

__all__ = ["REPLAYED", "SWEPT", "Offset", "check_precision", "offset_of", "raise_inexact", "replay_offset", "tolerance"]

#: Relative tolerance of the identity for each dtype (relative to max(|f(x)|, |A x|, |B|) per sample).
_TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}
_HALF = {torch.float16: ("float16", 2.0 ** -11, "1.1e-3"), torch.bfloat16: ("bfloat16", 2.0 ** -8, "8.8e-3")}


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the identity ``A x + B == f(x)`` in ``dtype`` (1e-10 in float64, 1e-4 in float32)."""
    return _TOLERANCES[dtype]


def check_precision(x: Tensor, caller: str) -> None:
    """Refuse half precision, where an affine map cannot be told exact (module docstring)."""
    if x.dtype in _HALF:
        name, roundoff, measured = _HALF[x.dtype]
        raise TypeError(
            f"{caller} needs float32 or float64; received {name}. Its unit roundoff {roundoff:.2g} makes A x + B "
            f"differ from f(x) by up to {measured} of the outputs already on LeNet-5 (float32: 5e-7), more on deeper "
            "networks, so the map cannot be checked exact. Convert the model and the input (model.float(), "
            "x.float()): the map of the same weights is then exact up to float32 rounding.")


def replay_offset(model: Callable[[Tensor], Tensor], x: Tensor, entries: list[Entry],
                  decisions: list) -> Tensor:
    """``B[x]``: the forward pass at input 0 with the pieces and values recorded at x forced (eq. 7 of 000), (N, C).

    Raises
    ------
    ReplayDivergenceError
        When the replay meets other nonlinearities or reads other values than the recorded pass (control flow on
        something the capture does not see, such as state kept between calls).
    """
    with torch.no_grad(), capture(model, graph=False, forced=entries, decisions=decisions) as rep:
        out = run_captured(rep, model, torch.zeros_like(x))
    if len(rep.entries) != len(entries):
        raise ReplayDivergenceError(
            f"the replayed forward pass met {len(rep.entries)} nonlinearities but the recorded pass met "
            f"{len(entries)}: {UNFORCEABLE}, so the regions recorded at x cannot be replayed at input 0.")
    return out


def identity_errors(a: Tensor, b: Tensor, x: Tensor, f: Tensor) -> Tensor:
    """Per-sample ``max_c |A x + B - f(x)|`` relative to ``max(|f(x)|, |A x|, |B|)`` of the sample, (N,)."""
    ax = torch.bmm(a, x.reshape(x.shape[0], -1, 1)).squeeze(2)
    scale = torch.maximum(torch.maximum(f.abs(), ax.abs()), b.abs()).amax(1)
    err = (ax + b - f).abs().amax(1)
    return err / scale.clamp_min(torch.finfo(err.dtype).tiny)


#: How B was propagated (``AffineMap.bias_method``): summed over the biases in the reverse sweep, or replayed.
SWEPT, REPLAYED = "swept", "replayed"


@dataclass
class Offset:
    """``B`` of one chunk and how it was obtained.

    ``errors`` holds the per-sample relative error of ``A x + B`` against ``f(x)`` when ``B`` was propagated (an
    independent check), None when ``B = f(x) - A x`` (then ``fallback`` says why); ``seen`` is whether the capture
    saw the output computed from x at all; ``method`` is :data:`SWEPT` or :data:`REPLAYED` (None on a fallback),
    ``why_replayed`` why the sweep's B could not be used.
    """

    b: Tensor
    errors: Tensor | None
    fallback: str | None
    seen: bool
    method: str | None = None
    why_replayed: str | None = None


def offset_of(model: Callable[[Tensor], Tensor], x: Tensor, a: Tensor, y: Tensor, rows: Tensor,
              cap: Capture, swept: Tensor | None = None) -> Offset:
    """``B`` for rows ``rows`` of the map whose recording capture is ``cap`` and captured output ``y`` (N, C).

    ``swept``: B accumulated in the transposed sweep (the biases of eq. 7 of 000 times the cotangents), used when
    the capture found every constant on the tape to be the model's own (``cap.bias_blocker`` is None); otherwise B
    is propagated by :func:`replay_offset`. Either is checked against ``y``. With linearised parts
    (``approximate=True``) B is ``f(x) - A x`` by definition of the local linearisation, and when the replay
    diverges it falls back to that too.
    """
    seen = cap.is_tracked(y)
    f = y.detach()[:, rows]
    n = x.shape[0]
    if cap.linearised:
        return Offset(f - torch.einsum("nrd,nd->nr", a, x.reshape(n, -1)), None,
                      "approximate=True linearised part of the model: B is f(x) - A x by definition of the local "
                      "linearisation at x", seen)
    if swept is not None and cap.bias_blocker is None:
        return Offset(swept, identity_errors(a, swept, x, f), None, seen, SWEPT)
    why = cap.bias_blocker or "A was not computed by the transposed sweep"
    try:
        b = replay_offset(model, x, cap.entries, cap.decisions)[:, rows]
    except ReplayDivergenceError as err:
        return Offset(f - torch.einsum("nrd,nd->nr", a, x.reshape(n, -1)), None,
                      f"B is f(x) - A x, because the propagation of B could not replay the recorded pass: {err}", seen,
                      why_replayed=why)
    return Offset(b, identity_errors(a, b, x, f), None, seen, REPLAYED, why)


def raise_inexact(model: Callable[[Tensor], Tensor], x: Tensor, errors: Tensor, seen: bool, caller: str) -> None:
    """Raise the error that explains a failed identity check (``errors``: per-sample relative errors).

    Diagnosis, run only on failure (two to three forward passes): a model whose output differs between two calls
    on the same input is not deterministic; one whose outputs on the batch differ from its outputs on the first
    sample and on the rest mixes the samples; otherwise part of its computation escaped the capture.
    """
    tol = tolerance(x.dtype)
    worst = int(errors.argmax())
    found = (f"{caller}: A x + B differs from f(x) by {float(errors[worst]):.3g} relative to the outputs (sample "
             f"{worst}; tolerance {tol:g} in {str(x.dtype).removeprefix('torch.')}), with B propagated through the "
             "masked network independently of A and f(x) (eq. 9 of 000)")
    with torch.no_grad():
        f1 = model(x).reshape(x.shape[0], -1)
        f2 = model(x).reshape(x.shape[0], -1)
        if not _close(f1, f2, tol):
            raise ExactnessError(f"{found}. The model is not deterministic: two calls on the same input gave "
                                 "different outputs (random numbers or state in forward), so it has no fixed affine "
                                 "map. Make forward deterministic (eval mode, no torch.rand, no state kept between "
                                 "calls).")
        if x.shape[0] > 1:
            try:
                split = torch.cat([model(x[:1]).reshape(1, -1), model(x[1:]).reshape(x.shape[0] - 1, -1)])
                mixed = "its outputs on the batch differ from its outputs on the first sample and on the others, run " \
                    "separately" if not _close(f1, split, tol) else None
            except RuntimeError as err:  # e.g. a constant (N, N) matrix applied across the batch
                mixed = f"it fails on part of the batch ({str(err).strip().rstrip('.')}), so it depends on the batch"
            if mixed:
                raise ValueError(f"{found}. The model mixes the samples of the batch: {mixed}. cnnlens.spline needs "
                                 "per-sample models: output n must depend on input n only (eq. 9 of 000 maps one "
                                 "input to its output). Keep dim 0 as the sample dimension, or call the model on one "
                                 "sample at a time.")
    if not seen:
        cause = ("The capture saw no operation on x reach the outputs, so part of the model runs where it cannot "
                 "see: TorchScript or compiled code called from a plain function (pass the eager module), values "
                 "sent through numpy or Python lists and back, or a C++ extension.")
    else:
        cause = ("Part of what the model computes escaped the capture: TorchScript or compiled code called from a "
                 "plain function (pass the eager module), values sent through numpy or Python lists and back, a C++ "
                 "extension, or a torch.autograd.Function whose backward is not the derivative of its forward.")
    if x.dtype == torch.float32 and float(errors.max()) < 1e-2:
        cause += (" If the model is deep or badly scaled, float32 rounding alone may exceed the tolerance: compute "
                  "in float64 (model.double(), x.double()) to tell.")
    raise ExactnessError(f"{found}. {cause}")


def _close(a: Tensor, b: Tensor, tol: float) -> bool:
    scale = torch.maximum(a.abs().amax(1), b.abs().amax(1)).clamp_min(torch.finfo(a.dtype).tiny)
    return bool((((a - b).abs().amax(1)) / scale <= tol).all())
