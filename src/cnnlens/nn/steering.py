"""Steering Gaussian-derivative filters by rotation (eq. 22 of 001, sec. 3.3.2; eqs. 25-27 of ch. 4).

Every Gaussian derivative is a polynomial times an isotropic Gaussian, so a rotated derivative of order n is a
combination of the n + 1 derivatives of that order (Freeman and Adelson, ref. [10] of 001), and a filter
W = sum_m a_m G_m rotated by theta has coefficients S(theta) a: the steering map is linear and block-diagonal by
order.

Convention (that of eq. 22): arrays are indexed ``[y, x]`` with y pointing down, and theta > 0 rotates a filter
counter-clockwise as displayed (from +x towards -y, i.e. ``torch.rot90(w, 1, (-2, -1))`` for theta = pi / 2). The
rotated filter is W_theta(p) = W(R^-1 p), and the chain rule turns each derivative into a directional one,

.. math:: \\partial_x \\mapsto \\cos\\theta\\, \\partial_x - \\sin\\theta\\, \\partial_y, \\qquad
          \\partial_y \\mapsto \\sin\\theta\\, \\partial_x + \\cos\\theta\\, \\partial_y,

so that G^theta_x = cos G_x - sin G_y and G^theta_xx = cos^2 G_xx - 2 cos sin G_xy + sin^2 G_yy (eq. 22); a
multi-index (m_y, m_x) goes to (cos d_x - sin d_y)^m_x (sin d_x + cos d_y)^m_y, expanded by the binomial theorem.
The identity holds pointwise for the analytic functions, so it is exact for the sampled filters of
:func:`~cnnlens.nn.bases.gaussian_derivative_basis` (same scale within an order, any truncation window); rotating an
*image* on the grid is where approximation enters.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .bases import MAX_ORDER, _check_order, derivative_label, derivative_orders, gaussian_derivative_basis, kernel_size
from .rfconv import _BasisConvNd

__all__ = ["ScaleSteering", "steer", "steer_filter", "steer_scale"]

_SIZES = {math.comb(n + 2, 2): n for n in range(MAX_ORDER + 1)}  # basis size F -> order


@functools.lru_cache(maxsize=MAX_ORDER + 1)
def _monomial_table(order: int) -> tuple[np.ndarray, np.ndarray]:
    """The steering map as a polynomial in (cos, sin): S = sum_k table[k] cos^i_k sin^j_k over the monomials
    (i_k, j_k) with i + j <= order, shape (K, F, F), and the exponents (K, 2)."""
    multi = derivative_orders(order, 2)
    position = {m: f for f, m in enumerate(multi)}
    exponents = [(i, n - i) for n in range(order + 1) for i in range(n + 1)]
    slot = {e: k for k, e in enumerate(exponents)}
    table = np.zeros((len(exponents), len(multi), len(multi)))
    for col, (my, mx) in enumerate(multi):
        # (c dx - s dy)^mx (s dx + c dy)^my: pick j of the dx terms from the first factor, l from the second
        for j in range(mx + 1):
            for l in range(my + 1):
                coef = math.comb(mx, j) * math.comb(my, l) * (-1) ** (mx - j)
                power_dx = j + l
                row = position[(mx + my - power_dx, power_dx)]
                table[slot[(j + my - l, mx - j + l)], row, col] += coef
    return table, np.array(exponents)


def steer(order: int, theta: float | torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The steering map of eq. 22 of 001 for all Gaussian derivatives of orders <= ``order`` (0..4).

    Returns S(theta) of shape (*theta.shape, F, F), F = (order + 1)(order + 2) / 2, over the multi-indices of
    :func:`~cnnlens.nn.bases.derivative_orders` (order, 2): the coefficients a of a filter sum_m a_m G_m become
    S(theta) @ a, those of the filter rotated by ``theta`` radians (counter-clockwise as displayed, y down; see the
    module docstring). The dtype is ``dtype``, else that of a floating tensor ``theta``, else float64. S is
    orthogonal only for orders <= 1; it is a group homomorphism, S(a) S(b) = S(a + b), block-diagonal by order, and
    differentiable in a tensor ``theta``.

    .. math:: G^\\theta_{xx} = \\cos^2\\theta\\, G_{xx} - 2\\cos\\theta\\sin\\theta\\, G_{xy} + \\sin^2\\theta\\, G_{yy}
    """
    _check_order(order)
    if isinstance(theta, torch.Tensor):
        angle = theta.to(dtype if dtype is not None else theta.dtype if theta.is_floating_point() else torch.float64)
    else:
        angle = torch.tensor(float(theta), dtype=torch.float64 if dtype is None else dtype)
    table, exponents = _monomial_table(int(order))
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    powers = torch.as_tensor(exponents, device=angle.device)
    monomials = cos ** powers[:, 0] * sin ** powers[:, 1]
    return torch.einsum("...k,kij->...ij", monomials, torch.as_tensor(table, dtype=angle.dtype, device=angle.device))


def _layer_steering(layer: _BasisConvNd, theta: float) -> torch.Tensor:
    """The steering map over a layer's own basis: per scale, the blocks of :func:`steer`, conjugated by the
    layer's normalisation (basis[f] = basis_scale[f] * G_f, so S_layer[g, f] = S[g, f] scale[f] / scale[g])."""
    orders, sigmas = getattr(layer, "orders", None), getattr(layer, "sigmas", None)
    if layer._dim != 2 or orders is None or isinstance(layer.basis, nn.Parameter):
        raise ValueError(f"steer_filter steers a 2-D layer over a fixed Gaussian-derivative basis (RFConv2d, or "
                         f"FrameConv2d with the 'gaussian' frame); got {type(layer).__name__} "
                         f"({getattr(layer, 'frame_name', None) or getattr(layer, 'basis_kind', 'no Gaussian basis')})")
    top = max(sum(m) for m in orders)
    if top > MAX_ORDER:
        raise ValueError(f"steering is defined for orders up to {MAX_ORDER}; the layer's basis has order {top} "
                         f"({derivative_label(max(orders, key=sum), sigmas[0])})")
    present = set(zip(orders, sigmas, strict=True))
    for m, s in present:
        n = sum(m)
        missing = [(i, n - i) for i in range(n + 1) if ((i, n - i), s) not in present]
        if missing:
            raise ValueError(f"the layer's basis is not closed under rotation: order {n} at sigma {s:g} lacks "
                             f"{', '.join(derivative_label(q, s) for q in missing)}; steering needs every "
                             "derivative of each order it holds, e.g. frame('gaussian', size, order=n), the n-jet")
    full = steer(top, theta, dtype=torch.float64)
    position = {m: f for f, m in enumerate(derivative_orders(top, 2))}
    index = torch.tensor([position[m] for m in orders])
    same_scale = torch.tensor([[a == b for b in sigmas] for a in sigmas])
    scale = layer.basis_scale.double().cpu()
    matrix = full[index][:, index] * same_scale * scale[None, :] / scale[:, None]
    return matrix.to(layer.alpha.dtype).to(layer.alpha.device)


def steer_filter(weights: torch.Tensor | _BasisConvNd, theta: float | torch.Tensor) -> torch.Tensor | _BasisConvNd:
    """Rotate filters given by their Gaussian-derivative coefficients by ``theta`` (eq. 22 of 001).

    ``weights`` is either a tensor (..., F) of coefficients over all derivatives of orders <= n
    (F = 1, 3, 6, 10 or 15 for n = 0..4, ordered as :func:`~cnnlens.nn.bases.derivative_orders`), returned as
    S(theta) applied along the last axis (``theta`` may be a tensor broadcasting against the leading axes, e.g. a
    pose per location); or a layer (RFConv2d, FrameConv2d with the Gaussian frame), returned as a copy whose
    effective filters are the original ones rotated by the scalar ``theta`` (eqs. 25-27: steering the frame steers
    the filters). Multi-scale bases and the layers' unit-norm normalisation are taken into account.
    """
    if isinstance(weights, nn.Module):
        if not isinstance(weights, _BasisConvNd):
            raise TypeError(f"steer_filter takes a coefficient tensor or an RFConv2d / FrameConv2d layer, got "
                            f"{type(weights).__name__}")
        matrix = _layer_steering(weights, float(theta))
        steered = copy.deepcopy(weights)
        with torch.no_grad():
            steered.alpha.copy_(torch.einsum("oif,gf->oig", weights.alpha, matrix))
        return steered
    if not isinstance(weights, torch.Tensor) or weights.dim() == 0 or weights.shape[-1] not in _SIZES:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"steer_filter takes coefficients of shape (..., F) with F in {sorted(_SIZES)} (all "
                         f"Gaussian derivatives of orders <= 0..{MAX_ORDER}), got {shape}")
    matrix = steer(_SIZES[weights.shape[-1]], theta, dtype=weights.dtype).to(weights.device)
    return (matrix @ weights.unsqueeze(-1)).squeeze(-1)


class ScaleSteering(NamedTuple):
    """A scale steering map and how well it holds: ``matrix`` (F, F) maps coefficients over the basis at sigma to
    those of the filter at scale * sigma; ``residual`` (F,) is each rescaled basis function's relative L2 error
    in the span of the unscaled basis (0 would be exact)."""

    matrix: torch.Tensor
    residual: torch.Tensor


def steer_scale(order: int, scale: float, sigma: float = 1.0, *, k: float = 3.0,
                size: int | None = None) -> ScaleSteering:
    """Scale steering of Gaussian-derivative filters for small isotropic scalings (001 sec. 4.3.1: sigma 0.8-1.5).

    Unlike rotation, a change of scale is not exactly steerable by a finite basis: a Gaussian derivative at
    scale * sigma lies outside the span of the derivatives of orders <= ``order`` at sigma. The map returned is the
    least-squares one. Each basis function at ``scale * sigma`` (same normalisation, on a grid wide enough for both
    scales) is projected on the basis at ``sigma``. ``residual`` says how far each projection is off: it is small
    near scale 1 and grows with |log scale| and with the order. Coefficients a of a filter at sigma become
    ``matrix @ a``, the coefficients (over the basis at sigma) of the same filter rescaled. ``size`` fixes the odd
    grid (at least the default 2 * ceil(k * max(sigma, scale * sigma)) + 1); a fixed grid makes the map a smooth
    function of ``scale`` over a range, where the default grid grows in steps with the scale.
    """
    _check_order(order)
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite factor, e.g. 1.2, got {scale!r}")
    size = kernel_size(max(sigma, scale * sigma), k) if size is None else size
    base = gaussian_derivative_basis(order, sigma, size=size, k=k).filters.flatten(1)
    scaled = gaussian_derivative_basis(order, scale * sigma, size=size, k=k).filters.flatten(1)
    solution = torch.linalg.lstsq(base.T, scaled.T).solution  # base.T @ solution ~ scaled.T
    residual = (base.T @ solution - scaled.T).norm(dim=0) / scaled.norm(dim=1)
    return ScaleSteering(solution, residual)
