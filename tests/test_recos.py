"""RECOS anchors and rectified correlations (eqs. 1-10 of 003), summaries (Tables 1-2) and the cluster view."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.nn.models import lenet5, small_cnn, small_resnet
from cnnlens.recos import (
    alexnet_shaped,
    anchor_matrix,
    anchor_vectors,
    augment_patches,
    cluster_view,
    extract_patches,
    plot_image_grid,
    plot_unit_circle,
    rectified_correlations,
    summary,
)
from conftest import tol


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return torch.allclose(a, b, rtol=tol(dtype), atol=tol(dtype) * scale)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize(
    "conv_kw", [{}, {"stride": 2}, {"padding": 2}, {"dilation": 2, "padding": 1}, {"stride": (1, 2), "bias": False}]
)
def test_rectified_correlations_equal_conv_relu(dtype, augment, conv_kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 4), **conv_kw).to(dtype)
    x = torch.randn(4, 3, 11, 12, dtype=dtype)
    rc = rectified_correlations(x, conv, augment_mean=augment)
    expected = torch.relu(conv(x)).detach()
    assert rc.values.shape == expected.shape
    assert _close(rc.values, expected, dtype)
    # eq. 10: y = ||x''|| ||a''|| Rec(cos + b / (||x''|| ||a''||)) with the factors kept separately
    scale = rc.patch_norms.unsqueeze(1) * rc.anchor_norms.view(1, -1, 1, 1)
    assert _close(torch.relu(scale * rc.cosines + rc.bias.view(1, -1, 1, 1)), expected, dtype)
    assert float(rc.cosines.abs().max()) <= 1 + tol(dtype)
    assert torch.equal(rc.rectified, rc.values <= 0)
    assert rc.angles.shape == expected.shape


def test_rectified_correlations_linear(dtype):
    torch.manual_seed(1)
    layer = nn.Linear(7, 4).to(dtype)
    x = torch.randn(6, 7, dtype=dtype)
    for augment in (False, True):
        rc = rectified_correlations(x, layer, augment_mean=augment)
        assert rc.values.shape == (6, 4)
        assert _close(rc.values, torch.relu(layer(x)).detach(), dtype)


def test_augmented_anchor_reproduces_filter_response(dtype):
    """eq. 7: a'' = (sum w, w - mean(w) 1) on x' = (mu, x) gives a''^T x' = w^T x; the pattern part has zero sum."""
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3).to(dtype)
    av = anchor_vectors(conv, augment_mean=True)
    assert av.dim == 2 * 9 + 1 and av.num_anchors == 3
    w = conv.weight.detach().reshape(3, -1)
    assert _close(av.vectors[:, 0], w.sum(dim=1), dtype)
    assert float(av.vectors[:, 1:].sum(dim=1).abs().max()) < tol(dtype)
    patches = torch.randn(10, 18, dtype=dtype)
    assert _close(augment_patches(patches) @ av.vectors.T, patches @ w.T, dtype)
    assert _close(torch.linalg.vector_norm(av.unit, dim=1), torch.ones(3, dtype=dtype), dtype)
    assert av.images().shape == (3, 2, 3, 3)


def test_anchor_vectors_plain_are_filters(dtype):
    conv = nn.Conv2d(1, 6, 5).to(dtype)
    av = anchor_vectors(conv)
    assert torch.equal(av.vectors, conv.weight.detach().reshape(6, 25))
    assert torch.equal(anchor_matrix(conv), av.vectors.T)
    assert torch.equal(av.images(), conv.weight.detach())
    assert torch.equal(av.bias, conv.bias.detach())


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3),
    size=st.integers(3, 8), stride=st.integers(1, 2), pad=st.integers(0, 1), seed=st.integers(0, 10_000),
)
def test_rectified_correlations_property(k, c, h, w, size, stride, pad, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, k, (h, w), stride=stride, padding=pad).double()
    x = torch.randn(2, c, size, size + 1, dtype=torch.float64)
    rc = rectified_correlations(x, conv, augment_mean=bool(seed % 2))
    assert torch.allclose(rc.values, torch.relu(conv(x)).detach(), rtol=1e-10, atol=1e-10)


def test_extract_patches_match_unfold_order(dtype):
    conv = nn.Conv2d(2, 4, 3, stride=2).to(dtype)
    x = torch.randn(3, 2, 9, 9, dtype=dtype)
    patches, grid = extract_patches(x, conv)
    assert grid == (4, 4) and patches.shape == (3, 16, 18)
    pre = patches @ anchor_matrix(conv) + conv.bias.detach()
    assert _close(pre.transpose(1, 2).reshape(3, 4, 4, 4), conv(x).detach(), dtype)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="expects an nn.Linear or nn.Conv2d layer.*received ReLU"):
        anchor_vectors(nn.ReLU())
    with pytest.raises(TypeError, match="received MaxPool2d"):
        rectified_correlations(torch.zeros(1, 1, 8, 8), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"in_channels=3 needs inputs of shape \(B, 3, H, W\), received \(2, 1, 8"):
        rectified_correlations(torch.zeros(2, 1, 8, 8), nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match=r"patch size \(5, 5\).*does not fit into the input of spatial size \(4, 4\)"):
        rectified_correlations(torch.zeros(1, 1, 4, 4), nn.Conv2d(1, 2, 5))
    with pytest.raises(ValueError, match=r"in_features=7 needs inputs of shape \(B, 7\), received \(3, 6\)"):
        rectified_correlations(torch.zeros(3, 6), nn.Linear(7, 2))
    with pytest.raises(ValueError, match="groups=2"):
        anchor_vectors(nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        anchor_vectors(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"))


def test_summary_lenet5_matches_table_1():
    s = summary(lenet5(), (1, 32, 32))
    rows = [(u.name, u.input_dim, u.augmented, u.num_anchors) for u in s.units]
    # Table 1 of 003: C1 (5x5)+1 / 6, C3 6x5x5 / 16, C5 16x5x5 / 120, F6 120 / 84, Output 84 / 10;
    # C3 gets "+1" under the local-patch rule (documented difference from the printed table).
    assert rows == [("c1", 25, True, 6), ("c3", 150, True, 16), ("c5", 400, False, 120),
                    ("f6", 120, False, 84), ("output", 84, False, 10)]
    c1, c3 = s.units[0], s.units[1]
    assert c1.n_label == "(1 x 5 x 5) + 1" and c1.dim == 26
    assert c3.receptive_field == (14, 14) and c3.receptive_field_subsampled == (13, 13)
    assert s.units[3].receptive_field is None
    printed = summary(lenet5(), (1, 32, 32), augment_mean={"c3": False})
    assert printed.units[1].n_label == "(6 x 5 x 5)"
    assert "S^5" in s.table() and "13 x 13" in str(s)


def test_summary_alexnet_shaped_matches_table_2():
    s = summary(alexnet_shaped(device="meta"))
    got = [(u.n_label, u.num_anchors) for u in s.units]
    assert got == [
        ("(3 x 11 x 11) + 1", 96), ("(96 x 5 x 5) + 1", 256), ("(256 x 3 x 3) + 1", 384),
        ("(384 x 3 x 3) + 1", 384), ("(384 x 3 x 3) + 1", 256),
        ("9216 x 1 x 1", 4096), ("4096 x 1 x 1", 4096), ("4096 x 1 x 1", 1000),
    ]
    assert s.units[1].receptive_field == (51, 51)


def test_summary_any_model_restores_mode_and_hooks():
    model = small_resnet()
    model.train()
    s = summary(model, (1, 28, 28))
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert len(s.units) == sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    assert s.units[-1].kind == "linear"
    assert len(summary(small_cnn(), (1, 28, 28)).units) >= 2


class _FunctionalCNN(nn.Module):
    """Convolutions and a pooling written as functional calls: no Conv2d / MaxPool2d module for a hook."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 1, 3, 3))
        self.w2 = nn.Parameter(torch.randn(5, 4, 3, 3))
        self.fc = nn.Linear(5 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(F.conv2d(x, self.w1)), 2)
        return self.fc(F.relu(F.conv2d(h, self.w2, stride=1)).flatten(1))


def test_summary_reads_functional_layers_through_the_spline_trace():
    s = summary(_FunctionalCNN(), (1, 16, 16))
    assert [(u.name, u.kind, u.n_label, u.num_anchors) for u in s.units] == [
        ("", "conv", "(1 x 3 x 3) + 1", 4), ("", "conv", "(4 x 3 x 3) + 1", 5), ("fc", "linear", "125 x 1 x 1", 3)]
    assert s.units[0].input_shape == (1, 16, 16) and s.units[1].output_shape == (5, 5, 5)
    # the functional max-pool enters the receptive field: 3 + (2 - 1) * 1 + (3 - 1) * 2 = 8 (7 as subsampling)
    assert s.units[1].receptive_field == (8, 8) and s.units[1].receptive_field_subsampled == (7, 7)
    lenet = summary(lenet5(), (1, 32, 32))
    assert summary(lenet5().to("meta"), (1, 32, 32)).units == lenet.units  # shapes only, no memory


def test_summary_errors_and_hook_cleanup_on_failure():
    with pytest.raises(ValueError, match=r"pass input_shape=\(C, H, W\)"):
        summary(lenet5())
    model = lenet5()
    with pytest.raises(ValueError, match="LeNet-5 expects inputs"):
        summary(model, (1, 28, 28))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"augment_mean names layers \['nope'\]"):
        summary(lenet5(), (1, 32, 32), augment_mean={"nope": True})
    with pytest.raises(TypeError, match="summary expects an nn.Module"):
        summary("lenet5", (1, 32, 32))


def test_cluster_view_recovers_planted_clusters(dtype):
    torch.manual_seed(3)
    layer = nn.Linear(12, 4, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.linalg.qr(torch.randn(12, 4, dtype=dtype))[0].T * 3.0)
    labels = torch.arange(200) % 4
    centres = layer.weight.detach()[labels]
    patches = centres * torch.rand(200, 1, dtype=dtype).add(0.5) + 0.05 * torch.randn(200, 12, dtype=dtype)
    blank = torch.zeros(10, 12, dtype=dtype)
    opposite = -layer.weight.detach().sum(dim=0).expand(20, 12)  # negatively correlated with every anchor
    view = cluster_view(layer, torch.cat([patches, blank, opposite]))
    assert torch.equal(view.assignment[:200], labels)
    assert bool((view.assignment[200:] == -1).all())
    assert view.unassigned_share == pytest.approx(30 / 230)
    assert torch.allclose(view.share.sum() + view.unassigned_share, torch.tensor(1.0, dtype=dtype))
    assert float(view.angular_spread.max()) < 10.0
    assert float(view.centroid_angle.max()) < 3.0
    assert view.kmeans_angle is None
    with_kmeans = cluster_view(layer, torch.cat([patches, blank]), kmeans=True)
    assert float(with_kmeans.kmeans_angle.max()) < 3.0
    assert view.mean_angular_spread < 10.0


def test_cluster_view_on_conv_patches_and_errors():
    conv = nn.Conv2d(1, 6, 5)
    x = torch.rand(2, 1, 12, 12)
    patches, _ = extract_patches(x, conv)
    view = cluster_view(conv, patches.reshape(-1, 1, 5, 5), augment_mean=True)
    assert view.cosines.shape == (2 * 64, 6)
    assert float(view.share.sum()) + view.unassigned_share == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"patches must have shape \(M, 25\) or \(M, 1, 5, 5\)"):
        cluster_view(conv, torch.zeros(3, 24))


def test_figures_draw():
    fig = plot_image_grid(torch.randn(6, 1, 5, 5), titles=[str(i) for i in range(6)], title="anchors")
    assert len(fig.axes) == 6
    fig2 = plot_unit_circle(torch.tensor([0.9, 0.3, -0.5]))
    assert fig2.axes
    with pytest.raises(ValueError, match="one title per image"):
        plot_image_grid(torch.randn(3, 5, 5), titles=["a"])
    import matplotlib.pyplot as plt

    plt.close("all")


def test_conv_unfold_reference_by_hand():
    """The anchor of output channel k at position (i, j) is the patch x[:, i:i+kh, j:j+kw] (no hidden flips)."""
    conv = nn.Conv2d(1, 1, 3, bias=False).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    rc = rectified_correlations(x, conv)
    manual = torch.relu((x[0, 0, 1:4, 2:5] * conv.weight[0, 0]).sum())
    assert torch.allclose(rc.values[0, 0, 1, 2], manual.detach())
    assert torch.allclose(F.relu(conv(x))[0, 0, 1, 2], manual)
