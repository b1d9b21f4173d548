"""Cross-checks of the RECOS cascade with the spline engine, and the helpers of the recos-* experiments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.data import ArrayDataset
from cnnlens.experiments import list_experiments
from cnnlens.experiments._recipes import Digits
from cnnlens.experiments.recos_background import OneLayerSystem, _relative_change, _responses
from cnnlens.experiments.recos_rectification import _linear_lenet5, _superposition_error
from cnnlens.nn.models import lenet5
from cnnlens.recos import compound_anchors
from cnnlens.spline import templates
from conftest import tol


@pytest.mark.parametrize("pool", [None, nn.AvgPool2d(2)])
def test_compound_anchors_equal_spline_affine_map_rows(dtype, pool):
    """Where no C1 unit is rectified, the exact affine map of C1 -> ReLU -> pool -> C3 (spline engine) has, for the
    C3 unit (l, i, j), the compound anchor c_l at offset stride * (i, j) and zeros elsewhere."""
    torch.manual_seed(0)
    model = lenet5().to(dtype).eval()
    with torch.no_grad():
        model.c1.bias.add_(50.0)
    parts = [model.c1, model.act1] + ([pool] if pool is not None else []) + [model.c3, nn.Flatten()]
    sub = nn.Sequential(*parts).eval()
    x = torch.rand(2, 1, 32, 32, dtype=dtype)
    ca = compound_anchors(model.c1, model.c3, pool=pool)
    r, s = ca.receptive_field[0], ca.stride[0]
    side = (32 - r) // s + 1
    units = [(0, 0, 0), (5, 3, 7), (15, side - 1, side - 2)]
    rows = [l * side * side + i * side + j for l, i, j in units]
    tp = templates(sub, x, classes=rows)  # the exact rows of A[x] and B[x] for these C3 units
    for u, (l, i, j) in enumerate(units):
        expected = torch.zeros(32, 32, dtype=dtype)
        expected[s * i:s * i + r, s * j:s * j + r] = ca.linear[l, 0]
        for n in range(2):
            assert torch.allclose(tp.templates[n, u, 0], expected, rtol=tol(dtype), atol=tol(dtype))
            assert torch.allclose(tp.biases[n, u], ca.bias[l], rtol=tol(dtype), atol=tol(dtype) * 100)


def test_one_layer_system_has_c3_outputs():
    one = OneLayerSystem()
    x = torch.rand(3, 1, 32, 32)
    assert one.d1(x).shape == lenet5().c3(lenet5().s2(lenet5().c1(x))).shape == (3, 16, 10, 10)
    assert one(x).shape == (3, 10)


def test_responses_read_by_the_capture_engine_equal_the_layers():
    """Layer 1 = Rec(C1 x), layer 2 = Rec(C3 S2 Rec(C1 x)), computed by hand from the modules; no hook is left."""
    torch.manual_seed(0)
    model = lenet5().eval()
    x = torch.rand(4, 1, 32, 32)
    l1, l2 = _responses(model, x)
    with torch.no_grad():
        h1 = torch.relu(model.c1(x))
        h2 = torch.relu(model.c3(model.s2(h1)))
    assert l1.shape == (4, 6, 28, 28) and l2.shape == (4, 16, 10, 10)
    assert torch.allclose(l1, h1, atol=1e-6) and torch.allclose(l2, h2, atol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    (d1,) = _responses(OneLayerSystem().eval(), x, layers=("act1",))
    assert d1.shape == (4, 16, 10, 10) and bool((d1 >= 0).all())


def test_relative_change_per_digit():
    torch.manual_seed(1)
    model = lenet5().eval()
    x = torch.rand(4, 1, 32, 32)
    assert all(bool((r == 0).all()) for r in _relative_change(model, x, x))
    y = x + 0.1 * torch.randn_like(x)
    r1, r2 = _relative_change(model, y, x)
    h1, g1 = _responses(model, y)[0], _responses(model, x)[0]
    by_hand = (h1 - g1).flatten(1).norm(dim=1) / g1.flatten(1).norm(dim=1)
    assert r1.shape == r2.shape == (4,) and torch.allclose(r1, by_hand)


def test_superposition_error_separates_affine_from_relu():
    torch.manual_seed(2)
    images = torch.rand(20, 1, 32, 32)
    data = ArrayDataset(images, torch.arange(20) % 10, 10, "random", "test")
    assert _superposition_error(_linear_lenet5().eval(), data) < 1e-5
    relu = lenet5().eval()
    with torch.no_grad():
        for layer in (relu.c1, relu.c3, relu.c5, relu.f6):
            layer.bias.normal_()
    assert _superposition_error(relu, data) > 1e-3


def test_digits_setting_names_the_data_and_the_reason():
    data = ArrayDataset(torch.zeros(10, 1, 32, 32), torch.arange(10), 10, "mnist5k", "train")
    fallback = Digits(data, data, "mnist5k: 10 training digits / 10 test digits", False,
                      "no full MNIST files in the data folder")
    text = fallback.setting("inputs centred")
    assert text.startswith("mnist5k: 10 training digits") and "no full MNIST files" in text
    assert text.endswith("; inputs centred") and "as in the paper" not in text
    subset = Digits(data, data, "mnist: 10 training digits (a class-stratified subset of 60,000)", True)
    assert "fewer training digits than MNIST's 60,000" in subset.setting()
    mnist = ArrayDataset(torch.zeros(60_000, 1, 1, 1), torch.arange(60_000) % 10, 10, "mnist", "train")
    full = Digits(mnist, data, "mnist: 60,000 training digits / 10,000 test digits", True)
    assert full.setting("inputs centred") == ("as in the paper: full MNIST (mnist: 60,000 training digits / 10,000 "
                                              "test digits); inputs centred")


def test_recos_experiments_registered():
    names = {e.name for e in list_experiments()}
    assert {"recos-polarity", "recos-rectification", "recos-background", "recos-anchors"} <= names
