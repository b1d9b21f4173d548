"""Checkers that cnnlens ships for its exact identities (used by its own tests; usable on any model).

Tolerances come from the dtype: relative 1e-10 in float64 and 1e-4 in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["assert_affine_exact", "default_tolerance"]

_log = logging.getLogger(__name__)

_TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of exact identities for ``dtype`` (1e-10 for float64, 1e-4 for float32)."""
    if dtype not in _TOLERANCES:
        raise TypeError(f"no tolerance for dtype {dtype}; expected one of {sorted(map(str, _TOLERANCES))}.")
    return _TOLERANCES[dtype]


def _rel(err: Tensor, scale: Tensor) -> float:
    return float((err / scale.clamp_min(torch.finfo(err.dtype).tiny)).max())


def assert_affine_exact(model: Callable[[Tensor], Tensor], x: Tensor, *, rtol: float | None = None,
                        chunk_size: int | None = None) -> dict[str, float]:
    """Assert that :func:`cnnlens.spline.affine_map` is exact on ``x`` (eq. 9 of 000) and return the error stats.

    Two independent checks, each relative to the per-sample scale ``max(|f(x)|, |A x|, |B|)``:

    1. ``A[x] x + B[x] == model(x)``, with ``model(x)`` from a plain forward pass (no capture);
    2. ``B[x]`` equals the offset propagated through the network at input 0 with the regions of x held fixed
       (eq. 7 of 000), so ``A[x] x + B_propagated == model(x)`` does not rely on ``B = f(x) - A x``.

    Parameters
    ----------
    model : callable
        Piecewise-affine model in eval mode.
    x : Tensor (N, *in_shape)
        Inputs.
    rtol : float, optional
        Relative tolerance; default from the dtype (:func:`default_tolerance`).
    chunk_size : int, optional
        Passed to :func:`cnnlens.spline.affine_map`.

    Returns
    -------
    dict
        ``identity_max_rel_error``, ``bias_max_rel_error``, ``identity_max_abs_error`` (also logged at INFO level).

    Raises
    ------
    AssertionError
        When an error exceeds ``rtol``; the message gives the worst sample and its errors.
    """
    __tracebackhide__ = True
    from .spline._affine import affine_map, propagated_bias

    tol = default_tolerance(x.dtype) if rtol is None else rtol
    a, b = affine_map(model, x, chunk_size=chunk_size)
    with torch.no_grad():
        f = model(x).reshape(x.shape[0], -1)
    ax = torch.einsum("ncd,nd->nc", a, x.reshape(x.shape[0], -1))
    b_prop = propagated_bias(model, x)
    scale = torch.stack([f.abs().amax(1), ax.abs().amax(1), b.abs().amax(1)]).amax(0)[:, None]
    err = (ax + b - f).abs()
    err_b = (ax + b_prop - f).abs()
    stats = {
        "identity_max_rel_error": _rel(err, scale),
        "bias_max_rel_error": _rel(err_b, scale),
        "identity_max_abs_error": float(err.max()),
    }
    _log.info("assert_affine_exact on %d samples (%s): %s", x.shape[0], x.dtype, stats)
    worst = int((err / scale).amax(1).argmax())
    if stats["identity_max_rel_error"] > tol or stats["bias_max_rel_error"] > tol:
        raise AssertionError(
            f"affine map not exact to rtol={tol:g} ({x.dtype}): max relative error of A x + B vs f(x) "
            f"{stats['identity_max_rel_error']:.3g}, of A x + B_propagated vs f(x) {stats['bias_max_rel_error']:.3g} "
            f"(worst sample {worst}, scale {float(scale[worst]):.3g}).")
    return stats
