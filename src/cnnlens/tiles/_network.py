"""What the hand-built networks of Thms. 1-2 of 002 share: the pixel layer and the naming of hidden units.

The pixel layer realises the identity of sec. 5.2 of 002,

.. math::

    |y - c| = \\sigma(2y - 2c) - \\sigma(y) + c \\qquad (y \\ge 0),

(for ``y >= c``: ``2y - 2c - y + c = y - c``; for ``y < c``: ``0 - y + c``), for every pixel ``y = x_p`` and
every grey level ``c`` that some tile takes on its support: channel 0 outputs ``sigma(x_p) = x_p`` (inputs lie in
``[0, 1]``) and channel ``1 + v`` outputs ``sigma(2 x_p - 2 c_v)`` for the ``v``-th distinct level ``c_v``. Any
tile distance is then an affine function of the pixel layer:

.. math::

    \\underline{t}(x_{\\text{window}}) = \\sum_{(a, b) \\in \\mathrm{supp}\\, t}
        \\big(U_{c(t_{ab})}(p_{ab}) - U_0(p_{ab}) + t_{ab}\\big),

with ``p_ab`` the pixel of the window under ``(a, b)``. The number of channels is one plus the number of distinct
grey levels of the tiles (quantising tiles to ``L`` levels bounds it by ``L + 1``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..spline import partition_codes
from ._model import ImageClass, _describe

__all__ = ["TileNetwork", "describe_unit"]


def grey_levels(image_class: ImageClass) -> Tensor:
    """The sorted distinct values (float64) the tiles take on their supports."""
    return torch.unique(torch.cat([tile.support_values for _, tile in image_class.tiles]))


def level_index(levels: Tensor, values: Tensor) -> Tensor:
    """Channel of each value in the pixel layer (``1 + position in levels``)."""
    return 1 + torch.searchsorted(levels, values)


def pixel_weights(levels: Tensor, kernel: tuple[int, int], at: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Weight ``(1 + L, 1, *kernel)`` and bias of the pixel layer, reading the pixel at kernel entry ``at``."""
    weight = torch.zeros(1 + levels.numel(), 1, *kernel, dtype=torch.float64)
    weight[0, 0, at[0], at[1]] = 1.0
    weight[1:, 0, at[0], at[1]] = 2.0
    bias = torch.cat([torch.zeros(1, dtype=torch.float64), -2.0 * levels])
    return weight, bias


def set_params(layer: nn.Conv2d | nn.Linear, weight: Tensor, bias: Tensor) -> None:
    """Copy constructed float64 parameters into ``layer`` (in its dtype)."""
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


def describe_level(levels: Tensor, channel: int) -> str:
    """What pixel-layer channel ``channel`` computes at every pixel ``x``."""
    if channel == 0:
        return "x (identity: relu(x) = x for x in [0, 1])"
    return f"relu(2x - 2c) with grey level c = {float(levels[channel - 1]):.6g} (for |x - c| = this - x + c)"


class TileNetwork(nn.Sequential, ABC):
    """A network built by hand from an image class; its logits are ``phi_{I_j}(x)`` on ``[0, 1]`` inputs.

    An ordinary :class:`torch.nn.Sequential` of Conv2d, ReLU, Flatten and Linear layers (so the spline engine and
    the training loop treat it like any network) that also knows what each hidden unit detects
    (:meth:`describe_unit`).

    Attributes
    ----------
    image_class : ImageClass
    size : (m, n)
        The input size it was built for (inputs are ``(N, 1, m, n)``).
    grey_levels : Tensor
        float64, the grey levels ``c_v`` of the pixel layer's channels ``1 + v``.
    """

    def __init__(self, layers: dict[str, nn.Module], image_class: ImageClass, size: tuple[int, int], levels: Tensor):
        super().__init__(OrderedDict(layers))
        self.image_class = image_class
        self.size = size
        self.grey_levels = levels

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, l)`` of inputs ``(N, 1, m, n)``."""
        self._check_input(x)
        return super().forward(x)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.size:
            raise ValueError(
                f"this network was built for inputs of shape (N, 1, {self.size[0]}, {self.size[1]}); received "
                f"{_describe(x)}. Rebuild it for another size."
            )

    def activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """``(name, output)`` of every layer in order, for inputs ``(N, 1, m, n)``."""
        self._check_input(x)
        for name, layer in self.named_children():
            x = layer(x)
            yield name, x

    @abstractmethod
    def describe_unit(self, layer: str, unit: int) -> str:
        """What unit (channel for convolutional layers, neuron for fully connected ones) ``unit`` of ``layer``
        computes; every construction (shallow, deep) implements it."""

    def _check_unit(self, layer: str, unit: int, count: int) -> None:
        if not 0 <= unit < count:
            raise ValueError(f"layer {layer!r} has {count} units; received unit index {unit}.")

    def _tile_name(self, a: int) -> str:
        j, tile = self.image_class.tiles[a]
        first = next(i for i, (jj, _) in enumerate(self.image_class.tiles) if jj == j)
        k, l = tile.shape
        return f"tile {a} ({k}x{l}, eps={tile.eps:g}; tile {a - first} of image {self.image_class.names[j]!r})"


def describe_unit(model: nn.Module, layer: str, unit: int) -> str:
    """What hidden unit ``unit`` of layer ``layer`` of a constructed network detects.

    Parameters
    ----------
    model : TileNetwork
        A network from :func:`shallow_construction` or :func:`deep_construction`.
    layer : str
        A child name, e.g. ``"windows"`` or ``"level2"`` (``[name for name, _ in model.named_children()]``).
    unit : int
        Channel of a convolutional layer or neuron of a fully connected layer.
    """
    if not isinstance(model, TileNetwork):
        raise TypeError(
            f"describe_unit names the units of networks built by shallow_construction / deep_construction; "
            f"received a {type(model).__name__}. Trained networks have no such names: see neuron_selectivity."
        )
    names = [name for name, _ in model.named_children()]
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; the layers are {names}.")
    return model.describe_unit(layer, unit)


def hidden_units(model: nn.Module, x: Tensor) -> int:
    """Number of hidden units of ``model`` for one input ``x[:1]``: the units of all its nonlinearity layers.

    The size measure of the constructions of Thms. 1-2 (002) against a trained network (``tiles-digits`` and
    ``benchmarks/bench_tiles.py``). The layers are those of :func:`cnnlens.spline.partition_codes` (the spline
    engine sees module and functional calls alike): every ReLU-like unit (ReLU, ``F.relu``, ``clamp(min=0)``, leaky
    ReLU, PReLU, abs, maximum) and every clamp / hardtanh unit counts once per call. Max-pool outputs do not count:
    a max-pool unit selects one of its inputs, which are already counted as the units of the layer before it, and
    the constructions have none.

    Parameters
    ----------
    model : nn.Module
        A piecewise-affine model (its train/eval mode is restored afterwards).
    x : Tensor (N, *in_shape)
        Inputs; only the first is run (converted to the model's dtype).
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"hidden_units needs a batch of inputs (N, *in_shape) with N >= 1; received {_describe(x)}.")
    param = next(model.parameters(), None)
    was_training = model.training
    model.eval()
    try:
        codes = partition_codes(model, x[:1].to(param.dtype) if param is not None else x[:1])
    finally:
        model.train(was_training)
    return sum(code.num_units for code in codes.values() if code.kind != "argmax")
