"""Theorem 1 of 002 made constructive: one convolutional layer of 2 x 2 kernels plus fully connected layers whose
logits are exactly ``phi_{I_j}(x)`` (Lemma 5.2, Prop. 1, Def. 5.2).

Derivation (the paper's appendix B.2 is not available; this is our construction)
----------------------------------------------------------------------------------
Let ``Ibar = {I_1, ..., I_l}`` with tiles ``T_a = (t_a, eps_a)`` of sizes ``k_a x l_a``, inputs ``x in [0, 1]^{m x n}``
and ``c_1 < ... < c_L`` the distinct grey levels of the tiles on their supports.

1. **Pixel layer** (``pixels``: Conv2d(1, 1 + L, kernel 2 x 2, padding (p_h, p_w)) + ReLU). Each kernel has a single
   non-zero entry, at position (1, 1): output ``(o_1, o_2)`` reads pixel ``(o_1 + 1 - p_h, o_2 + 1 - p_w)`` (zero
   padding outside). Channel 0 computes ``sigma(x_p) = x_p`` and channel ``v`` computes ``sigma(2 x_p - 2 c_v)``,
   see :mod:`cnnlens.tiles._network`. With ``p = 1`` the output grid *is* the pixel grid (``o = p``) plus one
   padding row and column that nothing reads. A 1 x 1 kernel would do; the 2 x 2 size is the theorem's, and
   ``padding=1`` is what lets a 2 x 2 kernel read every pixel, including the last row and column.

2. **Window layer** (``windows`` + ReLU): one unit per tile ``a`` and window ``(i, j) in R^{m,n}_{k_a,l_a}``,

   .. math::

      h_{a,ij} = \\sigma\\Big(\\epsilon_a - \\sum_{(u,v) \\in \\mathrm{supp}\\,t_a}
         \\big(U_{c(t_{uv})}(i+u, j+v) - U_0(i+u, j+v) + t_{uv}\\big)\\Big)
         = \\max\\big(0, \\epsilon_a - \\underline{t_a}(x_{[i+1,i+k_a],[j+1,j+l_a]})\\big),

   i.e. weights ``-1`` on the level channel and ``+1`` on the identity channel of every support pixel, bias
   ``eps_a - sum_supp t_a``. These are the paper's interpretable hidden neurons: ``h_{a,ij} > 0`` iff window
   ``(i, j)`` holds tile ``a`` strictly within ``eps_a``.

   * ``hidden="linear"`` (the theorem as stated): Flatten + Linear, ``sum_a (m-k_a+1)(n-l_a+1)`` neurons, each
     connected to the whole pixel layer (``2 |supp t_a|`` non-zero weights).
   * ``hidden="conv"``: the same neurons with shared weights, a Conv2d(1 + L, #tiles, kernel ``K_h x K_w``) whose
     channel ``a`` is tile ``a`` padded to the largest tile size ``K`` with unsupported zeros. The pixel layer then
     uses ``p = max(1, K - k_min)`` so that every window of every tile exists; windows that reach into the padding
     are the neurons the output layer ignores. Identical logits, ``O(#tiles * (1 + L) * K_h K_w)`` instead of
     ``O(#windows * (1 + L) * m n)`` parameters (the dense layer does not fit in memory for 28 x 28 tiles on
     40 x 40 inputs).

3. **Output layer** (Linear, no ReLU): ``logit_j = sum_{a in I_j} sum_{ij} h_{a,ij} = sum_{T in I_j} phi_T(x)
   = phi_{I_j}(x)`` (Defs. 5.1-5.2): weights 0/1 (each hidden neuron feeds exactly one logit), bias 0.

Zero error (Thm. 1): if ``x in X^Ibar`` has label ``j`` then ``x`` contains no tile of another image, so every
``phi_{I_j'}(x) = 0`` (``j' != j``), while ``phi_{I_j}(x) > 0`` as soon as a window of a tile of ``I_j`` is at distance
``< eps`` (see the boundary caveat of Lemma 5.1 in :mod:`cnnlens.tiles._detectors`: at distance exactly ``eps``
all logits are 0). The argmax is ``j``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._model import ImageClass, _describe
from ._network import (
    TileNetwork,
    describe_level,
    grey_levels,
    level_index,
    pixel_weights,
    set_params,
)
from ._sampling import _size

__all__ = ["ShallowTileNet", "shallow_construction"]

#: refuse to build a dense window layer with more weights than this (float64 copy ~ 1.6 GB)
MAX_DENSE_WEIGHTS = 200_000_000


class ShallowTileNet(TileNetwork):
    """The network of Thm. 1 / Lemma 5.2 of 002 built by :func:`shallow_construction`.

    Children: ``pixels`` (Conv2d 2 x 2) -> ``pixels_relu`` -> [``flatten`` -> ``windows`` (Linear) ->
    ``windows_relu``] or [``windows`` (Conv2d) -> ``windows_relu`` -> ``flatten``] -> ``output`` (Linear).
    """

    hidden: str
    units: list[tuple[int, int, int]]

    def describe_unit(self, layer: str, unit: int) -> str:
        """What a unit of ``pixels``, ``windows`` or ``output`` computes (see the module docstring)."""
        if layer in ("pixels", "pixels_relu"):
            self._check_unit(layer, unit, 1 + self.grey_levels.numel())
            return f"pixel channel {unit}: {describe_level(self.grey_levels, unit)} at every pixel"
        if layer in ("windows", "windows_relu"):
            if self.hidden == "linear":
                self._check_unit(layer, unit, len(self.units))
                a, i, j = self.units[unit]
                k, l = self.image_class.tiles[a][1].shape
                return (f"relu(eps - t(x[{i}:{i + k}, {j}:{j + l}])): {self._tile_name(a)} in the window with "
                        f"top-left pixel ({i}, {j})")
            self._check_unit(layer, unit, len(self.image_class.tiles))
            return f"relu(eps - D_t(x)) at every window: {self._tile_name(unit)}"
        if layer == "output":
            self._check_unit(layer, unit, self.image_class.num_classes)
            return f"phi_I(x) of image {self.image_class.names[unit]!r} (Def. 5.2)"
        raise ValueError(f"layer {layer!r} has no unit description; use 'pixels', 'windows' or 'output'.")


def shallow_construction(
    image_class: ImageClass,
    size: int | tuple[int, int],
    *,
    hidden: str = "linear",
    dtype: torch.dtype = torch.float32,
) -> ShallowTileNet:
    """Build the zero-error network of Thm. 1 of 002 for ``image_class`` on ``m x n`` inputs.

    Parameters
    ----------
    image_class : ImageClass
    size : int or (m, n)
    hidden : "linear" or "conv"
        The window layer as a fully connected layer (the theorem) or as the equivalent weight-shared convolution
        (module docstring, step 2).
    dtype : torch.dtype
        Parameter dtype (the construction is computed in float64 and cast).

    Returns
    -------
    ShallowTileNet
        ``model(x)[:, j] == phi_{I_j}(x)`` for every ``x`` of shape ``(N, 1, m, n)`` with entries in ``[0, 1]``.
    """
    if not isinstance(image_class, ImageClass):
        raise TypeError(f"shallow_construction needs an ImageClass; received {_describe(image_class)}.")
    if hidden not in ("linear", "conv"):
        raise ValueError(f"hidden must be 'linear' (Thm. 1 as stated) or 'conv' (shared weights); received {hidden!r}.")
    m, n = _size(size)
    image_class.check_fits((m, n))
    flat = image_class.tiles
    levels = grey_levels(image_class)
    big_h, big_w = image_class.max_shape
    if hidden == "linear":
        pad_h = pad_w = 1
    else:
        pad_h = max(1, big_h - min(t.shape[0] for _, t in flat))
        pad_w = max(1, big_w - min(t.shape[1] for _, t in flat))
    pixels = nn.Conv2d(1, 1 + levels.numel(), 2, padding=(pad_h, pad_w), dtype=dtype)
    set_params(pixels, *pixel_weights(levels, (2, 2), (1, 1)))
    grid_h, grid_w = m + 2 * pad_h - 1, n + 2 * pad_w - 1  # pixel p sits at grid index p + pad - 1
    if hidden == "linear":
        layers, units = _dense_windows(image_class, levels, (m, n), (grid_h, grid_w), dtype)
    else:
        layers, units = _conv_windows(image_class, levels, (m, n), (grid_h, grid_w), (pad_h, pad_w), dtype)
    net = ShallowTileNet({"pixels": pixels, "pixels_relu": nn.ReLU(), **layers}, image_class, (m, n), levels)
    net.hidden = hidden
    net.units = units
    return net


def _dense_windows(
    image_class: ImageClass, levels: torch.Tensor, size: tuple[int, int], grid: tuple[int, int], dtype: torch.dtype
) -> tuple[dict[str, nn.Module], list[tuple[int, int, int]]]:
    (m, n), (grid_h, grid_w) = size, grid
    flat = image_class.tiles
    plane = grid_h * grid_w
    features = (1 + levels.numel()) * plane
    units = [(a, i, j) for a, (_, t) in enumerate(flat) for i in range(m - t.shape[0] + 1)
             for j in range(n - t.shape[1] + 1)]
    if len(units) * features > MAX_DENSE_WEIGHTS:
        raise ValueError(
            f"the fully connected window layer would hold {len(units)} x {features} = {len(units) * features:,} "
            f"weights (more than {MAX_DENSE_WEIGHTS:,}); build the same network with hidden='conv'."
        )
    weight = torch.zeros(len(units), features, dtype=torch.float64)
    bias = torch.zeros(len(units), dtype=torch.float64)
    out = torch.zeros(image_class.num_classes, len(units), dtype=torch.float64)
    start = 0
    for j_img, tile in flat:
        k, l = tile.shape
        rows, cols = tile.support
        values = tile.support_values
        ii, jj = torch.meshgrid(torch.arange(m - k + 1), torch.arange(n - l + 1), indexing="ij")
        ii, jj = ii.reshape(-1, 1), jj.reshape(-1, 1)
        ids = torch.arange(start, start + ii.shape[0]).unsqueeze(1).expand(-1, rows.numel())
        pos = (ii + rows) * grid_w + (jj + cols)  # pad = 1: grid index = pixel index
        weight.index_put_((ids, level_index(levels, values) * plane + pos), torch.tensor(-1.0, dtype=torch.float64),
                          accumulate=True)
        weight.index_put_((ids, pos), torch.tensor(1.0, dtype=torch.float64), accumulate=True)
        bias[start : start + ii.shape[0]] = tile.eps - float(values.sum())
        out[j_img, start : start + ii.shape[0]] = 1.0
        start += ii.shape[0]
    windows = nn.Linear(features, len(units), dtype=dtype)
    output = nn.Linear(len(units), image_class.num_classes, dtype=dtype)
    set_params(windows, weight, bias)
    set_params(output, out, torch.zeros(image_class.num_classes, dtype=torch.float64))
    return {"flatten": nn.Flatten(), "windows": windows, "windows_relu": nn.ReLU(), "output": output}, units


def _conv_windows(
    image_class: ImageClass,
    levels: torch.Tensor,
    size: tuple[int, int],
    grid: tuple[int, int],
    pad: tuple[int, int],
    dtype: torch.dtype,
) -> tuple[dict[str, nn.Module], list[tuple[int, int, int]]]:
    (m, n), (grid_h, grid_w), (pad_h, pad_w) = size, grid, pad
    flat = image_class.tiles
    big_h, big_w = image_class.max_shape
    weight = torch.zeros(len(flat), 1 + levels.numel(), big_h, big_w, dtype=torch.float64)
    bias = torch.zeros(len(flat), dtype=torch.float64)
    out_h, out_w = grid_h - big_h + 1, grid_w - big_w + 1
    out = torch.zeros(image_class.num_classes, len(flat), out_h, out_w, dtype=torch.float64)
    for a, (j_img, tile) in enumerate(flat):
        k, l = tile.shape
        rows, cols = tile.support
        values = tile.support_values
        weight[a, level_index(levels, values), rows, cols] -= 1.0
        weight[a, 0, rows, cols] += 1.0
        bias[a] = tile.eps - float(values.sum())
        # output (o1, o2) is the window with top-left pixel (o1 - pad_h + 1, o2 - pad_w + 1)
        out[j_img, a, pad_h - 1 : pad_h + m - k, pad_w - 1 : pad_w + n - l] = 1.0
    windows = nn.Conv2d(1 + levels.numel(), len(flat), (big_h, big_w), dtype=dtype)
    output = nn.Linear(out.shape[1] * out_h * out_w, image_class.num_classes, dtype=dtype)
    set_params(windows, weight, bias)
    set_params(output, out.reshape(image_class.num_classes, -1), torch.zeros(image_class.num_classes,
                                                                               dtype=torch.float64))
    return {"windows": windows, "windows_relu": nn.ReLU(), "flatten": nn.Flatten(), "output": output}, []
