"""The spline figure helpers draw what they are given and reject malformed input with clear messages."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from cnnlens.spline._figures import (
    histogram_overlap,
    plot_bimodality,
    plot_lambda_sweep,
    plot_neighbor_grid,
    plot_region_slice,
    plot_templates,
    region_ids_from_codes,
)


def _renders(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_templates_titles_carry_inner_products(channels: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(channels, 8, 8)
    templates = torch.randn(3, channels, 8, 8)
    fig = plot_templates(x, templates, classes=[0, 3, 7], biases=torch.tensor([0.5, -1.0, 2.0]), title="digit")
    _renders(fig)
    axes = fig.axes
    assert len(axes) == 4 and axes[0].get_title() == "input x"
    for ax, c, template in zip(axes[1:], (0, 3, 7), templates, strict=True):
        expected = float((template.double() * x.double()).sum())
        assert ax.get_title().startswith(f"A[x]_'{c}'\n<A,x>={expected:.3g}")
    if channels == 1:  # diverging map centred on zero
        low, high = axes[1].images[0].get_clim()
        assert low == -high


def test_plot_templates_bad_input() -> None:
    with pytest.raises(ValueError, match=r"templates must have shape \(C', \*x.shape\) = \(C', 1, 8, 8\); received"):
        plot_templates(torch.rand(1, 8, 8), torch.rand(3, 1, 7, 8))
    with pytest.raises(ValueError, match="classes has 2 entries for 3 templates"):
        plot_templates(torch.rand(1, 8, 8), torch.rand(3, 1, 8, 8), classes=[0, 1])
    with pytest.raises(TypeError, match="expects tensors x and templates; received ndarray"):
        plot_templates(np.zeros((8, 8)), torch.rand(1, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W\), \(1, H, W\) or \(3, H, W\); received shape \(2, 8, 8\)"):
        plot_templates(torch.rand(2, 8, 8), torch.rand(1, 2, 8, 8))


def test_histogram_overlap_bounds() -> None:
    rng = np.random.default_rng(0)
    same = rng.normal(size=2000)
    assert histogram_overlap(same, same) == pytest.approx(1.0)
    assert histogram_overlap(rng.normal(-10, 1, 500), rng.normal(10, 1, 500)) == 0.0
    partial = histogram_overlap(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000), bins=40)
    assert 0.4 < partial < 0.8  # two unit normals one std apart overlap by 2*Phi(-1/2) = 0.617
    with pytest.raises(ValueError, match="two non-empty samples; received sizes 0 and 3"):
        histogram_overlap(np.array([]), np.ones(3))


def test_plot_bimodality_and_lambda_sweep_render() -> None:
    rng = np.random.default_rng(1)
    fig = plot_bimodality({"<A,x>": (rng.normal(5, 1, 100), rng.normal(-3, 1, 900)),
                           "cos": (rng.uniform(0, 1, 100), rng.uniform(-1, 0, 900))}, title="t")
    _renders(fig)
    assert [ax.get_xlabel() for ax in fig.axes] == ["<A,x>", "cos"]
    assert fig.axes[0].get_title() == "overlap 0.000"
    with pytest.raises(ValueError, match="at least one panel"):
        plot_bimodality({})
    acc = rng.uniform(0.9, 1.0, (4, 3))
    fig = plot_lambda_sweep([0, 0.01, 0.1, 1], acc, curves={"lambda 0": [0.5, 0.9], "lambda 1": [0.6, 0.95]})
    _renders(fig)
    mean_line = fig.axes[0].lines[0]
    np.testing.assert_allclose(mean_line.get_ydata(), acc.mean(axis=1))
    with pytest.raises(ValueError, match=r"shape \(len\(lambdas\), seeds\) = \(3, S\); received \(4, 3\)"):
        plot_lambda_sweep([0, 1, 2], acc)


def test_plot_neighbor_grid_frames_by_class() -> None:
    queries = torch.rand(2, 1, 6, 6)
    neighbors = {"relu_0": torch.rand(2, 15, 1, 6, 6), "relu_1": torch.rand(2, 3, 1, 6, 6)}
    labels = {"relu_0": torch.zeros(2, 15, dtype=torch.long), "relu_1": torch.ones(2, 3, dtype=torch.long)}
    fig = plot_neighbor_grid(queries, neighbors, query_labels=torch.zeros(2, dtype=torch.long),
                             neighbor_labels=labels)
    _renders(fig)
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == "relu_0"
    mosaic = fig.axes[1].images[0].get_array()
    assert mosaic.shape == (4 * 8, 4 * 8, 3)
    assert tuple(mosaic[0, 8]) == (0.85, 0.1, 0.1)  # first neighbour of relu_1: other class -> red frame
    assert tuple(fig.axes[0].images[0].get_array()[0, 8]) == (0.1, 0.65, 0.1)  # same class -> green
    with pytest.raises(ValueError, match=r"neighbors\['a'\] must have shape \(Nq=2, k <= 15, C, H, W\)"):
        plot_neighbor_grid(queries, {"a": torch.rand(2, 16, 1, 6, 6)})


def test_region_ids_and_slice() -> None:
    codes = [torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]]), torch.tensor([[2], [2], [2], [3]])]
    ids = region_ids_from_codes(codes)
    assert ids.tolist() == [0, 0, 1, 2]  # equal iff every layer's code is equal, numbered by first appearance
    grid = np.array([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
    fig = plot_region_slice(grid, anchors={"a '3'": (0.1, 0.1)})
    _renders(fig)
    assert fig.axes[0].get_title() == "3 regions in the slice"
    rgb = fig.axes[0].images[0].get_array()
    assert (rgb[0, 1] == 0).all()  # boundary pixels drawn black
    plain = plot_region_slice(grid, boundaries=False).axes[0].images[0].get_array()
    assert (plain[0, 1] != 0).any() and np.array_equal(plain[0, 0], plain[0, 1])  # same region, same colour
    with pytest.raises(ValueError, match="region_ids must be a 2D integer array"):
        plot_region_slice(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least one code tensor"):
        region_ids_from_codes([])
