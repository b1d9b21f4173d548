"""Drawings of RECOS objects: image grids of anchors and stitched compound anchors, and the unit circle of Fig. 3
of 003. matplotlib is imported when a function is called, not when cnnlens.recos is imported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ._cascade import CompoundAnchors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_image_grid", "plot_stitching", "plot_unit_circle"]


def plot_image_grid(
    images: Tensor,
    *,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    signed: bool = True,
    cell: float = 1.2,
) -> Figure:
    """Draw ``(M, H, W)`` or ``(M, 1, H, W)`` images (anchors, compound anchors, feature maps) as a grid.

    Parameters
    ----------
    images : Tensor
        The images; each is scaled on its own.
    titles : sequence of str, optional
        One title per image.
    ncols : int, optional
        Columns of the grid (default: up to 8).
    title : str, optional
        Figure title.
    signed : bool
        Diverging colours centred at 0 (blue negative, red positive) for anchors; grey scale otherwise.
    cell : float
        Size of one cell in inches.
    """
    import matplotlib.pyplot as plt

    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, received {type(images).__name__}")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (M, H, W) or (M, 1, H, W), received {tuple(images.shape)}")
    if titles is not None and len(titles) != images.shape[0]:
        raise ValueError(f"got {len(titles)} titles for {images.shape[0]} images; pass one title per image")
    m = images.shape[0]
    ncols = ncols or min(m, 8)
    nrows = -(-m // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + (0.4 if title else 0.0)),
                             squeeze=False)
    data = images.detach().cpu().double().numpy()
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= m:
            continue
        img = data[i]
        if signed:
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray", interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_unit_circle(cosines: Tensor, *, labels: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Fig. 3 of 003 from real vectors: an input x and anchors a_k at their true angles on the unit circle.

    The input sits at angle 0; anchor k is drawn at angle theta_k = arccos(cosines[k]) (alternately above and
    below the axis so that anchors at similar angles stay apart). The angle to x is exact; the side is not
    meaningful (in N dimensions the anchors do not share one plane). Anchors beyond 90 degrees have negative
    correlation and are rectified to zero (eq. 4): drawn dashed, grey.

    Parameters
    ----------
    cosines : Tensor
        ``(K,)`` cos(a_k, x) of unit vectors.
    labels : sequence of str, optional
        One label per anchor (default ``a1 ... aK``).
    title : str, optional
    """
    import matplotlib.pyplot as plt

    cos = torch.as_tensor(cosines).detach().cpu().double().clamp(-1, 1).numpy()
    if cos.ndim != 1:
        raise ValueError(f"cosines must have shape (K,), received {tuple(cos.shape)}")
    labels = list(labels) if labels is not None else [f"a{k + 1}" for k in range(cos.shape[0])]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="0.7", lw=1)
    ax.axvline(0, color="0.85", lw=0.8)
    ax.annotate("", xy=(1, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "k", "lw": 2})
    ax.text(1.05, 0.02, "x", fontsize=11)
    order = np.argsort(-cos)
    legend = []
    for rank, k in enumerate(order):
        theta = float(np.arccos(cos[k])) * (1 if rank % 2 == 0 else -1)
        active = cos[k] > 0
        style = {"arrowstyle": "->", "color": "tab:red" if active else "0.5", "lw": 1.5,
                 "linestyle": "-" if active else "--"}
        ax.annotate("", xy=(np.cos(theta), np.sin(theta)), xytext=(0, 0), arrowprops=style)
        ax.text(1.1 * np.cos(theta), 1.1 * np.sin(theta), labels[k], fontsize=7, color=style["color"],
                ha="center", va="center")
        legend.append(f"{labels[k]}: {np.degrees(abs(theta)):5.1f}°  Rec = {max(cos[k], 0):.2f}")
    ax.text(-1.42, -1.42, "\n".join(legend), fontsize=6.5, family="monospace", va="bottom")
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_stitching(compound: CompoundAnchors, anchor: int = 0, *, channel: int = 0) -> Figure:
    """How one compound anchor is stitched (eq. 21, Fig. 6 of 003): its P per-patch patterns alpha_n^T b_{l,p}
    on the k2 x k2 grid of first-layer units, then their sum on the receptive field (C) and the sum of the
    rectified patterns (C').

    Parameters
    ----------
    compound : CompoundAnchors
        From ``compound_anchors`` of two convolutions.
    anchor : int
        The second-layer anchor l.
    channel : int
        The input channel to draw.
    """
    import matplotlib.pyplot as plt

    if compound.per_patch.ndim != 5:
        raise ValueError("plot_stitching draws a conv -> conv cascade; this CompoundAnchors comes from matrices")
    num, p = compound.per_patch.shape[:2]
    if not 0 <= anchor < num:
        raise ValueError(f"anchor must be in [0, {num}), received {anchor}")
    rows = len(torch.unique(compound.offsets[:, 0]))  # patches are ordered row-major on the k2 x k2 grid
    cols = p // rows
    patches = compound.per_patch[anchor, :, channel].detach().cpu().double().numpy()
    lim = float(np.abs(patches).max()) or 1.0
    fig = plt.figure(figsize=(2 * cols * 0.55 + 5.0, rows * 0.55 + 0.8))
    left, right = fig.subfigures(1, 2, width_ratios=[cols * 0.55, 5.0])
    axes = left.subplots(rows, cols, squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.imshow(patches[idx], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_axis_off()
    left.suptitle(f"per-patch patterns of anchor {anchor} (eq. 21)", fontsize=8)
    ax_lin, ax_rec = right.subplots(1, 2)
    for ax, img, name in ((ax_lin, compound.linear, "stitched C"), (ax_rec, compound.rectified, "stitched C'")):
        data = img[anchor, channel].detach().cpu().double().numpy()
        lim2 = float(np.abs(data).max()) or 1.0
        ax.imshow(data, cmap="RdBu_r", vmin=-lim2, vmax=lim2, interpolation="nearest")
        ax.set_title(f"{name} ({data.shape[0]} x {data.shape[1]})", fontsize=8)
        ax.set_axis_off()
    return fig
