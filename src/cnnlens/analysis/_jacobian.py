"""The local conditioning of a representation: singular values of the differential dPhi at x (001 sec. 6.4.1,
Fig. 19).

For a and b close, Phi a ~ Phi b + dPhi_b (a - b); the singular values of dPhi_x (square roots of the eigenvalues of
dPhi* dPhi) say how Phi stretches each direction at x. The text reports how many of them hold 80% and 97% of the
cumulated energy (the sum of squared singular values, i.e. ||dPhi_x||_F^2): 10^3 and 10^4 of D = 150,528 on
ImageNet. Two paths:

* ``full``: the whole Jacobian (D_out x D_in) by ``torch.func.jacrev`` and its SVD, for small inputs;
* ``randomized``: the top ``k`` singular values by randomized subspace iteration (Halko, Martinsson and Tropp 2011,
  Alg. 4.4) on Jacobian-vector and vector-Jacobian products (``torch.func.jvp`` / ``torch.func.vjp``), never
  forming the Jacobian; the total energy is then Hutchinson's estimate E ||dPhi z||^2 over Rademacher z.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..spline._capture import module_outputs
from ._features import check_finite, flatten_output, model_dtype, representation

__all__ = ["Spectrum", "energy_count", "jacobian_spectrum"]

#: Jacobians with at most this many entries are formed in full by method="auto"
FULL_LIMIT = 4_000_000


@dataclass(frozen=True)
class Spectrum:
    """Singular values of dPhi_x in decreasing order (all of them for the full path, the top k otherwise) and the
    numbers of singular values that hold 80% and 97% of the energy ||dPhi_x||_F^2 (None when the k computed hold
    less than that)."""

    singular_values: np.ndarray
    dim_in: int
    dim_out: int
    total_energy: float
    exact_energy: bool
    method: str
    k80: int | None
    k97: int | None

    @property
    def k80_fraction(self) -> float | None:
        """k80 / D with D the input dimension (Fig. 19: 10^3 / 150,528 = 0.66%)."""
        return None if self.k80 is None else self.k80 / self.dim_in

    @property
    def k97_fraction(self) -> float | None:
        """k97 / D (Fig. 19: 10^4 / 150,528 = 6.6%)."""
        return None if self.k97 is None else self.k97 / self.dim_in


def energy_count(singular_values: np.ndarray, total_energy: float, share: float) -> int | None:
    """The smallest m such that the m largest singular values hold ``share`` of ``total_energy`` (None if the
    values given do not reach it)."""
    cumulated = np.cumsum(np.sort(np.asarray(singular_values, dtype=np.float64))[::-1] ** 2)
    reached = np.nonzero(cumulated >= share * total_energy * (1 - 1e-12))[0]
    return int(reached[0]) + 1 if len(reached) else None


def _flat_map(model: nn.Module, shape: tuple[int, ...], layer: str | None) -> Callable[[Tensor], Tensor]:
    """v (D_in,) -> Phi(v) flattened (D_out,): the representation of :func:`representation`, or ``layer``'s output."""

    def phi(v: Tensor) -> Tensor:
        x = v.reshape(1, *shape)
        if layer is None:
            return representation(model, x).reshape(-1)
        with module_outputs(model, [layer]) as outputs:
            model(x)
        return flatten_output(outputs[layer], layer, 1, spatial_average=False).reshape(-1)

    return phi


def _orthonormal(y: Tensor) -> Tensor:
    return torch.linalg.qr(y).Q


def jacobian_spectrum(model: nn.Module, x: Tensor, k: int | None = None, *, layer: str | None = None,
                      method: str = "auto", oversample: int = 10, power_iters: int = 4, probes: int = 64,
                      seed: int = 0) -> Spectrum:
    """Singular values of dPhi at ``x`` and the counts holding 80% / 97% of the energy (001 sec. 6.4.1, Fig. 19).

    Parameters
    ----------
    model : nn.Module
        Any differentiable network (read in eval mode). Phi is ``layer``'s output when given, else the model's
        representation (the second output of a forward returning (logits, Phi), else the output).
    x : Tensor
        One input, (C, H, W) or (1, C, H, W).
    k : int, optional
        Number of singular values of the randomized path (required by it).
    method : "auto", "full" or "randomized"
        "auto": full when the Jacobian has at most ``FULL_LIMIT`` entries, else randomized (k needed).
    oversample, power_iters : int
        Extra random directions and subspace iterations of the randomized path.
    probes : int
        Rademacher probes of Hutchinson's estimate of ||dPhi_x||_F^2 (randomized path).
    """
    if method not in ("auto", "full", "randomized"):
        raise ValueError(f"method must be 'auto', 'full' or 'randomized'; received {method!r}.")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be one floating-point input tensor (C, H, W) or (1, C, H, W).")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() < 1 or x.dim() > 3 or x.numel() == 0:
        raise ValueError(f"x must be one input (C, H, W) or (1, C, H, W); received shape {tuple(x.shape)}. The "
                         "Jacobian is taken at one point: call once per input.")
    check_finite(x, "x")
    dtype = model_dtype(model)
    v = x.detach().to(dtype).reshape(-1)
    phi = _flat_map(model, tuple(x.shape), layer)
    was_training = model.training
    model.eval()
    try:
        values, total, full, dim_in, dim_out = _spectrum(phi, v, k, method, oversample, power_iters, probes, seed)
    finally:
        model.train(was_training)
    return Spectrum(values, dim_in, dim_out, total, full, "full" if full else "randomized",
                    energy_count(values, total, 0.80), energy_count(values, total, 0.97))


def _spectrum(phi: Callable[[Tensor], Tensor], v: Tensor, k: int | None, method: str, oversample: int,
              power_iters: int, probes: int, seed: int) -> tuple[np.ndarray, float, bool, int, int]:
    """(singular values, total energy, whether full, D_in, D_out) of the Jacobian of phi at v."""
    with torch.no_grad():
        dim_out = int(phi(v).numel())
    dim_in = int(v.numel())
    full = method == "full" or (method == "auto" and dim_in * dim_out <= FULL_LIMIT)
    if full:
        jac = torch.func.jacrev(phi, chunk_size=256)(v)
        values = torch.linalg.svdvals(jac.detach()).double().numpy()
        return values, float(np.sum(values**2)), True, dim_in, dim_out
    if k is None or isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(dim_in, dim_out):
        raise ValueError(f"the randomized path needs k, the number of singular values, an int in "
                         f"[1, {min(dim_in, dim_out)}]; received {k!r}. (method='full' forms the "
                         f"{dim_out} x {dim_in} Jacobian instead.)")
    values, total = _randomized(phi, v, k, oversample, power_iters, probes, seed)
    return values, total, False, dim_in, dim_out


def _randomized(phi: Callable[[Tensor], Tensor], v: Tensor, k: int, oversample: int, power_iters: int, probes: int,
                seed: int) -> tuple[np.ndarray, float]:
    """Top-k singular values by subspace iteration on J = dPhi_v (Halko et al. 2011, Alg. 4.4), and Hutchinson's
    estimate of ||J||_F^2."""
    gen = torch.Generator().manual_seed(seed)
    _, vjp = torch.func.vjp(phi, v)
    forward = torch.func.vmap(lambda t: torch.func.jvp(phi, (v,), (t,))[1], in_dims=1, out_dims=1)  # J @ (D_in, l)
    backward = torch.func.vmap(lambda u: vjp(u)[0], in_dims=1, out_dims=1)  # J^T @ (D_out, l)
    width = min(k + oversample, v.numel())
    omega = torch.randn(v.numel(), width, generator=gen, dtype=torch.float64).to(v.dtype)
    q = _orthonormal(forward(omega))
    for _ in range(power_iters):
        q = _orthonormal(forward(_orthonormal(backward(q))))
    values = torch.linalg.svdvals(backward(q).T.detach()).double().numpy()[:k]
    signs = torch.randint(0, 2, (v.numel(), probes), generator=gen).to(v.dtype) * 2 - 1
    total = float(forward(signs).detach().double().pow(2).sum() / probes)
    return values, max(total, float(np.sum(values**2)))
