"""Cross-checks of the RECOS cascade with the spline engine, and the helpers of the recos-* experiments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.experiments import list_experiments
from cnnlens.experiments.recos_background import OneLayerSystem, _relative_change, _responses
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


def test_relative_change_and_hooks():
    model = lenet5().eval()
    x = torch.rand(4, 1, 32, 32)
    assert _relative_change(model, x, x) == (0.0, 0.0, 0.0, 0.0)
    l1, l2 = _responses(model, x)
    assert l1.shape == (4, 6, 28, 28) and l2.shape == (4, 16, 10, 10)
    assert all(not m._forward_hooks for m in model.modules())


def test_recos_experiments_registered():
    names = {e.name for e in list_experiments()}
    assert {"recos-polarity", "recos-rectification", "recos-background", "recos-anchors"} <= names


@pytest.mark.slow
def test_recos_polarity_quick_run_exact_identity(tmp_path):
    """The trained network's exact transform reproduces its accuracy and logits on reversed digits."""
    import json

    from cnnlens.experiments import run_experiment

    folder = run_experiment("recos-polarity", tmp_path, quick=True, progress=False)
    m = json.loads((folder / "metrics.json").read_text())
    assert m["acc_exact_reversed"] == m["acc_original"] and m["acc_exact_original"] == m["acc_reversed"]
    assert m["exact_prediction_agreement"] == 1.0
    assert m["exact_max_logit_gap_float64"] < 1e-10 and m["exact_mask_max_logit_gap_float64"] < 1e-10
    assert m["acc_original"] > 0.8 > m["acc_reversed"]
