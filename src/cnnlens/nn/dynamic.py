"""Dynamic steerable two-factor blocks and their static counterparts (001 sec. 4.3.1, eqs. 28-29).

A residual block is additive, H(x) = F(x) + W x (eq. 28). The dynamic block is multiplicative:
H(x) = F(Phi(x)) Phi(x) W (eq. 29). Here Phi(x) holds the responses to a steerable frame (Gaussian derivatives),
F is a small pose network that estimates a rotation at every location from Phi(x) and its context, and W are the
canonical 1x1 weights. The block works in four steps, as in the text:

1. convolve every input channel with the frame (Gaussian derivatives of orders ``first_order``..``order`` at
   ``sigma``);
2. the pose network (three convolutions, ``pose_width`` units, tanh) gives an angle per location, and per input
   channel with ``pose="channel"``;
3. the steering functions of eq. 22 (:func:`~cnnlens.nn.steering.steer`, trigonometric in the pose) turn the
   responses into those of the rotated frame;
4. a 1x1 combination with the canonical weights W.

With zero pose the block is its static counterpart, the structured convolution ``to_static()`` (eq. 24).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .bases import gaussian_derivative_basis
from .rfconv import _BasisConvNd
from .steering import steer

__all__ = ["BasisConv2d", "DynResNet", "DynamicSteerableBlock", "StaticResidualBlock"]


@functools.lru_cache(maxsize=32)
def _harmonic_steering(order: int, keep: tuple[int, ...]) -> tuple[bool, tuple[int, ...], np.ndarray]:
    """The steering map of eq. 22 over the frame filters ``keep`` as a trigonometric polynomial in the pose,

    S(theta)[keep][:, keep] = [T_0] + sum_m T_c,m cos(m theta) + T_s,m sin(m theta),

    the circular-harmonic decomposition: the order-n block of :func:`~cnnlens.nn.steering.steer` is homogeneous of
    degree n in (cos, sin), so it holds the frequencies m = n, n - 2, ... only. Returns whether a constant part
    T_0 is present, the frequencies m >= 1 and the table (K, G, G) stacked as [T_0], T_c,1.., T_s,1... Computed
    from ``steer`` itself at 4 * order + 4 equally spaced angles (a discrete Fourier transform, exact for a
    trigonometric polynomial of degree <= order up to float64 rounding); zero parts are dropped."""
    samples = 4 * order + 4
    angles = 2 * np.pi * np.arange(samples) / samples
    maps = steer(order, torch.tensor(angles)).numpy()[:, keep][:, :, keep]  # (J, G, G)
    const = maps.mean(0)
    cos = [2 * np.einsum("j,jgf->gf", np.cos(m * angles), maps) / samples for m in range(1, order + 1)]
    sin = [2 * np.einsum("j,jgf->gf", np.sin(m * angles), maps) / samples for m in range(1, order + 1)]
    scale = np.abs(maps).max()
    freqs = tuple(m for m in range(1, order + 1) if max(np.abs(cos[m - 1]).max(), np.abs(sin[m - 1]).max())
                  > 1e-12 * scale)
    constant = bool(np.abs(const).max() > 1e-12 * scale)
    table = ([const] if constant else []) + [cos[m - 1] for m in freqs] + [sin[m - 1] for m in freqs]
    return constant, freqs, np.stack(table)


class BasisConv2d(_BasisConvNd):
    """A 2-D convolution whose filters are learned combinations of the given fixed ``filters`` (F, k, k) (eq. 24);
    ``to_conv()`` gives the equal ``nn.Conv2d``."""

    _dim = 2
    _conv = staticmethod(F.conv2d)
    _plain = nn.Conv2d


class DynamicSteerableBlock(nn.Module):
    """The dynamic steerable two-factor block of eq. 29 of 001: H(x) = F(Phi(x)) Phi(x) W.

    ``forward(x)`` returns H(x) of shape (N, out_channels, H, W). ``forward(x, return_pose=True)`` also returns the
    pose map (N, P, H, W) in radians, with P = 1, or in_channels when ``pose="channel"``. ``residual=True`` (only
    when in_channels == out_channels) adds the input, x + H(x), the "DynResBlock" of sec. 4.4.2. The frame is the
    unit-norm Gaussian derivatives of orders ``first_order``..``order``. The block of the blob experiment takes the
    two first-order derivatives (``order=1, first_order=1``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, order: int = 1, first_order: int = 0,
                 sigma: float = 1.0, pose_width: int = 16, pose: Literal["location", "channel"] = "location",
                 residual: bool = False, bias: bool = True) -> None:
        super().__init__()
        if not 0 <= first_order <= order:
            raise ValueError(f"first_order must lie in 0..order ({order}), got {first_order!r}")
        if pose not in ("location", "channel"):
            raise ValueError(f"pose must be 'location' (one angle per pixel) or 'channel' (one per input channel "
                             f"and pixel), got {pose!r}")
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual block needs in_channels == out_channels, got {in_channels} and "
                             f"{out_channels}")
        basis = gaussian_derivative_basis(order, sigma, dtype=torch.get_default_dtype())
        self._keep = [f for f, n in enumerate(basis.total_orders) if n >= first_order]
        self.order, self.residual, self.pose_kind = order, residual, pose
        self.labels = tuple(basis.labels[f] for f in self._keep)
        self.static = BasisConv2d(in_channels, out_channels, basis.filters[self._keep], bias=bias)
        frames = in_channels * len(self._keep)
        outputs = 1 if pose == "location" else in_channels
        self.pose_net = nn.Sequential(
            nn.Conv2d(frames, pose_width, 3, padding=1), nn.Tanh(),
            nn.Conv2d(pose_width, pose_width, 3, padding=1), nn.Tanh(),
            nn.Conv2d(pose_width, outputs, 3, padding=1),
        )
        constant, frequencies, table = _harmonic_steering(order, tuple(self._keep))
        self._constant = constant
        self.register_buffer("frequencies", torch.tensor(frequencies, dtype=torch.get_default_dtype()),
                             persistent=False)
        self.register_buffer("harmonic_table", torch.tensor(table, dtype=torch.get_default_dtype()),
                             persistent=False)

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
        theta = self.pose_net(phi.flatten(1, 2))
        n, c, f, h, w = phi.shape
        waves = self._harmonics(theta)  # (N, P, K, H, W)
        if self.pose_kind == "location":
            # one pose for all channels: contract phi with the canonical weights first, (N, K * O, H, W), then
            # weigh the K harmonic parts by the pose's cos(m theta) / sin(m theta)
            weight = torch.einsum("ocg,kgf->kocf", self.static.alpha, self.harmonic_table)
            parts = F.conv2d(phi.reshape(n, c * f, h, w), weight.reshape(-1, c * f, 1, 1))
            out = (parts.view(n, waves.shape[2], -1, h, w) * waves.view(n, -1, 1, h, w)).sum(1)
        else:
            # a pose per channel: weigh each channel's responses by its harmonics, then one 1x1 contraction
            weight = torch.einsum("ocg,kgf->ockf", self.static.alpha, self.harmonic_table)
            weighed = waves.unsqueeze(3) * phi.unsqueeze(2)  # (N, C, K, F, H, W)
            out = F.conv2d(weighed.reshape(n, -1, h, w), weight.reshape(weight.shape[0], -1, 1, 1))
        if self.static.bias is not None:
            out = out + self.static.bias.view(1, -1, 1, 1)
        if self.residual:
            out = out + x
        return (out, theta) if return_pose else out

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
