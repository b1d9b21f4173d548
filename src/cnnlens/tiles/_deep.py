"""Theorem 2 / Lemma 5.3 of 002 made constructive: a deep network whose layer-``s`` units compute the distances of
the ``2^s x 2^s`` sub-patches of each tile (hierarchical compositionality), with logits exactly ``phi_{I_j}(x)``.

Derivation (the paper's appendix B.3 is not available; this is our construction)
----------------------------------------------------------------------------------
Let ``K = 2^r`` be the smallest power of two (``r >= 1``) with every tile of the class at most ``K x K``. Each tile
``t_a`` (``k_a x l_a``) is padded at the bottom and right to ``K x K`` with zeros *outside its support*, which leaves
every distance unchanged. A *sub-patch of level s* of a padded tile is a block ``P = [p, p + 2^s) x [q, q + 2^s)``
with ``p, q`` multiples of ``2^s``; ``t_P`` is the tile restricted to it (support included). By Def. 5.3,

.. math::

    D_{t_P}(x)_{ij} = \\sum_{(u, v) \\in \\mathrm{supp}\\, t_P} |x_{i+u, j+v} - (t_P)_{uv}|

(``x`` zero-padded where the window leaves the image). The four children ``P_{dy,dx}`` (level ``s - 1``, offsets
``(dy, dx) 2^{s-1}``, ``dy, dx in {0, 1}``) partition ``P``, hence the recursion

.. math::

    D_{t_P}(x)_{ij} = \\sum_{dy, dx \\in \\{0,1\\}} D_{t_{P_{dy,dx}}}(x)_{i + dy 2^{s-1}, j + dx 2^{s-1}},   (*)

a convolution whose ``(2^{s-1} + 1) x (2^{s-1} + 1)`` kernel is zero except at its four corners (equivalently a
2 x 2 kernel dilated by ``2^{s-1}``; PyTorch's dilated grouped float64 convolution is pathologically slow with
several threads, so the corners are stored densely). The receptive field of a level-``s`` unit on the input is
exactly ``2^s x 2^s`` pixels.

Layers (every convolution is followed by a ReLU):

* ``level0``: Conv2d(1, 1 + L, kernel 1 x 1, zero padding ``(K - k_min, K - l_min)``): the *padding layer* of
  Thm. 2 and the pixel layer of :mod:`cnnlens.tiles._network` (``x`` and ``sigma(2x - 2c_v)``). Map index ``o``
  is pixel ``o - pad``.
* ``level1``: Conv2d(1 + L, #tiles * 4^{r-1}, kernel 2 x 2): for each 2 x 2 sub-patch, weights ``+1`` on the level
  channel and ``-1`` on the identity channel of each supported pixel, bias ``sum t_P``: the pre-activation is
  ``D_{t_P}(x) >= 0``, so the ReLU leaves it unchanged.
* ``level s`` (``2 <= s <= r``): Conv2d(#tiles * 4^{r-s+1}, #tiles * 4^{r-s}, kernel ``2^{s-1} + 1`` square,
  ``groups = #tiles * 4^{r-s}``): the recursion (*). Channels are in quadtree order, so the four children of
  channel ``g`` are channels ``4g .. 4g + 3`` of the previous level and each group sees exactly them; only four
  weights per output channel are non-zero.
* The last level (``s = r``, one channel per tile, the whole tile) uses weights ``-1`` and bias ``eps_a`` instead,
  so its units are ``sigma(eps_a - D_{t_a}(x)_{ij})``: the tile detectors of Def. 5.1.
* ``output``: Flatten + Linear summing, for each image, the detectors of its tiles over the windows that lie in
  the image (``0 <= i <= m - k_a``, ``0 <= j <= n - l_a``); windows reaching into the padding get weight 0. Logit
  ``j`` is ``phi_{I_j}(x)`` exactly and the classifier has zero error on ``X^Ibar`` as in Thm. 1.

So a level-``s`` unit of channel ``(a, P)`` at map position ``o`` is the distance between sub-patch ``P`` of tile
``a`` and the ``2^s x 2^s`` window of the (padded) input at pixel ``o - pad``: small patches (2 x 2 edges, strokes)
in early layers, whole tiles in the last one. The network has ``r + 1`` convolutional layers with receptive
fields ``1, 2, ..., 2^r`` (Lemma 5.3 counts ``r + 1`` layers with ``2^i x 2^i`` kernels, ``i = 0..r``). A
``2^s x 2^s`` kernel, as in the lemma's wording, would only add zero rows and columns and shrink the maps by
``2^s - 1`` instead of ``2^{s-1}`` (needing more padding); ours is the smallest kernel that realises (*).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._model import ImageClass, _describe
from ._network import TileNetwork, describe_level, grey_levels, level_index, pixel_weights, set_params
from ._sampling import _size

__all__ = ["DeepTileNet", "deep_construction"]


class DeepTileNet(TileNetwork):
    """The hierarchical network of Thm. 2 / Lemma 5.3 of 002 built by :func:`deep_construction`.

    Children: ``level0``, ``relu0``, ``level1``, ``relu1``, ..., ``level{r}``, ``relu{r}``, ``flatten``,
    ``output``.

    Attributes
    ----------
    depth : int
        ``r``: tiles are padded to ``2^r x 2^r``.
    padding : (int, int)
        Zero padding of the input (on every side) by ``level0``.
    """

    depth: int
    padding: tuple[int, int]
    offsets: list[Tensor]

    def patch(self, level: int, channel: int) -> tuple[int, tuple[int, int], int]:
        """``(tile index, (row, col) of the sub-patch's top-left in the padded tile, side 2^level)`` of a channel
        of ``level`` (1 <= level <= r)."""
        if not 1 <= level <= self.depth:
            raise ValueError(f"levels with sub-patch channels are 1..{self.depth}; received level {level}.")
        per_tile = 4 ** (self.depth - level)
        self._check_unit(f"level{level}", channel, len(self.image_class.tiles) * per_tile)
        row, col = (int(v) for v in self.offsets[level][channel % per_tile])
        return channel // per_tile, (row, col), 2**level

    def levels_output(self, x: Tensor) -> list[Tensor]:
        """The ReLU outputs of ``level0`` .. ``level{r}`` for inputs ``(N, 1, m, n)``: level ``1 <= s < r`` holds
        the maps ``D_{t_P}`` of all sub-patches, level ``r`` the detectors ``relu(eps - D_t)``."""
        return [out for name, out in self.activations(x) if name.startswith("relu")]

    def describe_unit(self, layer: str, unit: int) -> str:
        """What a channel of ``level{s}`` (or ``relu{s}``) or a logit of ``output`` computes."""
        if layer == "output":
            self._check_unit(layer, unit, self.image_class.num_classes)
            return f"phi_I(x) of image {self.image_class.names[unit]!r} (Def. 5.2)"
        prefix = "level" if layer.startswith("level") else "relu" if layer.startswith("relu") else ""
        if not prefix or not layer[len(prefix):].isdigit():
            raise ValueError(f"layer {layer!r} has no unit description; use 'level0'..'level{self.depth}' or 'output'.")
        level = int(layer[len(prefix):])
        if level == 0:
            self._check_unit(layer, unit, 1 + self.grey_levels.numel())
            return f"pixel channel {unit}: {describe_level(self.grey_levels, unit)} at every pixel"
        a, (row, col), side = self.patch(level, unit)
        if level == self.depth:
            return f"relu(eps - D_t(x)): detector of the whole {self._tile_name(a)} at every window"
        tile = self.image_class.tiles[a][1]
        k, l = tile.shape
        supported = row < k and col < l and bool(tile.mask[row : row + side, col : col + side].any())
        what = "" if supported else " (no support pixel: always 0)"
        return (f"D of the {side}x{side} sub-patch rows {row}..{row + side - 1}, cols {col}..{col + side - 1} of "
                f"{self._tile_name(a)} at every window{what}")


def deep_construction(
    image_class: ImageClass, size: int | tuple[int, int], *, dtype: torch.dtype = torch.float32
) -> DeepTileNet:
    """Build the hierarchical zero-error network of Thm. 2 of 002 for ``image_class`` on ``m x n`` inputs.

    Parameters
    ----------
    image_class : ImageClass
    size : int or (m, n)
    dtype : torch.dtype
        Parameter dtype (the construction is computed in float64 and cast).

    Returns
    -------
    DeepTileNet
        ``model(x)[:, j] == phi_{I_j}(x)`` for ``x`` of shape ``(N, 1, m, n)`` with entries in ``[0, 1]``; the
        level-``s`` channels compute the sub-patch distances of the module docstring.
    """
    if not isinstance(image_class, ImageClass):
        raise TypeError(f"deep_construction needs an ImageClass; received {_describe(image_class)}.")
    m, n = _size(size)
    image_class.check_fits((m, n))
    flat = image_class.tiles
    levels = grey_levels(image_class)
    big = max(image_class.max_shape)
    depth = max(1, math.ceil(math.log2(big)))
    side = 2**depth
    pad_h = side - min(t.shape[0] for _, t in flat)
    pad_w = side - min(t.shape[1] for _, t in flat)
    # offsets[s][pi]: top-left of sub-patch pi of level s in quadtree order (children of pi are 4 pi .. 4 pi + 3)
    offsets: list[Tensor] = [torch.zeros(0, 2, dtype=torch.int64)] * (depth + 1)
    offsets[depth] = torch.zeros(1, 2, dtype=torch.int64)
    for s in range(depth, 1, -1):
        steps = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]) * 2 ** (s - 1)
        offsets[s - 1] = (offsets[s].unsqueeze(1) + steps).reshape(-1, 2)
    layers: dict[str, nn.Module] = {}
    level0 = nn.Conv2d(1, 1 + levels.numel(), 1, padding=(pad_h, pad_w), dtype=dtype)
    set_params(level0, *pixel_weights(levels, (1, 1), (0, 0)))
    layers["level0"], layers["relu0"] = level0, nn.ReLU()
    layers["level1"], layers["relu1"] = _first_level(image_class, levels, offsets[1], depth, side, dtype), nn.ReLU()
    for s in range(2, depth + 1):
        groups = len(flat) * 4 ** (depth - s)
        half = 2 ** (s - 1)
        conv = nn.Conv2d(4 * groups, groups, half + 1, groups=groups, dtype=dtype)
        weight = torch.zeros(groups, 4, half + 1, half + 1, dtype=torch.float64)
        weight[:, [0, 1, 2, 3], [0, 0, half, half], [0, half, 0, half]] = 1.0  # child q at offset (dy, dx) half
        bias = torch.zeros(groups, dtype=torch.float64)
        if s == depth:
            weight, bias = -weight, torch.tensor([tile.eps for _, tile in flat], dtype=torch.float64)
        set_params(conv, weight, bias)
        layers[f"level{s}"], layers[f"relu{s}"] = conv, nn.ReLU()
    out_h, out_w = m + 2 * pad_h - side + 1, n + 2 * pad_w - side + 1
    out = torch.zeros(image_class.num_classes, len(flat), out_h, out_w, dtype=torch.float64)
    for a, (j_img, tile) in enumerate(flat):
        k, l = tile.shape
        out[j_img, a, pad_h : pad_h + m - k + 1, pad_w : pad_w + n - l + 1] = 1.0  # map index = pixel + pad
    output = nn.Linear(len(flat) * out_h * out_w, image_class.num_classes, dtype=dtype)
    set_params(output, out.reshape(image_class.num_classes, -1), torch.zeros(image_class.num_classes,
                                                                               dtype=torch.float64))
    layers["flatten"], layers["output"] = nn.Flatten(), output
    net = DeepTileNet(layers, image_class, (m, n), levels)
    net.depth, net.padding, net.offsets = depth, (pad_h, pad_w), offsets
    return net


def _first_level(
    image_class: ImageClass, levels: Tensor, offsets: Tensor, depth: int, side: int, dtype: torch.dtype
) -> nn.Conv2d:
    """Level 1: the distances of all 2 x 2 sub-patches (or, for r = 1, the detectors of 2 x 2 tiles)."""
    flat = image_class.tiles
    per_tile = offsets.shape[0]
    weight = torch.zeros(len(flat) * per_tile, 1 + levels.numel(), 2, 2, dtype=torch.float64)
    bias = torch.zeros(len(flat) * per_tile, dtype=torch.float64)
    for a, (_, tile) in enumerate(flat):
        padded = torch.zeros(side, side, dtype=torch.float64)
        support = torch.zeros(side, side, dtype=torch.bool)
        k, l = tile.shape
        padded[:k, :l], support[:k, :l] = tile.t, tile.mask
        for pi, (row, col) in enumerate(offsets.tolist()):
            g = a * per_tile + pi
            block, inside = padded[row : row + 2, col : col + 2], support[row : row + 2, col : col + 2]
            dy, dx = torch.nonzero(inside, as_tuple=True)
            weight[g, level_index(levels, block[dy, dx]), dy, dx] += 1.0
            weight[g, 0, dy, dx] -= 1.0
            bias[g] = float(block[dy, dx].sum())
    if depth == 1:
        weight, bias = -weight, torch.tensor([tile.eps for _, tile in flat], dtype=torch.float64) - bias
    conv = nn.Conv2d(1 + levels.numel(), len(flat) * per_tile, 2, dtype=dtype)
    set_params(conv, weight, bias)
    return conv
