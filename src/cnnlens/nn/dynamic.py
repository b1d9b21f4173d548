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

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .bases import gaussian_derivative_basis
from .rfconv import _BasisConvNd
from .steering import steer

__all__ = ["BasisConv2d", "DynResNet", "DynamicSteerableBlock", "StaticResidualBlock"]


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
        rotation = steer(self.order, theta)[..., self._keep, :][..., self._keep]  # (N, P, H, W, F, F)
        rotation = rotation.expand(-1, phi.shape[1], -1, -1, -1, -1)  # one pose for every channel, or its own
        steered = torch.einsum("ncyxgf,ncfyx->ncgyx", rotation, phi)
        out = torch.einsum("ocg,ncgyx->noyx", self.static.alpha, steered)
        if self.static.bias is not None:
            out = out + self.static.bias.view(1, -1, 1, 1)
        if self.residual:
            out = out + x
        return (out, theta) if return_pose else out

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
