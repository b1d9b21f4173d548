"""Anchor-position vectors and compound anchors of cascaded RECOS layers (eqs. 11-21 of 003)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.nn.models import lenet5
from cnnlens.recos import anchor_matrix, anchor_position_vectors, compound_anchors, plot_stitching
from conftest import tol


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return torch.allclose(a, b, rtol=tol(dtype), atol=tol(dtype) * scale)


def test_anchor_position_vectors_are_rows_of_A(dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3).to(dtype)
    apv = anchor_position_vectors(conv)
    a = anchor_matrix(conv)
    for n in range(a.shape[0]):
        e_n = torch.zeros(a.shape[0], dtype=dtype)
        e_n[n] = 1.0
        assert torch.equal(apv.vectors[n], e_n @ a)  # eq. 15: alpha_n^T = e_n^T A
    grid = apv.grid()
    assert grid.shape == (2, 3, 3, 4)
    assert torch.equal(grid[1, 2, 0], conv.weight.detach()[:, 1, 2, 0])
    assert anchor_position_vectors(torch.ones(5, 3)).positions == (5,)


def test_compound_anchors_of_matrices_equal_rec_ab(dtype):
    torch.manual_seed(1)
    a = torch.randn(7, 4, dtype=dtype)
    b = torch.randn(4, 3, dtype=dtype)
    ca = compound_anchors(a, b)
    expected = torch.zeros(7, 3, dtype=dtype)
    for n, l in itertools.product(range(7), range(3)):
        expected[n, l] = sum(a[n, k] * b[k, l] for k in range(4))  # c_{n,l} = alpha_n^T b_l (eq. 13)
    assert _close(ca.matrix, expected, dtype)
    assert _close(ca.rectified_matrix, expected.clamp_min(0), dtype)  # eqs. 16-17
    assert _close(ca.rectified, expected.clamp_min(0).T, dtype)
    assert ca.linear.shape == (3, 7) and ca.bias is None and ca.receptive_field == (7,)


def test_compound_anchors_of_linear_layers_compose_the_network(dtype):
    torch.manual_seed(2)
    first, second = nn.Linear(6, 5).to(dtype), nn.Linear(5, 3).to(dtype)
    ca = compound_anchors(first, second)
    x = torch.randn(8, 6, dtype=dtype)
    assert _close(x @ ca.matrix + ca.bias, second(first(x)).detach(), dtype)  # eq. 12: z = C^T x


def test_conv_cascade_by_hand(dtype):
    """c_{(p,n),l} = alpha_n^T b_{l,p} (eq. 21) and the stitched kernels, computed with explicit loops."""
    torch.manual_seed(3)
    first = nn.Conv2d(2, 3, 2, stride=2).to(dtype)
    second = nn.Conv2d(3, 2, 2).to(dtype)
    ca = compound_anchors(first, second)
    a, b = first.weight.detach(), second.weight.detach()
    assert ca.receptive_field == (4, 4) and ca.stride == (2, 2)
    linear = torch.zeros(2, 2, 4, 4, dtype=dtype)
    rectified = torch.zeros(2, 2, 4, 4, dtype=dtype)
    for l, p, q in itertools.product(range(2), range(2), range(2)):
        patch = torch.zeros(2, 2, 2, dtype=dtype)
        for k in range(3):
            patch += b[l, k, p, q] * a[k]
        assert _close(ca.per_patch[l, p * 2 + q], patch, dtype)
        linear[l, :, 2 * p:2 * p + 2, 2 * q:2 * q + 2] += patch
        rectified[l, :, 2 * p:2 * p + 2, 2 * q:2 * q + 2] += patch.clamp_min(0)
    assert _close(ca.linear, linear, dtype)
    assert _close(ca.rectified, rectified, dtype)
    assert ca.offsets.tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]
    assert ca.matrix.shape == (4 * 2 * 2 * 2, 2)  # C in R^{PN x L}


@pytest.mark.parametrize(
    "pool, field",
    [(None, 9), (2, 13), (nn.MaxPool2d(2), 13), (nn.AvgPool2d(2), 14), (nn.AvgPool2d(3, 2), 15)],
)
def test_lenet5_cascade_receptive_field_and_composition(dtype, pool, field):
    """The C1 -> C3 kernels equal the linear part of the two-layer network (no unit rectified)."""
    torch.manual_seed(4)
    model = lenet5().to(dtype)
    ca = compound_anchors(model.c1, model.c3, pool=pool)
    assert ca.receptive_field == (field, field)
    assert ca.linear.shape == (16, 1, field, field)
    x = torch.randn(3, 1, 32, 32, dtype=dtype)
    with torch.no_grad():
        model.c1.bias.add_(100.0)  # every C1 unit active: ReLU is the identity on this input
        y = model.act1(model.c1(x))
        assert bool((model.c1(x) > 0).all())
        if isinstance(pool, nn.AvgPool2d):
            y = pool(y)
        elif pool is not None:
            y = y[:, :, ::2, ::2]  # max-pool picking the top-left entry of each window = subsampling
        z = model.c3(y)
        ca = compound_anchors(model.c1, model.c3, pool=pool)
        composed = F.conv2d(x, ca.linear, ca.bias, stride=ca.stride)
    assert composed.shape == z.shape
    assert _close(composed, z, dtype)


def test_maxpool_reading_is_exact_where_top_left_wins(dtype):
    """With max-pooling, on inputs whose C1 maps peak at the top-left of every window, the network is the 13x13
    compound anchor at stride 2: built by making C1's output increase towards the top-left."""
    torch.manual_seed(5)
    model = lenet5().to(dtype)
    with torch.no_grad():
        model.c1.weight.zero_()
        model.c1.weight[:, 0, 0, 0] = torch.rand(6, dtype=dtype) + 0.5  # c1 output = w * x(top-left tap) + b
        model.c1.bias.fill_(1.0)
        ramp = torch.arange(32, dtype=dtype)
        x = (64.0 - ramp.view(-1, 1) - ramp.view(1, -1)).expand(2, 1, 32, 32) + 0.01 * torch.rand(2, 1, 32, 32)
        z = model.c3(model.s2(model.act1(model.c1(x))))
        ca = compound_anchors(model.c1, model.c3, pool=model.s2)
        composed = F.conv2d(x, ca.linear, ca.bias, stride=ca.stride)
    assert ca.receptive_field == (13, 13)
    assert _close(composed, z, dtype)


def test_cascade_errors():
    with pytest.raises(ValueError, match=r"number of anchors K of A \(its columns, 4\) must equal.*B \(its rows, 5\)"):
        compound_anchors(torch.zeros(3, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="anchor matrix of shape"):
        compound_anchors(torch.zeros(3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reads 6 channels but the first produces 4"):
        compound_anchors(nn.Conv2d(1, 4, 3), nn.Conv2d(6, 2, 3))
    with pytest.raises(TypeError, match="received Conv2d and Linear"):
        compound_anchors(nn.Conv2d(1, 4, 3), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pool applies to two convolutions only"):
        compound_anchors(nn.Linear(3, 4), nn.Linear(4, 2), pool=2)
    with pytest.raises(TypeError, match="pool must be None, a positive int"):
        compound_anchors(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3), pool="max")
    with pytest.raises(ValueError, match="without padding"):
        compound_anchors(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3), pool=nn.MaxPool2d(2, padding=1))
    with pytest.raises(TypeError, match="received Sigmoid"):
        anchor_position_vectors(nn.Sigmoid())


def test_plot_stitching_draws_the_grid():
    import matplotlib.pyplot as plt

    ca = compound_anchors(nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), pool=2)
    fig = plot_stitching(ca, anchor=3)
    assert len(fig.subfigs[0].axes) == 25 and len(fig.subfigs[1].axes) == 2
    with pytest.raises(ValueError, match=r"anchor must be in \[0, 16\), received 16"):
        plot_stitching(ca, anchor=16)
    with pytest.raises(ValueError, match="conv -> conv cascade"):
        plot_stitching(compound_anchors(torch.ones(3, 2), torch.ones(2, 4)))
    plt.close("all")
