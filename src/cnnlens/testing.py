"""Checkers that cnnlens ships for its exact identities (used by its own tests; usable on any model).

Tolerances come from the dtype: relative 1e-10 in float64 and 1e-4 in float32.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

__all__ = ["assert_affine_exact", "attribute_conv_reference", "default_tolerance", "offset_output"]

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

    Three checks of the map against quantities computed without it, each relative to a per-sample scale:

    1. ``A[x] x + B[x] == model(x)``, with ``model(x)`` from a plain forward pass (no capture) and B as
       :func:`affine_map` returns it (propagated through the masked network, not ``f(x) - A x``);
    2. ``A[x] x + B_propagated == model(x)``, with ``B_propagated`` from :func:`propagated_bias`'s own recording
       and replay at input 0 (eq. 7 of 000);
    3. ``A[x] v`` equals the derivative of the plain model along a random direction v (one per sample, as long
       as x), by finite differences in float64 (on a float64 copy of an ``nn.Module`` given in float32). The
       identities above test A only along x; this one sees what the model computes whatever its autograd graph says
       (``detach``, ``no_grad``), and whether its outputs mix the samples. Steps of 1e-4, 1e-5 and 1e-6 times
       |x| on both sides are tried and the best agreement counts (a step can cross a region boundary); a sample on
       a boundary that v leaves (a unit exactly at its threshold, max-pool maxima tied at x that move apart along
       v), where the tie rule picks one of several directional derivatives, is left out of this check when no side
       agrees.

    Parameters
    ----------
    model : callable
        Piecewise-affine model in eval mode.
    x : Tensor (N, *in_shape)
        Inputs.
    rtol : float, optional
        Relative tolerance; default from the dtype (:func:`default_tolerance`). Check 3 uses at least 1e-8
        (finite differences in float64 lose about 1e-10 to rounding).
    chunk_size : int, optional
        Passed to :func:`cnnlens.spline.affine_map`.

    Returns
    -------
    dict
        ``identity_max_rel_error``, ``bias_max_rel_error``, ``identity_max_abs_error``,
        ``directional_max_rel_error`` (NaN when check 3 could not run: a plain function in float32, which cannot
        be copied to float64) and ``directional_samples_skipped`` (left out of check 3: on a boundary, or all of
        them when it could not run); also logged at INFO level.

    Raises
    ------
    AssertionError
        When an error exceeds ``rtol`` (also when :func:`affine_map` itself finds its identity check failing);
        the message gives the worst sample and its errors. Models that the engine refuses (not piecewise affine,
        TorchScript, mixing samples) raise their own errors.
    """
    __tracebackhide__ = True
    from ._errors import ExactnessError
    from .spline._affine import affine_map, propagated_bias

    tol = default_tolerance(x.dtype) if rtol is None else rtol
    try:
        a, b = affine_map(model, x, chunk_size=chunk_size)
    except ExactnessError as err:
        raise AssertionError(f"affine map not exact: {err}") from err
    with torch.no_grad():
        f = model(x).reshape(x.shape[0], -1)
    ax = torch.einsum("ncd,nd->nc", a, x.reshape(x.shape[0], -1))
    b_prop = propagated_bias(model, x)
    scale = torch.stack([f.abs().amax(1), ax.abs().amax(1), b.abs().amax(1)]).amax(0)[:, None]
    err = (ax + b - f).abs()
    err_b = (ax + b_prop - f).abs()
    tol_d = max(tol, 1e-8)
    directional = _directional_errors(model, x, a, tol_d)
    inside = directional[~directional.isnan()] if directional is not None else None
    stats = {
        "identity_max_rel_error": _rel(err, scale),
        "bias_max_rel_error": _rel(err_b, scale),
        "identity_max_abs_error": float(err.max()),
        "directional_max_rel_error": float(inside.max()) if inside is not None and inside.numel() else float("nan"),
        "directional_samples_skipped": x.shape[0] - (inside.numel() if inside is not None else 0),
    }
    _log.info("assert_affine_exact on %d samples (%s): %s", x.shape[0], x.dtype, stats)
    worst = int((err / scale).amax(1).argmax())
    if stats["identity_max_rel_error"] > tol or stats["bias_max_rel_error"] > tol:
        raise AssertionError(
            f"affine map not exact to rtol={tol:g} ({x.dtype}): max relative error of A x + B vs f(x) "
            f"{stats['identity_max_rel_error']:.3g}, of A x + B_propagated vs f(x) {stats['bias_max_rel_error']:.3g} "
            f"(worst sample {worst}, scale {float(scale[worst]):.3g}).")
    if stats["directional_max_rel_error"] > tol_d:
        worst = int(directional.nan_to_num(-1.0).argmax())
        raise AssertionError(
            f"affine map not exact to rtol={tol_d:g} ({x.dtype}): A v differs from the finite-difference "
            f"derivative of the model along a random direction v by {stats['directional_max_rel_error']:.3g} "
            f"(relative, sample {worst}), although A x + B == f(x) holds: A is not the Jacobian of what the model "
            "computes (part of it escaped the capture, or it is not piecewise affine in the way the capture saw).")
    return stats


def _directional_errors(model: Callable[[Tensor], Tensor], x: Tensor, a: Tensor, tol: float) -> Tensor | None:
    """Per-sample relative error of ``A v`` against finite differences of the model along v (check 3 above); NaN
    for a sample on a region boundary where no side agrees to ``tol``."""
    if x.dtype == torch.float64:
        model64 = model
    elif isinstance(model, nn.Module):
        model64 = copy.deepcopy(model).double()
    else:
        _log.info("assert_affine_exact: no directional check for a plain function in %s (no float64 copy)", x.dtype)
        return None
    n = x.shape[0]
    x64 = x.detach().double()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    size = x64.reshape(n, -1).norm(dim=1).clamp_min(1.0) / v.reshape(n, -1).norm(dim=1)
    v = v * size.view(n, *[1] * (x.dim() - 1))
    av = torch.einsum("ncd,nd->nc", a.double(), v.reshape(n, -1))
    with torch.no_grad():
        f0 = model64(x64).reshape(n, -1)
        best = torch.full((n,), float("inf"), dtype=torch.float64)
        for step in (1e-4, -1e-4, 1e-5, -1e-5, 1e-6, -1e-6):
            d = (model64(x64 + step * v).reshape(n, -1) - f0) / step
            scale = torch.stack([f0.abs().amax(1), av.abs().amax(1), d.abs().amax(1)]).amax(0)
            rel = (d - av).abs().amax(1) / scale.clamp_min(torch.finfo(torch.float64).tiny)
            best = torch.minimum(best, rel)
    if bool((best > tol).any()):  # on a region boundary the tie rule picks one of several derivatives
        on_boundary = _ties_along(model64, x64, v)
        best = torch.where(on_boundary & (best > tol), torch.full((), float("nan"), dtype=best.dtype), best)
    return best


def _ties_along(model: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """Per sample, whether some unit sits exactly on a region boundary at x and leaves it along v: a ReLU-like unit
    with ``u == 0``, a clamp at a bound, or a max-pool window whose tied maxima move apart (ties among units that
    stay equal, such as dead ReLUs pooled together, do not make the directional derivative ambiguous)."""
    from .spline import activations

    n = x.shape[0]
    at, moved = activations(model, x), activations(model, x + 1e-9 * v)
    ties = torch.zeros(n, dtype=torch.bool)
    for name, kind in at.kinds.items():
        a, b = at[name], moved.get(name)
        if b is None or b.shape != a.shape:
            return torch.ones(n, dtype=torch.bool)  # another path along v: x is on a boundary of the control flow
        if kind == "binary":
            tie = (a == 0) & (b != 0)
        elif kind == "ternary":
            lo, hi = at.bounds[name]
            tie = ((a == lo) | (a == hi)) & (b != a)
        else:
            tied = (a == a.amax(-1, keepdim=True)) & (a.amax(-1, keepdim=True) > float("-inf"))
            low = torch.where(tied, b, torch.full((), float("inf"), dtype=b.dtype)).amin(-1)
            high = torch.where(tied, b, torch.full((), float("-inf"), dtype=b.dtype)).amax(-1)
            tie = (tied.sum(-1) > 1) & (low != high)
        ties |= tie.reshape(n, -1).any(1)
    return ties


def offset_output(model: nn.Module, x: Tensor, *, rtol: float | None = None) -> Tensor:
    """``J_b b``: the output's derivative along all offsets of the model, at ``x`` (one forward-mode JVP).

    For a network whose output is positively homogeneous of degree 1 jointly in the input and the offsets
    (conv/linear biases and batch-norm shifts; weights, scales and variances fixed), Euler's identity gives, on the
    region of x,

    .. math::

        f(x) = J_x x + J_b b, \\qquad\\text{so}\\qquad J_b b = f(x) - A[x] x = B[x]

    (eq. 9 of 000) on the region selected by PyTorch's own derivative rules (ReLU'(0) = 0, first max-pool index),
    computed from the plain PyTorch model without the spline engine: an independent check of
    :func:`cnnlens.spline.affine_map`'s ``B``. Batch-norm layers (eval mode) are first rewritten on a copy with their
    whole shift ``beta - gamma * mean / sqrt(var + eps)`` in the bias and a zero running mean (the same function).

    The homogeneity is checked, not assumed: a second JVP along x gives ``J_x x``, and ``J_x x + J_b b`` must equal
    ``f(x)``. It fails, with a ValueError, when some constant enters outside the biases (a clamp / hardtanh bound
    that is active at x, a constant added in ``forward``, batch-norm without affine parameters).

    Parameters
    ----------
    model : nn.Module
        A piecewise-affine model in eval mode; it is not modified.
    x : Tensor (N, *in_shape)
        Finite floating-point inputs with the model's dtype.
    rtol : float, optional
        Tolerance of the homogeneity check relative to the per-sample scale ``max(|f|, |J_x x|, |J_b b|)``;
        default from the dtype (:func:`default_tolerance`).

    Returns
    -------
    Tensor
        ``J_b b``, shaped like ``model(x)``.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` (its offsets are its parameters and buffers named ``*bias``).
    ValueError
        If the model is not homogeneous in (x, offsets) at x, so that ``J_b b`` is not ``B[x]``.
    """
    from .spline._capture import check_model_input

    if not isinstance(model, nn.Module):
        raise TypeError(f"offset_output needs an nn.Module (its offsets are the parameters and buffers named *bias); "
                        f"received {type(model).__name__}.")
    check_model_input(model, x)
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and module.track_running_stats:
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                module.bias -= scale * module.running_mean
                module.running_mean.zero_()
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    offsets = {k: v.detach() for k, v in named.items() if k.endswith("bias")}
    fixed = {k: v.detach() for k, v in named.items() if k not in offsets}
    zeros = {k: torch.zeros_like(v) for k, v in offsets.items()}

    def output(inp: Tensor, offset_values: dict[str, Tensor]) -> Tensor:
        return functional_call(model, {**fixed, **offset_values}, (inp,))

    x = x.detach()
    f, jx = jvp(output, (x, offsets), (x, zeros))
    jb = jvp(output, (x, offsets), (torch.zeros_like(x), offsets))[1]
    n = x.shape[0]
    f2, jx2, jb2 = (t.detach().reshape(n, -1) for t in (f, jx, jb))
    scale = torch.stack([f2.abs().amax(1), jx2.abs().amax(1), jb2.abs().amax(1)]).amax(0)[:, None]
    rel = (jx2 + jb2 - f2).abs() / scale.clamp_min(torch.finfo(x.dtype).tiny)
    tol = default_tolerance(x.dtype) if rtol is None else rtol
    worst = float(rel.max())
    if worst > tol:
        sample = int(rel.amax(1).argmax())
        raise ValueError(
            f"offset_output: the model is not positively homogeneous in its input and offsets at x (sample {sample}: "
            f"|J_x x + J_b b - f(x)| / scale = {worst:.3g} > rtol={tol:g}), so J_b b is not the offset B[x]. A "
            "constant enters outside the biases (an active clamp / hardtanh bound, a constant added in forward, "
            "batch-norm without affine parameters); compare with cnnlens.spline.affine_map's B only on models "
            "without them.")
    return jb.detach()


def attribute_conv_reference(x: Tensor, weight: Tensor, *, marginal: bool = False, spatial_stride: int = 1,
                             attribute_stride: int = 2, boundary: tuple[str, ...] | str = "zero") -> Tensor:
    """Eqs. 31/33/35 of 001 by explicit sums over the filter taps (the reference of the attribute convolutions).

    ``x``: ``(B, *attributes, H, W)``; ``weight``: ``(F, *attribute_kernel, k, k)`` with one or two convolved
    attribute axes (after the marginal sum over the first attribute when ``marginal``). For every tap
    ``(i_1, .., k_u1, k_u2)`` the input value read by each output position ``n`` along each axis is
    ``x[stride n + i - size // 2]`` (modulo the axis for a periodic boundary, zero outside for a zero one), times the
    tap's weight; the taps are summed one by one. Returns ``(B, *attributes / stride, F, H / s, W / s)``.
    """
    z = x.sum(1) if marginal else x
    n_attr = weight.ndim - 3
    sizes = z.shape[1:]
    strides = (attribute_stride,) * n_attr + (spatial_stride, spatial_stride)
    bounds = (boundary,) * (n_attr + 1) if isinstance(boundary, str) else tuple(boundary)
    bounds = bounds[:-1] + (bounds[-1], bounds[-1])
    kernel = weight.shape[1:]
    out_sizes = [n // s for n, s in zip(sizes, strides, strict=True)]
    out = z.new_zeros(z.shape[0], *out_sizes, weight.shape[0])
    for tap in itertools.product(*(range(k) for k in kernel)):
        value = z
        for axis, (i, k, n, s, b) in enumerate(zip(tap, kernel, sizes, strides, bounds, strict=True)):
            pos = torch.arange(n // s) * s + i - k // 2
            inside = (pos >= 0) & (pos < n)
            value = value.index_select(axis + 1, pos % n)
            if b == "zero":
                shape = [1] * value.ndim
                shape[axis + 1] = -1
                value = value * inside.view(shape).to(value.dtype)
        out = out + value.unsqueeze(-1) * weight[(slice(None), *tap)]
    return out.movedim(-1, n_attr + 1)
