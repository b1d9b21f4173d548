"""maso (Props. 1-4 of 000) and is_globally_convex (Thm. 2 of 000)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.spline import is_globally_convex, maso


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_linear_relu_is_two_piece_maso():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    m = maso(nn.Sequential(lin, nn.ReLU()))
    assert m.slopes.shape == (3, 2, 5) and m.num_pieces == 2
    assert torch.equal(m.slopes[:, 0], torch.zeros(3, 5, dtype=torch.float64))
    assert torch.allclose(m.slopes[:, 1], lin.weight, rtol=0, atol=1e-15)
    assert torch.equal(m.offsets[:, 0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(m.offsets[:, 1], lin.bias, rtol=0, atol=1e-15)
    alone = maso(lin)
    assert alone.num_pieces == 1 and torch.allclose(alone.slopes[:, 0], lin.weight, atol=1e-15)


@pytest.mark.parametrize("module, shape", [
    (nn.MaxPool2d(2), (2, 4, 4)),
    (nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 5, 5)),
    (nn.MaxPool1d(3, 2, 1), (2, 7)),
    (nn.AvgPool2d(2), (1, 4, 4)),
    (nn.PReLU(2), (2, 3)),
    (nn.LeakyReLU(0.2), (6,)),
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.LeakyReLU(0.1)), (2, 5, 5)),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), (1, 6, 6)),
    (nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU()), (2, 2, 2)),
])
def test_maso_evaluates_to_the_module(module, shape):
    torch.manual_seed(1)
    module = module.double().eval()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    op = maso(module, shape)
    z = torch.randn(6, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected = module(z)
    assert op(z).shape == expected.shape
    assert torch.allclose(op(z), expected, rtol=1e-12, atol=1e-12)


def test_max_pool_slopes_are_selection_vectors():
    op = maso(nn.MaxPool2d(2), (1, 4, 4))
    assert op.num_pieces == 4
    assert torch.equal(op.slopes.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    assert torch.equal(op.slopes[0].nonzero()[:, 1], torch.tensor([0, 1, 4, 5]))  # window of output (0, 0)
    assert torch.equal(op.offsets, torch.zeros(4, 4, dtype=torch.float64))


def test_maso_errors():
    with pytest.raises(TypeError, match="Hardtanh/ReLU6 are piecewise affine but not convex"):
        maso(nn.Hardtanh(), (3,))
    with pytest.raises(ValueError, match="ONE nonlinearity"):
        maso(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="maso needs in_shape for Conv2d"):
        maso(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="negative_slope 2.0 is not convex"):
        maso(nn.LeakyReLU(2.0), (3,))
    with pytest.raises(ValueError, match="training mode"):
        maso(nn.Sequential(nn.Linear(3, 3), nn.Dropout()), (3,))


def _mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        for layer in (net[2], net[4]):
            layer.weight.abs_()
    return net


def test_convexity_conditions_and_reasons():
    torch.manual_seed(2)
    net = _mlp()
    res = is_globally_convex(net)
    assert res.convex and bool(res) and "Thm. 2 of 000" in res.reason
    with torch.no_grad():
        net[4].weight[0, 0] = -0.5
    res = is_globally_convex(net)
    assert not res.convex and "linear has negative weights" in res.reason and "module '4'" in res.reason
    abs_net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)).double()
    with torch.no_grad():
        abs_net[2].weight.abs_()

    class AbsAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = abs_net

        def forward(self, x):
            return self.body(x).abs()

    res = is_globally_convex(AbsAfter(), torch.randn(2, 3, dtype=torch.float64))
    assert not res.convex and "abs is convex but not non-decreasing" in res.reason
    first_abs = nn.Sequential(nn.Linear(3, 3)).double()
    assert is_globally_convex(lambda x: first_abs(x).abs().sum(1, keepdim=True),
                              torch.randn(2, 3, dtype=torch.float64)).convex
    res = is_globally_convex(nn.Sequential(nn.Linear(3, 3), nn.Hardtanh()))
    assert not res.convex and "hardtanh is not convex" in res.reason
    leaky = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.LeakyReLU(-0.1))
    with torch.no_grad():
        leaky[2].weight.abs_()
    res = is_globally_convex(leaky)
    assert not res.convex and "negative slope is decreasing" in res.reason
    with pytest.raises(ValueError, match="needs an example input x"):
        is_globally_convex(AbsAfter())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), convex=st.booleans())
def test_convex_verdict_implies_midpoint_convexity(seed, convex):
    """When the verdict is convex, f((a + b) / 2) <= (f(a) + f(b)) / 2 holds on random pairs (a CNN with max-pool)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1),
                        nn.Flatten(), nn.Linear(4, 3)).double().eval()
    if convex:
        with torch.no_grad():
            net[3].weight.abs_()
            net[6].weight.abs_()
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64)
    res = is_globally_convex(net, x[:1])
    assert res.convex == convex or not convex
    a, b = x[:32], x[32:]
    with torch.no_grad():
        gap = (net(a) + net(b)) / 2 - net((a + b) / 2)
    if res.convex:
        assert float(gap.min()) >= -1e-12
