"""Dynamic steerable two-factor blocks and their static counterparts (001 sec. 4.3.1, eqs. 28-29).

A residual block is additive, H(x) = F(x) + W x (eq. 28). The dynamic block is multiplicative:
H(x) = F(Phi(x)) Phi(x) W (eq. 29). Here Phi(x) holds the responses to a steerable frame (Gaussian derivatives),
F is a small pose network that estimates a pose at every location from Phi(x) and its context (a rotation, a
scale, or both), and W are the canonical 1x1 weights. The block works in four steps, as in the text:

1. convolve every input channel with the frame (Gaussian derivatives of orders ``first_order``..``order`` at
   ``sigma``);
2. the pose network (three convolutions, ``pose_width`` units, tanh) gives an angle per location, and per input
   channel with ``pose="channel"``; for a scale pose its output goes through a softplus ramp onto a scale factor
   in ``scale_range`` (sigma 0.8-1.5 in the text: "for scalings, we found softplus and relu nonlinearities to work
   well");
3. the steering functions turn the responses into those of the steered frame: for rotation those of eq. 22
   (:func:`~cnnlens.nn.steering.steer`, trigonometric in the pose, on the unit-norm frame: :func:`frame_rotation`;
   the pose theta gives the responses to the frame turned by -theta, i.e. to the image turned by theta about the
   location), applied through their circular-harmonic decomposition, a cos(m theta) / sin(m theta) table; for
   scale the least-squares map of :func:`~cnnlens.nn.steering.steer_scale`, a polynomial in log scale;
4. a 1x1 combination with the canonical weights W, folded into the steering table so that the frame responses are
   contracted first.

With zero pose the block is its static counterpart, the structured convolution ``to_static()`` (eq. 24).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from scipy.optimize import brentq
from torch import nn
from torch.nn import functional as F

from .bases import gaussian_derivative_basis, kernel_size
from .rfconv import _BasisConvNd
from .steering import steer, steer_scale

__all__ = ["BasisConv2d", "DynResNet", "DynamicSteerableBlock", "StaticResidualBlock", "frame_rotation"]


def frame_rotation(order: int, theta: float | torch.Tensor, keep: tuple[int, ...],
                   sigma: float = 1.0) -> torch.Tensor:
    """The map that turns the responses to the block's unit-norm frame (derivatives ``keep`` of the n-jet of
    ``order`` at ``sigma``) into the responses to that frame rotated by -theta, i.e. those of the image turned by
    theta about each location: N^-1 S(-theta)^T N over ``keep``, where S is :func:`~cnnlens.nn.steering.steer` and
    N the filters' norms (the rotated filter is G_g^(-theta) = sum_f S(-theta)[f, g] G_f, the frame G_f / N_f).
    For order 1 it equals S(theta) itself (S is orthogonal and both derivatives have the same norm); from order 2
    on the two differ, as G_xy has another norm than G_xx and G_yy. Shape (*theta.shape, G, G), float64 for a
    float ``theta``."""
    norms = gaussian_derivative_basis(order, sigma, dtype=torch.float64).filters.flatten(1).norm(dim=1)[list(keep)]
    turn = steer(order, -theta if isinstance(theta, torch.Tensor) else -float(theta))[..., keep, :][..., keep]
    return turn.transpose(-1, -2) * norms.to(turn.dtype)[None, :] / norms.to(turn.dtype)[:, None]


@functools.lru_cache(maxsize=32)
def _harmonic_steering(order: int, keep: tuple[int, ...], sigma: float) -> tuple[bool, tuple[int, ...], np.ndarray]:
    """The steering map :func:`frame_rotation` (eq. 22) as a trigonometric polynomial in the pose,

    R(theta) = [T_0] + sum_m T_c,m cos(m theta) + T_s,m sin(m theta),

    the circular-harmonic decomposition: the order-n block of :func:`~cnnlens.nn.steering.steer` is homogeneous of
    degree n in (cos, sin), so it holds the frequencies m = n, n - 2, ... only. Returns whether a constant part
    T_0 is present, the frequencies m >= 1 and the table (K, G, G) stacked as [T_0], T_c,1.., T_s,1... Computed
    from the map itself at 4 * order + 4 equally spaced angles (a discrete Fourier transform, exact for a
    trigonometric polynomial of degree <= order up to float64 rounding); zero parts are dropped."""
    samples = 4 * order + 4
    angles = 2 * np.pi * np.arange(samples) / samples
    maps = frame_rotation(order, torch.tensor(angles), keep, sigma).numpy()  # (J, G, G)
    const = maps.mean(0)
    cos = [2 * np.einsum("j,jgf->gf", np.cos(m * angles), maps) / samples for m in range(1, order + 1)]
    sin = [2 * np.einsum("j,jgf->gf", np.sin(m * angles), maps) / samples for m in range(1, order + 1)]
    scale = np.abs(maps).max()
    freqs = tuple(m for m in range(1, order + 1) if max(np.abs(cos[m - 1]).max(), np.abs(sin[m - 1]).max())
                  > 1e-12 * scale)
    constant = bool(np.abs(const).max() > 1e-12 * scale)
    table = ([const] if constant else []) + [cos[m - 1] for m in freqs] + [sin[m - 1] for m in freqs]
    return constant, freqs, np.stack(table)


#: degree of the polynomial in log scale that stands for the scale steering map over ``scale_range``
SCALE_DEGREE = 6


@functools.lru_cache(maxsize=32)
def scale_steering_table(order: int, sigma: float, keep: tuple[int, ...], low: float, high: float,
                         degree: int = SCALE_DEGREE) -> tuple[np.ndarray, float]:
    """The scale steering of the block's responses as a polynomial in t = log(scale) over [low, high]:

    L(scale) = I + sum_{j=1..degree} t^j L_j,  L(scale) ~ D M(scale)^T D^-1 [keep][:, keep],

    where M is :func:`~cnnlens.nn.steering.steer_scale` (order, scale, sigma) on one grid wide enough for
    ``high * sigma`` (so that M is smooth in the scale) and D the unit-norm normalisation of the frame: L maps the
    responses to the unit-norm frame at sigma to (approximately) those of the same filters at scale * sigma, with
    the scale-normalised derivatives' coefficients kept (W_s(p) = s^-2 W(p / s) for a filter W in the span).
    The constant term is the identity exactly, so scale 1 is the static block. Fitted by least squares at
    4 * degree Chebyshev nodes. Returns the table (degree, G, G) and the fit's largest error relative to
    max |L| on 101 scales of the range (at degree 6: 3e-6 for order 1, 3e-5 for orders 2-3, 7e-5 for order 4); the scale
    steering itself is far less exact than the fit: see ``steer_scale``'s residual."""
    size = kernel_size(high * sigma, 3.0)
    norms = gaussian_derivative_basis(order, sigma).filters.flatten(1).norm(dim=1).numpy()
    index = np.array(keep)

    def target(t: float) -> np.ndarray:
        m = steer_scale(order, math.exp(t), sigma, size=size).matrix.numpy()
        return (m.T * norms[None, :] / norms[:, None])[index][:, index]

    a, b = math.log(low), math.log(high)
    nodes = (a + b) / 2 + (b - a) / 2 * np.cos(np.pi * (np.arange(4 * degree) + 0.5) / (4 * degree))
    eye = np.eye(len(keep))
    powers = nodes[:, None] ** np.arange(1, degree + 1)
    values = np.stack([target(t) - eye for t in nodes]).reshape(len(nodes), -1)
    table = np.linalg.lstsq(powers, values, rcond=None)[0].reshape(degree, len(keep), len(keep))
    error = 0.0
    for t in np.linspace(a, b, 101):
        exact = target(t)
        fitted = eye + np.tensordot(t ** np.arange(1, degree + 1), table, 1)
        error = max(error, float(np.abs(fitted - exact).max() / np.abs(exact).max()))
    return table, error


def _ramp_offset(low: float, high: float) -> float:
    """The shift b with low + softplus(b) - softplus(b - (high - low)) = 1: zero pose output is scale 1."""
    def softplus(z: float) -> float:
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))

    return brentq(lambda b: low + softplus(b) - softplus(b - (high - low)) - 1.0, -50.0, 50.0, xtol=1e-15)


class BasisConv2d(_BasisConvNd):
    """A 2-D convolution whose filters are learned combinations of the given fixed ``filters`` (F, k, k) (eq. 24);
    ``to_conv()`` gives the equal ``nn.Conv2d``."""

    _dim = 2
    _conv = staticmethod(F.conv2d)
    _plain = nn.Conv2d


class DynamicSteerableBlock(nn.Module):
    """The dynamic steerable two-factor block of eq. 29 of 001: H(x) = F(Phi(x)) Phi(x) W.

    ``forward(x)`` returns H(x) of shape (N, out_channels, H, W). ``forward(x, return_pose=True)`` also returns the
    pose map (N, P, H, W), with P = 1, or in_channels when ``pose="channel"``: angles in radians for
    ``steering="rotation"`` (the default), scale factors for ``steering="scale"``, and for ``"both"`` (N, 2P, H, W),
    the P angles then the P scales (the responses are rescaled, then rotated). ``residual=True`` (only when
    in_channels == out_channels) adds the input, x + H(x), the "DynResBlock" of sec. 4.4.2. The frame is the
    unit-norm Gaussian derivatives of orders ``first_order``..``order``. The block of the blob experiment takes the
    two first-order derivatives (``order=1, first_order=1``).

    A scale pose s = low + softplus(z + b) - softplus(z + b - (high - low)) of the pose network's output z lies in
    ``scale_range`` = (low, high) (b makes z = 0 the scale 1, the static block); the responses are then those of the
    filters at sigma * s, by the least-squares scale steering of :func:`~cnnlens.nn.steering.steer_scale`. That
    steering is approximate: a first-order filter at 1.2 sigma is off by 25% (relative L2) in the span at sigma, at
    1.5 sigma by 52%, at 0.8 sigma by 28% (the ``residual`` of ``steer_scale``); within 0.9-1.1 by at most 14%.
    """

    def __init__(self, in_channels: int, out_channels: int, *, order: int = 1, first_order: int = 0,
                 sigma: float = 1.0, pose_width: int = 16, pose: Literal["location", "channel"] = "location",
                 steering: Literal["rotation", "scale", "both"] = "rotation",
                 scale_range: tuple[float, float] = (0.8, 1.5), residual: bool = False, bias: bool = True) -> None:
        super().__init__()
        if not 0 <= first_order <= order:
            raise ValueError(f"first_order must lie in 0..order ({order}), got {first_order!r}")
        if pose not in ("location", "channel"):
            raise ValueError(f"pose must be 'location' (one angle per pixel) or 'channel' (one per input channel "
                             f"and pixel), got {pose!r}")
        if steering not in ("rotation", "scale", "both"):
            raise ValueError(f"steering must be 'rotation', 'scale' or 'both' (the pose the block estimates), got "
                             f"{steering!r}")
        low, high = (float(v) for v in scale_range)
        if not 0 < low < 1 < high or not math.isfinite(high):
            raise ValueError(f"scale_range must be (low, high) with 0 < low < 1 < high, e.g. (0.8, 1.5) as in sec. "
                             f"4.3.1 of 001; got {scale_range!r}")
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual block needs in_channels == out_channels, got {in_channels} and "
                             f"{out_channels}")
        basis = gaussian_derivative_basis(order, sigma, dtype=torch.get_default_dtype())
        self._keep = [f for f, n in enumerate(basis.total_orders) if n >= first_order]
        self.order, self.residual, self.pose_kind, self.steering = order, residual, pose, steering
        self.scale_range = (low, high)
        self.labels = tuple(basis.labels[f] for f in self._keep)
        self.static = BasisConv2d(in_channels, out_channels, basis.filters[self._keep], bias=bias)
        frames = in_channels * len(self._keep)
        outputs = (1 if pose == "location" else in_channels) * (2 if steering == "both" else 1)
        self.pose_net = nn.Sequential(
            nn.Conv2d(frames, pose_width, 3, padding=1), nn.Tanh(),
            nn.Conv2d(pose_width, pose_width, 3, padding=1), nn.Tanh(),
            nn.Conv2d(pose_width, outputs, 3, padding=1),
        )
        dtype = torch.get_default_dtype()
        constant, frequencies, rotation = _harmonic_steering(order, tuple(self._keep), float(sigma))
        self._constant = constant
        self.register_buffer("frequencies", torch.tensor(frequencies, dtype=dtype), persistent=False)
        table = rotation
        if steering != "rotation":
            scale, self.scale_fit_error = scale_steering_table(order, float(sigma), tuple(self._keep), low, high)
            scale = np.concatenate([np.eye(len(self._keep))[None], scale])
            table = scale if steering == "scale" else np.einsum("kgh,jhf->kjgf", rotation, scale).reshape(
                -1, *scale.shape[1:])
            self._ramp = _ramp_offset(low, high)
        self.register_buffer("pose_table", torch.tensor(table, dtype=dtype), persistent=False)

    def frame_responses(self, x: torch.Tensor) -> torch.Tensor:
        """Phi(x): every input channel convolved with every frame filter, (N, in_channels, F, H, W)."""
        n, c, h, w = x.shape
        bank = self.static.basis.flip((1, 2)).unsqueeze(1)
        out = F.conv2d(x.reshape(n * c, 1, h, w), bank, padding=self.static.padding)
        return out.reshape(n, c, -1, *out.shape[-2:])

    def forward(self, x: torch.Tensor, return_pose: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.static.in_channels:
            raise ValueError(f"DynamicSteerableBlock expects input of shape (N, {self.static.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        phi = self.frame_responses(x)
        pose, waves = self._pose_functions(self.pose_net(phi.flatten(1, 2)))  # waves: (N, P, K, H, W)
        n, c, f, h, w = phi.shape
        if self.pose_kind == "location":
            # one pose for all channels: contract phi with the canonical weights first, (N, K * O, H, W), then
            # weigh the K harmonic parts by the pose's cos(m theta) / sin(m theta)
            weight = torch.einsum("ocg,kgf->kocf", self.static.alpha, self.pose_table)
            parts = F.conv2d(phi.reshape(n, c * f, h, w), weight.reshape(-1, c * f, 1, 1))
            out = (parts.view(n, waves.shape[2], -1, h, w) * waves.view(n, -1, 1, h, w)).sum(1)
        else:
            # a pose per channel: weigh each channel's responses by its harmonics, then one 1x1 contraction
            weight = torch.einsum("ocg,kgf->ockf", self.static.alpha, self.pose_table)
            weighed = waves.unsqueeze(3) * phi.unsqueeze(2)  # (N, C, K, F, H, W)
            out = F.conv2d(weighed.reshape(n, -1, h, w), weight.reshape(weight.shape[0], -1, 1, 1))
        if self.static.bias is not None:
            out = out + self.static.bias.view(1, -1, 1, 1)
        if self.residual:
            out = out + x
        return (out, pose) if return_pose else out

    def _pose_functions(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pose map from the pose network's output and the functions of it that weigh the rows of
        ``pose_table``: the harmonics of the angle, the powers of log scale, or their products."""
        if self.steering == "rotation":
            return raw, self._harmonics(raw)
        low, high = self.scale_range
        z = raw[:, raw.shape[1] // 2:] if self.steering == "both" else raw
        scale = low + F.softplus(z + self._ramp) - F.softplus(z + self._ramp - (high - low))
        powers = torch.log(scale).unsqueeze(2) ** torch.arange(SCALE_DEGREE + 1, device=raw.device).view(-1, 1, 1)
        if self.steering == "scale":
            return scale, powers
        theta = raw[:, : raw.shape[1] // 2]
        waves = (self._harmonics(theta).unsqueeze(3) * powers.unsqueeze(2)).flatten(2, 3)
        return torch.cat([theta, scale], 1), waves

    def _harmonics(self, theta: torch.Tensor) -> torch.Tensor:
        """The trigonometric steering functions of the pose, (N, P, K, H, W): 1 (if the table has a constant part),
        then cos(m theta) and sin(m theta) for the frequencies of :func:`_harmonic_steering`."""
        angles = theta.unsqueeze(2) * self.frequencies.view(1, 1, -1, 1, 1)
        parts = [torch.cos(angles), torch.sin(angles)]
        if self._constant:
            parts.insert(0, torch.ones_like(theta).unsqueeze(2))
        return torch.cat(parts, 2)

    def to_static(self) -> BasisConv2d:
        """The block at zero pose: the structured convolution Phi(x) W with the same frame and weights (eq. 24)."""
        static = BasisConv2d(self.static.in_channels, self.static.out_channels, self.static.basis.detach().clone(),
                             bias=self.static.bias is not None, normalize=False)
        static.load_state_dict(self.static.state_dict())
        return static


class StaticResidualBlock(nn.Module):
    """The static residual block the dynamic one is compared with (eq. 28; "StatResBlock" of sec. 4.4.2):
    x + conv(ReLU(conv(x))) with ``kernel_size`` convolutions of ``hidden`` channels."""

    def __init__(self, channels: int, hidden: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size, padding=kernel_size // 2), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, kernel_size, padding=kernel_size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DynResNet(nn.Module):
    """The boundary network of sec. 4.4.2 of 001, at CPU width: Conv -> 2 x (DynResBlock -> StatResBlock) -> Conv,
    then a 1x1 convolution to boundary / background logits per pixel. ``dynamic=False`` gives the static twin
    ("ResNet (Ours-Static)"), with a StaticResidualBlock in place of every dynamic one."""

    def __init__(self, in_channels: int = 3, width: int = 16, *, order: int = 2, sigma: float = 1.0,
                 dynamic: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(2):
            first = (DynamicSteerableBlock(width, width, order=order, sigma=sigma, residual=True) if dynamic
                     else StaticResidualBlock(width))
            blocks += [first, nn.ReLU(), StaticResidualBlock(width), nn.ReLU()]
        blocks += [nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, 2, 1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
