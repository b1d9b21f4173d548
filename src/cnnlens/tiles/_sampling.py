"""Labelled inputs of ``X^Ibar_{m,n}`` (Def. 3.6 of 002): tiles planted on backgrounds, ambiguous draws rejected.

A draw picks the label ``j`` (labels are balanced), a tile ``T = (t, eps)`` of image ``I_j`` uniformly, a window
uniformly among the ``(m - k + 1)(n - l + 1)`` positions and a background; it writes ``t + delta`` on the tile's
support (pixels outside the support keep the background, as in Fig. 1 of 002; ``fill="window"`` writes the whole
``k x l`` matrix instead, as the experiments of sec. 6 do), where the perturbation ``delta``
has L1 norm ``rho = perturbation * eps * U``, ``U ~ U[0, 1)``, a random sign pattern and Dirichlet-distributed
magnitudes, and the result is clipped to ``[0, 1]`` (clipping never increases the distance to ``t``). The planted
window is then within ``eps`` of ``T`` and the input lies in ``X^{I_j}``. The input is kept only if it contains no
other image (it may contain a second tile of ``I_j``): its label is recomputed from the stored float32 values by
:func:`cnnlens.tiles.class_labels`, so every label is exact. Everything is drawn from one seeded generator.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import ArrayDataset
from ._detectors import membership
from ._model import FeatureTile, ImageClass, _describe

__all__ = ["TileDataset", "plant", "sample"]


@dataclass(eq=False, repr=False)
class TileDataset(ArrayDataset):
    """Inputs of ``X^Ibar`` with their labels, as a :class:`cnnlens.data.ArrayDataset` (``images`` float32 of
    shape ``(N, 1, m, n)``), plus what was planted where.

    Attributes
    ----------
    tile_ids : Tensor
        int64 ``(N,)``: index of the planted tile in ``image_class.tiles`` (the flat tile order).
    positions : Tensor
        int64 ``(N, 2)``: top-left pixel ``(i, j)`` of the planted tile.
    class_names : tuple of str
        The image names, one per label.
    """

    tile_ids: Tensor = None  # type: ignore[assignment]
    positions: Tensor = None  # type: ignore[assignment]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.labels.shape[0] if isinstance(self.labels, Tensor) else -1
        if not isinstance(self.tile_ids, Tensor) or tuple(self.tile_ids.shape) != (n,):
            raise ValueError(f"tile_ids must be an int64 tensor of shape ({n},); received {_describe(self.tile_ids)}.")
        if not isinstance(self.positions, Tensor) or tuple(self.positions.shape) != (n, 2):
            raise ValueError(
                f"positions must be an int64 tensor of shape ({n}, 2); received {_describe(self.positions)}."
            )
        super().__post_init__()


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f"size must be a positive int m or a pair (m, n); received {size!r}.")
    return int(pair[0]), int(pair[1])


def plant(
    x: Tensor,
    tile: FeatureTile,
    positions: Tensor | tuple[int, int],
    *,
    perturbation: float = 0.0,
    generator: torch.Generator | None = None,
    fill: str = "support",
) -> Tensor:
    """Write a (perturbed) copy of ``tile`` into each input, at the given top-left pixels.

    Parameters
    ----------
    x : Tensor of shape (N, m, n)
        Backgrounds (not modified; a float64 copy is returned).
    tile : FeatureTile
    positions : int64 Tensor of shape (N, 2), or one pair (i, j) for all inputs
    perturbation : float in [0, 1]
        L1 size of the perturbation as a fraction of ``eps`` (drawn as ``perturbation * eps * U``); the planted
        window is at distance ``<= perturbation * eps`` from the tile.
    generator : torch.Generator, optional
        Source of randomness of the perturbation (needed when ``perturbation > 0``).
    fill : "support" or "window"
        Write only the support pixels (the rest keeps the background, Fig. 1 of 002), or the whole ``k x l``
        matrix ``t`` (the window is replaced by the tile, as in the Fashion-MNIST experiment of sec. 6.2).

    Returns
    -------
    Tensor
        float64 of shape ``(N, m, n)``.
    """
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(f"plant needs backgrounds of shape (N, m, n); received {_describe(x)}.")
    if not 0.0 <= perturbation <= 1.0:
        raise ValueError(f"perturbation must lie in [0, 1] (a fraction of eps); received {perturbation}.")
    out = x.to(torch.float64).clone()
    count, (m, n), (k, l) = out.shape[0], tuple(out.shape[1:]), tile.shape
    pos = torch.as_tensor(positions, dtype=torch.int64).reshape(-1, 2).expand(count, 2)
    if count and (int(pos.min()) < 0 or int(pos[:, 0].max()) > m - k or int(pos[:, 1].max()) > n - l):
        raise ValueError(
            f"a {k}x{l} tile needs top-left positions in [0, {m - k}] x [0, {n - l}] on {m}x{n} inputs; "
            f"received positions in [{pos.min(0).values.tolist()}, {pos.max(0).values.tolist()}]."
        )
    rows, cols = tile.support
    values = tile.support_values.expand(count, -1).clone()
    if perturbation > 0 and count:
        if generator is None:
            raise ValueError("a perturbation > 0 is random: pass a seeded torch.Generator.")
        magnitude = -torch.log1p(-torch.rand(count, rows.numel(), generator=generator, dtype=torch.float64))
        sign = torch.randint(0, 2, (count, rows.numel()), generator=generator).to(torch.float64) * 2 - 1
        radius = perturbation * tile.eps * torch.rand(count, 1, generator=generator, dtype=torch.float64)
        values = (values + radius * sign * magnitude / magnitude.sum(1, keepdim=True)).clamp(0.0, 1.0)
    if fill not in ("support", "window"):
        raise ValueError(f"fill must be 'support' or 'window'; received {fill!r}.")
    index = torch.arange(count).unsqueeze(1)
    if fill == "window":
        every_r, every_c = (v.flatten() for v in torch.meshgrid(torch.arange(k), torch.arange(l), indexing="ij"))
        out[index, pos[:, :1] + every_r, pos[:, 1:] + every_c] = tile.t[every_r, every_c]
    out[index, pos[:, :1] + rows, pos[:, 1:] + cols] = values
    return out


def _backgrounds(background: str | float | Tensor, count: int, m: int, n: int, gen: torch.Generator) -> Tensor:
    if isinstance(background, str):
        if background != "uniform":
            raise ValueError(
                f"background must be 'uniform', a grey level in [0, 1] or an (m, n) tensor; received {background!r}."
            )
        return torch.rand(count, m, n, generator=gen, dtype=torch.float64)
    if isinstance(background, Tensor):
        if tuple(background.shape) != (m, n):
            raise ValueError(f"a background tensor must have shape ({m}, {n}); received {_describe(background)}.")
        if float(background.min()) < 0 or float(background.max()) > 1:
            raise ValueError("background values must lie in [0, 1] (Def. 2.1 of 002).")
        return background.to(torch.float64).expand(count, m, n)
    if isinstance(background, int | float) and 0.0 <= float(background) <= 1.0:
        return torch.full((count, m, n), float(background), dtype=torch.float64)
    raise ValueError(
        f"background must be 'uniform', a grey level in [0, 1] or an (m, n) tensor; received {background!r}."
    )


def sample(
    image_class: ImageClass,
    n: int,
    size: int | tuple[int, int],
    *,
    background: str | float | Tensor = "uniform",
    perturbation: float = 0.5,
    seed: int = 0,
    max_tries: int = 100,
    split: str = "train",
    fill: str = "support",
) -> TileDataset:
    """Draw ``n`` labelled inputs of ``X^Ibar_{m,n}`` (Def. 3.6 of 002), balanced over the labels.

    Parameters
    ----------
    image_class : ImageClass
    n : int
        Number of inputs.
    size : int or (m, n)
        Input size; every tile must fit.
    background : "uniform", float or Tensor of shape (m, n)
        i.i.d. uniform grey levels, a constant grey level, or one fixed background for all inputs.
    perturbation : float in [0, 1]
        How far planted tiles may move from their template, as a fraction of their ``eps`` (module docstring).
    seed : int
        The draw is a deterministic function of the arguments.
    max_tries : int
        An input is redrawn while it lies in two images; after ``max_tries`` failed draws for one input the
        images are declared impossible to tell apart (ValueError naming them).
    split : str
        Stored in the data set's ``split``.
    fill : "support" or "window"
        Planted tiles replace their support pixels only, or the whole window (see :func:`plant`).

    Returns
    -------
    TileDataset
        ``images`` float32 ``(n, 1, m, n)``, ``labels`` (``class_labels(images) == labels`` exactly),
        ``tile_ids``, ``positions``.
    """
    if not isinstance(image_class, ImageClass):
        raise TypeError(f"sample needs an ImageClass; received {_describe(image_class)}.")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative int; received {n!r}.")
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"max_tries must be a positive int; received {max_tries!r}.")
    m, w = _size(size)
    image_class.check_fits((m, w))
    gen = torch.Generator().manual_seed(int(seed))
    num = image_class.num_classes
    targets = (torch.arange(n) % num)[torch.randperm(n, generator=gen)]
    flat = image_class.tiles
    counts = torch.tensor([len(im) for im in image_class.images])
    starts = torch.cumsum(counts, 0) - counts  # the flat tile order lists the tiles image by image
    images = torch.zeros(n, m, w, dtype=torch.float64)
    tile_ids = torch.zeros(n, dtype=torch.int64)
    positions = torch.zeros(n, 2, dtype=torch.int64)
    pending = torch.arange(n)
    last_found = torch.zeros(0, num, dtype=torch.bool)
    for _ in range(max_tries):
        if not pending.numel():
            break
        labels = targets[pending]
        pick = (torch.rand(pending.numel(), generator=gen, dtype=torch.float64) * counts[labels]).long()
        choice = starts[labels] + torch.minimum(pick, counts[labels] - 1)
        draws = _backgrounds(background, pending.numel(), m, w, gen).clone()
        where = torch.zeros(pending.numel(), 2, dtype=torch.int64)
        for a in torch.unique(choice).tolist():
            sel = torch.nonzero(choice == a).flatten()
            k, l = flat[a][1].shape
            pos = torch.stack([torch.randint(m - k + 1, (sel.numel(),), generator=gen),
                               torch.randint(w - l + 1, (sel.numel(),), generator=gen)], dim=1)
            draws[sel] = plant(draws[sel], flat[a][1], pos, perturbation=perturbation, generator=gen, fill=fill)
            where[sel] = pos
        draws = draws.to(torch.float32).to(torch.float64)  # labels are checked on the stored values
        last_found = membership(draws, image_class)
        ok = last_found[torch.arange(pending.numel()), labels] & (last_found.sum(1) == 1)
        accepted = pending[ok]
        images[accepted], tile_ids[accepted], positions[accepted] = draws[ok], choice[ok], where[ok]
        pending, last_found = pending[~ok], last_found[~ok]
    if pending.numel():
        _raise_ambiguous(image_class, targets[pending], last_found, max_tries, (m, w))
    return TileDataset(images.to(torch.float32).unsqueeze(1), targets.clone(), num, "tiles", split,
                       tile_ids=tile_ids, positions=positions, class_names=image_class.names)


def _raise_ambiguous(
    image_class: ImageClass, labels: Tensor, found: Tensor, tries: int, size: tuple[int, int]
) -> None:
    pairs = Counter()
    for j, row in zip(labels.tolist(), found, strict=True):
        for other in torch.nonzero(row).flatten().tolist():
            if other != j:
                pairs[(j, other)] += 1
    if not pairs:
        raise ValueError(
            f"{tries} consecutive draws on {size[0]}x{size[1]} inputs did not contain the planted image: float32 "
            "rounding moved a tile planted at distance ~eps outside eps. Use perturbation < 1."
        )
    (j, other), _ = pairs.most_common(1)[0]
    names = image_class.names
    raise ValueError(
        f"images {names[j]!r} and {names[other]!r} cannot be told apart on {size[0]}x{size[1]} inputs: "
        f"{tries} consecutive draws of {names[j]!r} also contained {names[other]!r}, so they lie in two images "
        "and not in X^Ibar (Def. 3.6 of 002). Use more different tiles, smaller eps or another background."
    )
