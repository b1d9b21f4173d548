"""Helpers behind the spline experiments' figures: the independent B[x] of spline-templates
(:func:`cnnlens.testing.offset_output`) and the digit pairs of spline-regions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlens.experiments.spline_regions import _pairs
from cnnlens.spline import templates
from cnnlens.testing import offset_output

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _network(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5, 3),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics and affine parameters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_offset_output_completes_the_affine_identity(dtype: torch.dtype) -> None:
    # f(x) = <A[x], x> + J_b b: the engine's slopes plus the JVP along the offsets rebuild the output exactly
    model = _network(dtype)
    x = torch.randn(7, 1, 8, 8, dtype=dtype)
    with torch.no_grad():
        f = model(x)
    b = offset_output(model, x)
    inner = templates(model, x).inner_products
    scale = f.abs().amax(dim=1, keepdim=True)
    assert ((inner + b - f).abs() / scale).max() <= TOL[dtype]
    # and J_b b alone is not the output: the check is not vacuous
    assert ((b - f).abs() / scale).max() > 1e-2
    # the model itself is left untouched (batch-norm folding happens on a copy)
    assert model[1].running_mean.abs().sum() > 0


def test_euler_offset_output_matches_jacobian() -> None:
    model = _network(torch.float64)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda xi: model(xi[None])[0]))(x)  # (N, C, 1, 8, 8)
    slope_part = torch.einsum("ncd,nd->nc", jac.flatten(2), x.flatten(1))
    with torch.no_grad():
        expected = model(x) - slope_part
    assert torch.allclose(offset_output(model, x), expected, rtol=1e-10, atol=1e-12)


def test_region_pairs_are_same_and_different_class() -> None:
    labels = torch.arange(60) % 10
    pairs = _pairs(labels, 12)
    assert len(pairs["same"]) == len(pairs["diff"]) == 12
    assert all(labels[i] == labels[j] and i != j for i, j in pairs["same"])
    assert all(labels[i] != labels[j] for i, j in pairs["diff"])
