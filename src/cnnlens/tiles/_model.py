"""The template-matching model of images of 002 (Defs. 3.1-3.6): feature tiles, images and image classes.

A *feature tile* ``T = (t, eps)`` (Def. 3.2) is a ``k x l`` matrix ``t`` with entries in ``[0, 1]`` and a
tolerance ``eps > 0``. Only the pixels of its *support* (Def. 3.1: the non-zero entries of ``t``) take part in
template matching, so that a tile can hold a non-rectangular feature. An *image* (Def. 3.5) is a finite set of
tiles, possibly of different sizes; an *image class* (Def. 3.6) is a list of images, one per label.

The membership tests of Defs. 3.4-3.6 live in :mod:`cnnlens.tiles._detectors`; this module only holds the
(validated, immutable) objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureTile", "Image", "ImageClass"]


def _describe(x: object) -> str:
    if isinstance(x, Tensor | np.ndarray):
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"an object of type {type(x).__name__}"


class FeatureTile:
    """A feature tile ``T = (t, eps)`` of Def. 3.2 of 002, with its support (Def. 3.1).

    Parameters
    ----------
    t : array_like of shape (k, l)
        The template, entries in ``[0, 1]`` (stored as float64).
    eps : float
        The tolerance, ``eps > 0``: a ``k x l`` window ``x`` matches the tile when the tile distance
        ``t(x) <= eps`` (Def. 3.4).
    mask : array_like of bool, shape (k, l), optional
        The support. By default the non-zero entries of ``t`` (Def. 3.1). The paper's white square of sec. 6.1
        is all zeros, so its Def. 3.1 support would be empty: pass ``mask=np.ones((2, 2), bool)`` to make it a
        full 2 x 2 tile.

    Raises
    ------
    ValueError
        If ``t`` is not a finite 2-D matrix with entries in ``[0, 1]``, ``eps`` is not a finite positive number,
        ``mask`` has another shape, or the support is empty.
    """

    __slots__ = ("_cols", "_eps", "_mask", "_rows", "_t")

    def __init__(self, t: Tensor | np.ndarray | Sequence[Sequence[float]], eps: float, mask: object = None) -> None:
        try:
            values = torch.as_tensor(np.asarray(t, dtype=np.float64)).clone()
        except (TypeError, ValueError) as err:
            raise TypeError(f"a feature tile needs a numeric k x l matrix t; received {_describe(t)}.") from err
        if values.ndim != 2 or values.numel() == 0:
            raise ValueError(
                f"a feature tile needs a non-empty 2-D matrix t (Def. 3.2 of 002); received shape "
                f"{tuple(values.shape)}. Pass one greyscale k x l template."
            )
        if not bool(torch.isfinite(values).all()) or float(values.min()) < 0.0 or float(values.max()) > 1.0:
            raise ValueError(
                f"tile values must lie in [0, 1] (Def. 2.1 of 002); received values in "
                f"[{float(values.min())}, {float(values.max())}]. Rescale the template, e.g. t / 255."
            )
        if isinstance(eps, bool) or not isinstance(eps, int | float | np.floating | np.integer):
            raise TypeError(f"eps must be a real number; received {_describe(eps)}.")
        if not np.isfinite(eps) or eps <= 0:
            raise ValueError(
                f"eps must be a finite number > 0 (Def. 3.2 of 002); received eps={eps}. "
                "It bounds the L1 distance between a matching window and the template."
            )
        if mask is None:
            support = values != 0
        else:
            support = torch.as_tensor(np.asarray(mask))
            if support.dtype != torch.bool:
                raise TypeError(f"mask must be a boolean matrix; received {_describe(mask)}.")
            if tuple(support.shape) != tuple(values.shape):
                raise ValueError(
                    f"mask must have the tile's shape {tuple(values.shape)}; received shape {tuple(support.shape)}."
                )
            support = support.clone()
        if not bool(support.any()):
            raise ValueError(
                "the tile's support is empty: every entry of t is 0 (Def. 3.1 of 002), so no window could be "
                "told apart from any other. Pass mask=np.ones(t.shape, bool) for an all-zero (white) tile."
            )
        self._t = values
        self._eps = float(eps)
        self._mask = support
        self._rows, self._cols = torch.nonzero(support, as_tuple=True)

    @property
    def t(self) -> Tensor:
        """The template, float64 of shape ``(k, l)`` (a copy)."""
        return self._t.clone()

    @property
    def eps(self) -> float:
        """The tolerance ``eps > 0``."""
        return self._eps

    @property
    def mask(self) -> Tensor:
        """The support as a boolean matrix of shape ``(k, l)`` (a copy)."""
        return self._mask.clone()

    @property
    def shape(self) -> tuple[int, int]:
        """``(k, l)``."""
        return int(self._t.shape[0]), int(self._t.shape[1])

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        """Row and column indices of the support, in row-major order (Def. 3.1)."""
        return self._rows.clone(), self._cols.clone()

    @property
    def support_values(self) -> Tensor:
        """``t`` on its support, float64 of shape ``(|supp t|,)``, in the order of :attr:`support`."""
        return self._t[self._rows, self._cols].clone()

    def __repr__(self) -> str:
        k, l = self.shape
        return f"FeatureTile(shape=({k}, {l}), eps={self._eps:g}, support={int(self._rows.numel())} pixels)"


@dataclass(frozen=True)
class Image:
    """An image ``I = {T_1, ..., T_q}`` (Def. 3.5 of 002): a non-empty set of feature tiles of any sizes.

    Parameters
    ----------
    tiles : sequence of FeatureTile
    name : str, optional
        A label name, e.g. ``"cat"``.
    """

    tiles: tuple[FeatureTile, ...]
    name: str = ""

    def __init__(self, tiles: Iterable[FeatureTile], name: str = "") -> None:
        items = tuple(tiles) if not isinstance(tiles, FeatureTile) else (tiles,)
        if not items:
            raise ValueError("an image needs at least one feature tile (Def. 3.5 of 002); received none.")
        for i, tile in enumerate(items):
            if not isinstance(tile, FeatureTile):
                raise TypeError(f"tile {i} of an image must be a FeatureTile; received {_describe(tile)}.")
        object.__setattr__(self, "tiles", items)
        object.__setattr__(self, "name", str(name))

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def max_shape(self) -> tuple[int, int]:
        """The largest tile height and width of the image."""
        return max(t.shape[0] for t in self.tiles), max(t.shape[1] for t in self.tiles)


class ImageClass:
    """An image class ``Ibar = {I_1, ..., I_l}`` (Def. 3.6 of 002): one image per label.

    Label ``j`` of an input is the index of the only image it contains (``X^Ibar``, see
    :func:`cnnlens.tiles.class_labels`).

    Parameters
    ----------
    images : sequence of Image
        Unnamed images are called ``"0"``, ``"1"``, ...

    Raises
    ------
    ValueError
        If there is no image, two images share a name, or two images cannot be told apart: some tile ``T_a`` of
        image ``I_j`` contains, wherever it is planted exactly, a window within ``eps_b`` of a tile ``T_b`` of
        another image ``I_j'``. Then every input made by planting ``T_a`` lies in both ``X^{I_j}`` and
        ``X^{I_j'}``, so image ``j`` can never be sampled in ``X^Ibar``.
    """

    def __init__(self, images: Iterable[Image]) -> None:
        items = list(images)
        if not items:
            raise ValueError("an image class needs at least one image (Def. 3.6 of 002); received none.")
        named = []
        for j, image in enumerate(items):
            if not isinstance(image, Image):
                raise TypeError(f"image {j} of an image class must be an Image; received {_describe(image)}.")
            named.append(image if image.name else Image(image.tiles, name=str(j)))
        names = [im.name for im in named]
        if len(set(names)) != len(names):
            raise ValueError(f"the images of an image class need distinct names; received {names}.")
        self._images = tuple(named)
        self._check_distinguishable()

    @property
    def images(self) -> tuple[Image, ...]:
        """The images ``I_1, ..., I_l``."""
        return self._images

    @property
    def names(self) -> tuple[str, ...]:
        """The label names."""
        return tuple(im.name for im in self._images)

    @property
    def num_classes(self) -> int:
        """``l``, the number of images."""
        return len(self._images)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def tiles(self) -> tuple[tuple[int, FeatureTile], ...]:
        """Every tile with the index of its image, image by image: the flat tile order used everywhere."""
        return tuple((j, tile) for j, im in enumerate(self._images) for tile in im.tiles)

    @property
    def max_shape(self) -> tuple[int, int]:
        """The largest tile height and width of the class."""
        return max(im.max_shape[0] for im in self._images), max(im.max_shape[1] for im in self._images)

    def check_fits(self, size: tuple[int, int]) -> None:
        """Raise ValueError when a tile is larger than an ``m x n`` input (Def. 3.4 needs ``k <= m, l <= n``)."""
        m, n = size
        for j, tile in self.tiles:
            k, l = tile.shape
            if k > m or l > n:
                raise ValueError(
                    f"a {k}x{l} tile of image {self._images[j].name!r} does not fit in a {m}x{n} input: every "
                    f"tile must be at most the input size (Def. 3.4 of 002). Use inputs of at least "
                    f"{self.max_shape[0]}x{self.max_shape[1]} pixels."
                )

    def _check_distinguishable(self) -> None:
        from ._detectors import distance_map  # local import: the detectors import this module

        flat = self.tiles
        shapes = sorted({tile.shape for _, tile in flat})
        for b, (jb, tile_b) in enumerate(flat):
            for shape in shapes:  # all tiles a of one shape at once, planted exactly, compared with tile_b
                group = [a for a, (ja, tile_a) in enumerate(flat) if tile_a.shape == shape and ja != jb]
                if not group or tile_b.shape[0] > shape[0] or tile_b.shape[1] > shape[1]:
                    continue
                dist = distance_map(torch.stack([flat[a][1].t for a in group]), tile_b)
                outside = distance_map(torch.stack([(~flat[a][1].mask).double() for a in group]),
                                       torch.zeros(tile_b.shape, dtype=torch.float64), mask=tile_b.mask)
                bad = (dist <= tile_b.eps) & (outside == 0)  # windows where supp(t_b) lies in supp(t_a)
                if bool(bad.any()):
                    g, i, k = (int(v) for v in torch.nonzero(bad)[0])
                    a, ja = group[g], flat[group[g]][0]
                    raise ValueError(
                        f"images {self._images[ja].name!r} and {self._images[jb].name!r} cannot be told apart: "
                        f"tile {a} (of {self._images[ja].name!r}) planted exactly always contains, at offset "
                        f"({i}, {k}), a window at distance {float(dist[g, i, k]):.6g} <= eps={tile_b.eps:g} from "
                        f"tile {b} (of {self._images[jb].name!r}), so every such input lies in two images "
                        "(Def. 3.6 of 002). Use more different tiles or smaller eps."
                    )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{im.name!r}: {len(im)} tiles" for im in self._images)
        return f"ImageClass({sizes})"
