"""Receptive-field networks: the RFNN of sec. 3.4.2 of 001, its plain-CNN twin (CNN-B) and an RFNiN (sec. 3.3.4).

Short definitions in the torchvision manner; every spatial convolution is chosen by one ``basis`` flag:

- ``"gauss"``: :class:`~cnnlens.nn.rfconv.RFConv2d` on the fixed Gaussian-derivative basis (the RFNN / RFNiN);
- ``"free"``: the same factorised layer with a learned basis (the "NiN-refactor" control of Table 2);
- ``"pixel"``: a plain ``nn.Conv2d`` with free filters of the same size (the text's CNN-B, or the NiN).

All parts are piecewise affine (convolutions, ReLU, max-pool, dropout in eval), so the spline engine reads them.
The paper's local response normalisation after each RFNN block is left out for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ._models import register_model
from .bases import ZerothOrder, kernel_size
from .rfconv import RFConv2d

__all__ = ["RFNN", "RFNiN", "cnn_b", "num_2d_filters", "rfnin", "rfnn"]

Basis = Literal["gauss", "free", "pixel"]
Schedule = Sequence[Sequence[float]]


def _spatial(cin: int, cout: int, order: int, sigmas: Sequence[float], basis: Basis,
             zeroth_order: ZerothOrder) -> nn.Module:
    if basis == "pixel":
        size = kernel_size(max(sigmas))
        return nn.Conv2d(cin, cout, size, padding=size // 2)
    if basis not in ("gauss", "free"):
        raise ValueError(f"basis must be 'gauss', 'free' or 'pixel', got {basis!r}")
    return RFConv2d(cin, cout, order, sigmas, basis=basis, zeroth_order=zeroth_order)


def _check_schedule(sigmas: Schedule) -> tuple[tuple[float, ...], ...]:
    schedule = tuple(tuple(float(s) for s in layer) for layer in sigmas)
    if not schedule or any(not layer for layer in schedule):
        raise ValueError(f"sigmas gives the scales of each basis layer, e.g. ((1.0,), (1.0,), (1.0,)); got {sigmas!r}")
    return schedule


def _pooled(size: int) -> int:
    return (size - 1) // 2 + 1  # MaxPool2d(3, stride=2, padding=1)


def num_2d_filters(model: nn.Module) -> int:
    """The "2D filters" of Table 1 of 001: basis functions of every RFConv layer (learned or fixed), plus the
    in_channels/groups x out_channels spatial kernels of every plain convolution larger than 1x1."""
    count = 0
    for module in model.modules():
        if isinstance(module, RFConv2d):
            count += module.num_basis
        elif isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            count += module.in_channels // module.groups * module.out_channels
    return count


class RFNN(nn.Module):
    """The RFNN of sec. 3.4.2 of 001 (MNIST): three basis layers, each followed by ``width`` 1x1 units that linearly
    recombine the basis responses (the alpha of eq. 23, folded into RFConv2d), ReLU, 3x3 max-pooling with stride 2
    and dropout; a linear classifier on the last maps. ``basis="pixel"`` is the text's CNN-B."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, width: int = 64, order: int = 3,
                 sigmas: Schedule = ((1.5,), (1.0,), (1.0,)), basis: Basis = "gauss", input_size: int = 28,
                 dropout: float = 0.2, dropout_hidden: float = 0.5) -> None:
        super().__init__()
        schedule = _check_schedule(sigmas)
        layers: list[nn.Module] = []
        cin, size = in_channels, input_size
        for scales in schedule:
            layers += [_spatial(cin, width, order, scales, basis, "every"), nn.ReLU(),
                       nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(dropout)]
            cin, size = width, _pooled(size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout_hidden), nn.Linear(width * size * size,
                                                                                            num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RFNiN(nn.Module):
    """A structured receptive-field Network in Network (sec. 3.3.4 of 001), sized for a CPU: per scale schedule entry
    one block [spatial basis layer -> ReLU -> 1x1 conv -> ReLU -> max-pool (not after the last)], then a 1x1
    convolution to the classes and global average pooling. ``zeroth_order="smallest"`` counts the basis as Table 1
    does (the plain Gaussian at one scale per layer)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, width: int = 32, order: int = 3,
                 sigmas: Schedule = ((1.0,), (1.0,), (1.0,)), basis: Basis = "gauss",
                 zeroth_order: ZerothOrder = "smallest", dropout: float = 0.2) -> None:
        super().__init__()
        schedule = _check_schedule(sigmas)
        layers: list[nn.Module] = []
        cin = in_channels
        for i, scales in enumerate(schedule):
            layers += [_spatial(cin, width, order, scales, basis, zeroth_order), nn.ReLU(),
                       nn.Conv2d(width, width, 1), nn.ReLU()]
            if i < len(schedule) - 1:
                layers += [nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(dropout)]
            cin = width
        layers += [nn.Conv2d(width, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("rfnn")
def rfnn(*, num_classes: int = 10, in_channels: int = 1, width: int = 64, order: int = 3,
         sigmas: Schedule = ((1.5,), (1.0,), (1.0,)), basis: Basis = "gauss", input_size: int = 28) -> RFNN:
    """The RFNN of sec. 3.4.2 (third-order basis, one scale per layer; sigma 1.5 then 1, as in the authors' code)."""
    return RFNN(num_classes, in_channels, width=width, order=order, sigmas=sigmas, basis=basis,
                input_size=input_size)


@register_model("cnn-b")
def cnn_b(*, num_classes: int = 10, in_channels: int = 1, width: int = 64, order: int = 3,
          sigmas: Schedule = ((1.5,), (1.0,), (1.0,)), input_size: int = 28) -> RFNN:
    """CNN-B of sec. 3.4.2: the RFNN's architecture with free filters of the same sizes."""
    return RFNN(num_classes, in_channels, width=width, order=order, sigmas=sigmas, basis="pixel",
                input_size=input_size)


@register_model("rfnin")
def rfnin(*, num_classes: int = 10, in_channels: int = 1, width: int = 32, order: int = 3,
          sigmas: Schedule = ((1.0,), (1.0,), (1.0,)), basis: Basis = "gauss",
          zeroth_order: ZerothOrder = "smallest") -> RFNiN:
    """An RFNiN: one scale per layer by default; pass ``sigmas=scale_schedule((1, 2, 4, 8))`` for RFNiN-Scale."""
    return RFNiN(num_classes, in_channels, width=width, order=order, sigmas=sigmas, basis=basis,
                 zeroth_order=zeroth_order)
