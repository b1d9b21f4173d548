"""Figures of the spline view (000): templates (Fig. 1), bimodality (Fig. 2), orthogonality sweep (Fig. 3),
partition-distance neighbours (Fig. 4) and a 2D slice of the input-space partition.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no GUI
backend: it renders with Agg when saved), so library code never opens windows or leaks figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "histogram_overlap",
    "plot_bimodality",
    "plot_lambda_sweep",
    "plot_neighbor_grid",
    "plot_region_slice",
    "plot_templates",
    "region_ids_from_codes",
]


def _as_image(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    """An image ``(C, H, W)`` or ``(H, W)`` as a float64 array ``(H, W)`` or ``(H, W, 3)`` for imshow."""
    array = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[0] == 3:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"{what} must be an image of shape (H, W), (1, H, W) or (3, H, W); received shape {tuple(x.shape)}."
        )
    return array


def _rescale01(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def plot_templates(
    x: Tensor,
    templates: Tensor,
    *,
    classes: Sequence[int] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
    inner_products: Tensor | None = None,
    biases: Tensor | None = None,
    title: str | None = None,
) -> Figure:
    r"""Draw an input next to its signal-dependent class templates :math:`A[x]_c`, like Fig. 1 of 000.

    Each panel shows one row of :math:`A[x]` (eqs. 8-9 of 000) reshaped to the input, titled with the inner
    product :math:`\langle A[x]_c, x\rangle` of eq. 12 (and the bias :math:`B[x]_c` when given). Single-channel
    templates use a diverging colour map centred on zero (red positive, blue negative) so that the
    matched-filter reading is visible; RGB templates are min-max rescaled per template.

    Parameters
    ----------
    x : Tensor
        One input, ``(1, H, W)``, ``(3, H, W)`` or ``(H, W)``.
    templates : Tensor
        ``(C', *x.shape)``: the templates of this input, e.g. ``templates(model, x[None]).templates[0]``.
    classes : sequence of int, optional
        Class index of each template (default ``0..C'-1``).
    class_names : sequence of str, optional
        Display names indexed by class.
    inner_products : Tensor, optional
        ``(C',)``; computed as ``<templates[c], x>`` when omitted.
    biases : Tensor, optional
        ``(C',)`` biases :math:`B[x]_c`, shown in the titles when given.
    title : str, optional
        Figure title.

    Returns
    -------
    Figure
    """
    if not isinstance(x, Tensor) or not isinstance(templates, Tensor):
        raise TypeError(
            f"plot_templates expects tensors x and templates; received {type(x).__name__} and "
            f"{type(templates).__name__}."
        )
    if templates.ndim < 2 or tuple(templates.shape[1:]) != tuple(x.shape):
        raise ValueError(
            f"templates must have shape (C', *x.shape) = (C', {', '.join(map(str, x.shape))}); received "
            f"{tuple(templates.shape)}. Pass the templates of this one input (e.g. result.templates[i])."
        )
    num = templates.shape[0]
    classes = list(range(num)) if classes is None else [int(c) for c in classes]
    if len(classes) != num:
        raise ValueError(f"classes has {len(classes)} entries for {num} templates; give one class per template.")
    if inner_products is None:
        inner_products = (templates.reshape(num, -1).double() * x.reshape(1, -1).double()).sum(dim=1)
    names = [class_names[c] if class_names is not None else f"'{c}'" for c in classes]

    fig = Figure(figsize=(1.9 * (num + 1), 2.3))
    axes = fig.subplots(1, num + 1, squeeze=False)[0]
    image = _as_image(x, "x")
    axes[0].imshow(image, cmap=None if image.ndim == 3 else "gray")
    axes[0].set_title("input x", fontsize=9)
    for ax, c_index in zip(axes[1:], range(num), strict=True):
        template = _as_image(templates[c_index], "each template")
        if template.ndim == 3:
            ax.imshow(_rescale01(template))
        else:
            bound = float(np.abs(template).max()) or 1.0
            ax.imshow(template, cmap="RdBu_r", vmin=-bound, vmax=bound)
        label = f"A[x]_{names[c_index]}\n<A,x>={float(inner_products[c_index]):.3g}"
        if biases is not None:
            label += f", b={float(biases[c_index]):.3g}"
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _overlap(a: np.ndarray, b: np.ndarray, bins: np.ndarray) -> float:
    """Overlap coefficient sum_i min(p_i, q_i) of two normalised histograms on common bins (0: disjoint)."""
    p = np.histogram(a, bins=bins)[0] / max(a.size, 1)
    q = np.histogram(b, bins=bins)[0] / max(b.size, 1)
    return float(np.minimum(p, q).sum())


def histogram_overlap(correct: Tensor | np.ndarray, other: Tensor | np.ndarray, bins: int = 60) -> float:
    """Overlap coefficient of the histograms of two samples on ``bins`` common bins (0 disjoint, 1 identical).

    The bimodality measure of the Fig. 2 study of 000: the correct-class template outputs and the other-class
    ones form two modes (Prop. 5); the smaller the overlap of their histograms, the cleaner the separation.
    """
    a = np.asarray(correct, dtype=np.float64).ravel()
    b = np.asarray(other, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError(f"histogram_overlap needs two non-empty samples; received sizes {a.size} and {b.size}.")
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    return _overlap(a, b, edges)


def plot_bimodality(
    panels: Mapping[str, tuple[Tensor | np.ndarray, Tensor | np.ndarray]], *, bins: int = 60, title: str | None = None
) -> Figure:
    r"""Histograms of correct-class vs other-class template outputs, like Fig. 2 of 000.

    Parameters
    ----------
    panels : mapping of str to (correct, other)
        One panel per entry: the x-axis label (e.g. ``"<A[x]_c, x>"`` or ``"cos(A[x]_c, x)"``) and the two
        samples: values for the correct class (green, top half of eq. 12) and for the other classes (red).
    bins : int
        Number of common bins per panel.
    title : str, optional
        Figure title.
    """
    if not panels:
        raise ValueError("plot_bimodality needs at least one panel {label: (correct, other)}; received none.")
    fig = Figure(figsize=(4.2 * len(panels), 3.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, (correct, other)) in zip(axes, panels.items(), strict=True):
        a = np.asarray(correct, dtype=np.float64).ravel()
        b = np.asarray(other, dtype=np.float64).ravel()
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins)
        ax.hist(b, bins=edges, density=True, color="tab:red", alpha=0.55, label=f"other classes (n={b.size})")
        ax.hist(a, bins=edges, density=True, color="tab:green", alpha=0.55, label=f"correct class (n={a.size})")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(f"overlap {_overlap(a, b, edges):.3f}", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_lambda_sweep(
    lambdas: Sequence[float],
    accuracies: Tensor | np.ndarray,
    *,
    curves: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> Figure:
    r"""Test accuracy against the orthogonality weight :math:`\lambda` of eq. 13, like Fig. 3 of 000.

    Parameters
    ----------
    lambdas : sequence of float
        The penalty weights, one per row of ``accuracies``.
    accuracies : array ``(L, S)``
        Test accuracy of each of ``S`` seeds per :math:`\lambda`: mean (black), +-1 sample standard deviation
        (grey band) and max (blue) are drawn as in Fig. 3a.
    curves : mapping of str to sequence of float, optional
        Per-epoch curves drawn in a second panel (e.g. train error or test accuracy for lambda 0 vs 1, Fig. 3b).
    title : str, optional
        Figure title.
    """
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] != len(lambdas):
        raise ValueError(
            f"accuracies must have shape (len(lambdas), seeds) = ({len(lambdas)}, S); received {acc.shape}."
        )
    fig = Figure(figsize=(9.0 if curves else 4.6, 3.2))
    axes = fig.subplots(1, 2 if curves else 1, squeeze=False)[0]
    positions = np.arange(len(lambdas))
    mean, std = acc.mean(axis=1), acc.std(axis=1, ddof=1 if acc.shape[1] > 1 else 0)
    axes[0].fill_between(positions, mean - std, mean + std, color="0.8", label="mean +- std")
    axes[0].plot(positions, mean, "ko-", label="mean")
    axes[0].plot(positions, acc.max(axis=1), "o", color="tab:blue", label="max")
    axes[0].set_xticks(positions, [f"{lam:g}" for lam in lambdas])
    axes[0].set(xlabel="lambda (eq. 13)", ylabel="test accuracy", title=f"{acc.shape[1]} seeds per lambda")
    axes[0].legend(fontsize=7)
    if curves:
        for label, values in curves.items():
            axes[1].plot(np.arange(1, len(values) + 1), values, label=label)
        axes[1].set(xlabel="epoch", ylabel="accuracy")
        axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _tile(image: np.ndarray, frame: tuple[float, float, float] | None, pad: int) -> np.ndarray:
    """An RGB tile: the image min-max scaled, framed by a coloured (or white) border of ``pad`` pixels."""
    rgb = _rescale01(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    out = np.ones((rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad, 3))
    if frame is not None:
        out[:] = frame
    out[pad:-pad, pad:-pad] = rgb
    return out


def plot_neighbor_grid(
    queries: Tensor,
    neighbors: Mapping[str, Tensor],
    *,
    query_labels: Tensor | None = None,
    neighbor_labels: Mapping[str, Tensor] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> Figure:
    """Queries and their partition-distance nearest neighbours per layer, like Fig. 4 of 000.

    One row of panels per query and one column per layer; each panel is a ``columns x columns`` mosaic with
    the query at the top left (black frame) followed by its neighbours nearest first. With labels, a
    neighbour's frame is green when it shares the query's class and red otherwise.

    Parameters
    ----------
    queries : Tensor
        ``(Nq, C, H, W)`` query images.
    neighbors : mapping of str to Tensor
        Layer name -> ``(Nq, k, C, H, W)`` neighbour images, ``k <= columns**2 - 1``.
    query_labels : Tensor, optional
        ``(Nq,)`` labels of the queries.
    neighbor_labels : mapping of str to Tensor, optional
        Layer name -> ``(Nq, k)`` labels of the neighbours.
    columns : int
        Mosaic width (4 gives the 15 neighbours of Fig. 4).
    title : str, optional
        Figure title.
    """
    if queries.ndim != 4:
        raise ValueError(f"queries must have shape (Nq, C, H, W); received {tuple(queries.shape)}.")
    for name, images in neighbors.items():
        if images.ndim != 5 or images.shape[0] != queries.shape[0] or images.shape[1] > columns * columns - 1:
            raise ValueError(
                f"neighbors[{name!r}] must have shape (Nq={queries.shape[0]}, k <= {columns * columns - 1}, C, H, W);"
                f" received {tuple(images.shape)}."
            )
    pad = 1
    num_q, names = queries.shape[0], list(neighbors)
    fig = Figure(figsize=(2.1 * len(names), 2.2 * num_q + 0.4))
    axes = fig.subplots(num_q, len(names), squeeze=False)
    for q in range(num_q):
        for col, name in enumerate(names):
            tiles = [_tile(_as_image(queries[q], "a query"), (0.0, 0.0, 0.0), pad)]
            for j in range(neighbors[name].shape[1]):
                frame = None
                if query_labels is not None and neighbor_labels is not None:
                    same = int(neighbor_labels[name][q, j]) == int(query_labels[q])
                    frame = (0.1, 0.65, 0.1) if same else (0.85, 0.1, 0.1)
                tiles.append(_tile(_as_image(neighbors[name][q, j], "a neighbour"), frame, pad))
            blank = np.ones_like(tiles[0])
            tiles += [blank] * (columns * columns - len(tiles))
            rows = [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(columns)]
            ax = axes[q, col]
            ax.imshow(np.concatenate(rows, axis=0))
            ax.set_xticks([])
            ax.set_yticks([])
            if q == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_region_slice(
    region_ids: Tensor | np.ndarray,
    *,
    extent: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
    anchors: Mapping[str, tuple[float, float]] | None = None,
    boundaries: bool = True,
    title: str | None = None,
) -> Figure:
    """A 2D slice of input space coloured by region (one colour per distinct partition code), with boundaries.

    Parameters
    ----------
    region_ids : array ``(H, W)`` of int
        Region index of every grid point of the slice (equal index = equal codes at every layer, i.e. the same
        affine piece of the network, sec. 7 of 000).
    extent : (left, right, bottom, top)
        Slice coordinates of the grid, for the axes.
    anchors : mapping of str to (u, v), optional
        Named points to mark (e.g. the three digits spanning the slice).
    boundaries : bool
        Draw grid cells where the region changes (to the next cell right or up) in black; turn off for coarse
        grids of a fine partition, where they would cover most cells.
    title : str, optional
        Figure title.
    """
    ids = np.asarray(region_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"region_ids must be a 2D integer array (H, W); received dtype {ids.dtype} and shape {ids.shape}."
        )
    _, dense = np.unique(ids, return_inverse=True)
    dense = dense.reshape(ids.shape)
    palette = colormaps["tab20"](np.arange(20))[:, :3]
    shuffled = np.random.default_rng(0).permutation(max(int(dense.max()) + 1, 1))
    rgb = palette[shuffled[dense] % 20]
    boundary = np.zeros(ids.shape, dtype=bool)
    boundary[:-1, :] |= ids[:-1, :] != ids[1:, :]
    boundary[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    if boundaries:
        rgb[boundary] = 0.0
    fig = Figure(figsize=(5.0, 4.6))
    ax = fig.subplots()
    ax.imshow(rgb, origin="lower", extent=extent, interpolation="nearest")
    for name, (u, v) in (anchors or {}).items():
        ax.plot([u], [v], "w*", markersize=12, markeredgecolor="k")
        ax.annotate(name, (u, v), textcoords="offset points", xytext=(5, 5), color="k",
                    bbox={"boxstyle": "round", "fc": "w", "alpha": 0.8}, fontsize=8)
    ax.set_title(title or f"{int(dense.max()) + 1} regions in the slice", fontsize=9)
    fig.tight_layout()
    return fig


def region_ids_from_codes(codes: Sequence[Tensor]) -> Tensor:
    """Integer region index per sample from per-layer code tensors ``(N, ...)``: equal index iff all codes equal.

    Concatenates every layer's code of a sample into one byte string and numbers the distinct strings in order
    of first appearance, so the index is comparable only within one call.
    """
    if not codes:
        raise ValueError("region_ids_from_codes needs at least one code tensor; received none.")
    rows = np.concatenate([c.reshape(c.shape[0], -1).cpu().numpy().astype(np.int64) for c in codes], axis=1)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return torch.from_numpy(order[inverse.ravel()])
