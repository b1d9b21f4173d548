"""Template matching and the piecewise-linear feature detectors of 002 (Defs. 3.3-3.6 and 5.1-5.3).

Everything here is computed directly (float64, one shifted slice of ``|x - c|`` added per support pixel) and
is the reference that the networks of :mod:`cnnlens.tiles._shallow` and :mod:`cnnlens.tiles._deep` are tested against.

For a tile ``T = (t, eps)`` of size ``k x l`` and an input ``x`` of size ``m x n``:

.. math::

    D_t(x)_{ij} = \\underline{t}(x_{[i+1, i+k], [j+1, j+l]})
                = \\sum_{(a, b) \\in \\mathrm{supp}(t)} |x_{i+a, j+b} - t_{ab}|           (Def. 3.3, Def. 5.3)

    \\phi_T(x) = \\sum_{i, j} \\max(0, \\epsilon - D_t(x)_{ij}),
    \\qquad \\phi_I = \\sum_{T \\in I} \\phi_T                                                (Defs. 5.1, 5.2)

and ``x`` contains ``T`` (``x in X^T_{m,n}``, Def. 3.4) when ``min_ij D_t(x)_ij <= eps``.

.. warning::
    Lemma 5.1 of 002 states ``phi_T(x) > 0 <=> x in X^T_{m,n}``. Because Def. 3.4 uses ``<= eps`` while
    ``max(0, eps - D)`` vanishes at ``D = eps``, the equivalence fails exactly on the boundary: an input whose
    best window is at distance exactly ``eps`` contains ``T`` but has ``phi_T(x) = 0``. The correct statement is
    ``phi_T(x) > 0 <=> min D_t(x) < eps``; no continuous function can be positive exactly on the closed set
    ``X^T``. The tests pin down both sides of the boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._model import FeatureTile, Image, ImageClass, _describe

#: largest number of |x - c| entries held at once (float64), bounds memory to ~64 MB
_CHUNK_ELEMENTS = 2**23

__all__ = [
    "class_labels",
    "contains",
    "contains_image",
    "distance_map",
    "in_class",
    "membership",
    "phi_class",
    "phi_image",
    "phi_tile",
    "tile_distance",
]

def _as_batch(x: Tensor | np.ndarray) -> tuple[Tensor, tuple[int, ...]]:
    """Inputs as float64 ``(N, m, n)`` and the leading shape of the result: ``(m, n) -> ()``,
    ``(N, m, n)`` and ``(N, 1, m, n)`` (network layout, one channel) ``-> (N,)``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32)):
        raise TypeError(f"inputs must be a real tensor or array; received {_describe(x)}.")
    if x.ndim == 2:
        return x.to(torch.float64).unsqueeze(0), ()
    if x.ndim == 3:
        return x.to(torch.float64), (int(x.shape[0]),)
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0].to(torch.float64), (int(x.shape[0]),)
    raise ValueError(
        f"inputs must have shape (m, n), (N, m, n) or (N, 1, m, n) (greyscale, Def. 2.1 of 002); received shape "
        f"{tuple(x.shape)}. Colour or multi-channel inputs are not part of the tile model."
    )


def _template(t: FeatureTile | Tensor | np.ndarray, mask: object) -> tuple[Tensor, Tensor]:
    """``(t, mask)`` as float64 / bool tensors for a tile or a bare matrix (mask default: the support)."""
    if isinstance(t, FeatureTile):
        if mask is not None:
            raise ValueError("pass mask only with a bare matrix t; a FeatureTile carries its own support.")
        return t.t, t.mask
    values = torch.as_tensor(np.asarray(t, dtype=np.float64))
    if values.ndim != 2:
        raise ValueError(f"t must be a 2-D matrix; received shape {tuple(values.shape)}.")
    support = values != 0 if mask is None else torch.as_tensor(np.asarray(mask))
    if support.dtype != torch.bool or support.shape != values.shape:
        raise ValueError(f"mask must be a boolean matrix of shape {tuple(values.shape)}; received {_describe(mask)}.")
    return values, support


def _check_size(k: int, l: int, m: int, n: int) -> None:
    if k > m or l > n:
        raise ValueError(
            f"a {k}x{l} tile is larger than the {m}x{n} input: template matching needs k <= m and l <= n "
            "(Defs. 3.4 and 5.3 of 002). Use larger inputs or a smaller tile."
        )


def distance_map(
    x: Tensor | np.ndarray, t: FeatureTile | Tensor | np.ndarray, *, mask: object = None
) -> Tensor:
    """The matrix of tile distances ``D_t(x)`` of Def. 5.3 of 002 (entry ``(i, j)``: Def. 3.3 on the window
    with top-left pixel ``(i, j)``).

    Parameters
    ----------
    x : Tensor of shape (m, n), (N, m, n) or (N, 1, m, n)
    t : FeatureTile or matrix of shape (k, l)
        A bare matrix may have an empty support (then ``D_t = 0``), e.g. a sub-patch of a tile.
    mask : boolean matrix of shape (k, l), optional
        Support of a bare matrix ``t`` (default: its non-zero entries, Def. 3.1).

    Returns
    -------
    Tensor
        float64 of shape ``(..., m - k + 1, n - l + 1)`` with the leading shape of ``x`` (none for one image).
    """
    xs, lead = _as_batch(x)
    values, support = _template(t, mask)
    (k, l), (m, n) = tuple(values.shape), tuple(xs.shape[1:])
    _check_size(k, l, m, n)
    # one shifted slice of |x - c| added per support pixel (a, b), in row-major support order; the batch is the
    # innermost dimension so that each slice is a few contiguous runs. With few distinct values c (quantised
    # tiles) |x - c| is computed once per value on the whole input; with many (8-bit tiles: ~200 values on a 28 x 28
    # tile) once per support pixel on its slice, which is cheaper. Both compute the same float64 numbers in the same
    # order, so the result does not depend on the path.
    grey, which = torch.unique(values[support], return_inverse=True)
    pixels = torch.nonzero(support).tolist()
    rows, cols = m - k + 1, n - l + 1
    per_value = grey.numel() * m * n <= len(pixels) * rows * cols
    out = xs.new_zeros((rows, cols, xs.shape[0]))
    step = max(1, _CHUNK_ELEMENTS // max(1, (grey.numel() if per_value else 1) * m * n))
    for start in range(0, xs.shape[0], step):
        _add_slices(out[..., start : start + step], xs[start : start + step].permute(1, 2, 0).contiguous(), grey,
                    which.tolist(), pixels, per_value=per_value)
    out = out.permute(2, 0, 1)
    return out.reshape(*lead, m - k + 1, n - l + 1)


def _add_slices(acc: Tensor, chunk: Tensor, grey: Tensor, which: list[int], pixels: list[list[int]], *,
                per_value: bool) -> None:
    """``acc[i, j, :] += sum_p |chunk[i + a_p, j + b_p, :] - grey[which_p]|`` over the support pixels ``p``.

    ``acc`` is ``(rows, cols, B)``, ``chunk`` the inputs ``(m, n, B)``; ``per_value`` computes ``|x - c|`` once per
    distinct value on the whole chunk, otherwise once per pixel on its slice (same numbers, same order).
    """
    rows, cols = acc.shape[0], acc.shape[1]
    if per_value:
        gaps = (chunk.unsqueeze(0) - grey.view(-1, 1, 1, 1)).abs()  # (L, m, n, B)
        for (a, b), v in zip(pixels, which, strict=True):
            acc += gaps[v, a : a + rows, b : b + cols]
    else:
        gap = torch.empty_like(acc)
        for (a, b), v in zip(pixels, which, strict=True):
            torch.sub(chunk[a : a + rows, b : b + cols], grey[v], out=gap)
            acc += gap.abs_()


def tile_distance(x: Tensor | np.ndarray, tile: FeatureTile) -> Tensor:
    """The tile distance ``t(x) = sum_{supp t} |x_ij - t_ij|`` of Def. 3.3 of 002 for ``k x l`` inputs.

    Parameters
    ----------
    x : Tensor of shape (k, l), (N, k, l) or (N, 1, k, l)
        Exactly the tile's size.
    tile : FeatureTile

    Returns
    -------
    Tensor
        float64 of the leading shape of ``x``.
    """
    xs, lead = _as_batch(x)
    if tuple(xs.shape[1:]) != tile.shape:
        raise ValueError(
            f"tile_distance compares a window of the tile's size {tile.shape} (Def. 3.3 of 002); received windows "
            f"of size {tuple(xs.shape[1:])}. Use distance_map for larger inputs."
        )
    rows, cols = tile.support
    return (xs[:, rows, cols] - tile.support_values).abs().sum(-1).reshape(lead)


def phi_tile(x: Tensor | np.ndarray, tile: FeatureTile) -> Tensor:
    """The feature detector ``phi_T(x) = sum_{ij} max(0, eps - D_t(x)_ij)`` of Def. 5.1 of 002 (float64)."""
    return torch.relu(tile.eps - distance_map(x, tile)).sum((-2, -1))


def phi_image(x: Tensor | np.ndarray, image: Image) -> Tensor:
    """The image detector ``phi_I(x) = sum_{T in I} phi_T(x)`` of Def. 5.2 of 002 (float64)."""
    return sum(phi_tile(x, tile) for tile in image.tiles)  # type: ignore[return-value]


def phi_class(x: Tensor | np.ndarray, image_class: ImageClass) -> Tensor:
    """``(phi_{I_1}(x), ..., phi_{I_l}(x))``, the logits the constructions of Thms. 1-2 realise, shape
    ``(..., l)`` (float64)."""
    return torch.stack([phi_image(x, im) for im in image_class.images], dim=-1)


def contains(x: Tensor | np.ndarray, tile: FeatureTile) -> Tensor:
    """Whether ``x in X^T_{m,n}`` (Def. 3.4 of 002): some window is within ``eps`` of the tile (boolean)."""
    return distance_map(x, tile).flatten(-2).amin(-1) <= tile.eps


def contains_image(x: Tensor | np.ndarray, image: Image) -> Tensor:
    """Whether ``x in X^I_{m,n}`` (Def. 3.5 of 002): ``x`` contains one of the image's tiles (boolean)."""
    found = contains(x, image.tiles[0])
    for tile in image.tiles[1:]:
        found = found | contains(x, tile)
    return found


def membership(x: Tensor | np.ndarray, image_class: ImageClass) -> Tensor:
    """Which images each input contains: boolean of shape ``(..., l)``, entry ``j`` is ``x in X^{I_j}``."""
    return torch.stack([contains_image(x, im) for im in image_class.images], dim=-1)


def class_labels(x: Tensor | np.ndarray, image_class: ImageClass) -> Tensor:
    """The label of each input in ``X^Ibar`` (Def. 3.6 of 002), ``-1`` where ``x`` contains no image or more
    than one (int64 of the leading shape of ``x``)."""
    found = membership(x, image_class)
    label = found.to(torch.int64).argmax(-1)
    return torch.where(found.sum(-1) == 1, label, torch.full_like(label, -1))


def in_class(x: Tensor | np.ndarray, image_class: ImageClass) -> Tensor:
    """Whether ``x in X^Ibar_{m,n}`` (Def. 3.6 of 002): ``x`` contains exactly one image (boolean)."""
    return membership(x, image_class).sum(-1) == 1
