"""cnnlens.spline.activations: the pre-activations whose signs (or window argmaxes) are the codes of eq. 14 of 000.

The codes of ``partition_codes`` come from a plain forward pass (ReLU codes read off the model's own output), the
pre-activations from the probe mode of the capture: two independent computations that must agree. Layer values are
also checked against forward hooks and plain PyTorch ops on the same model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from cnnlens import NotPiecewiseAffineError
from cnnlens.spline import Activations, activations, partition_codes
from test_spline_properties_nets import BLOCKS, input_for, random_net

# functional ReLU, LeakyReLU (module and functional), in-place ReLU, residuals, max-pool, clamps, maximum, abs
_ACTS = ("relu_f", "relu_method", "clamp0", "maximum0", "leaky_mod", "leaky_f", "abs", "relu_inplace", "relu_mod",
         "hardtanh_mod", "clamp2", "relu6", "prelu")
architectures = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(_ACTS)), min_size=1, max_size=6),
    st.sampled_from([1, 2]),
    st.integers(0, 10_000),
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _check_against_codes(net: nn.Module, x: torch.Tensor) -> Activations:
    acts = activations(net, x)
    codes = partition_codes(net, x)
    assert list(acts) == list(codes)
    n = x.shape[0]
    for name, value in acts.items():
        code = codes[name]
        assert acts.kinds[name] == code.kind
        if code.kind == "binary":
            assert value.shape == (n, *code.shape)
            assert torch.equal((value > 0).reshape(n, -1).long(), code.states()), name
        elif code.kind == "ternary":
            assert value.shape == (n, *code.shape)
            lo, hi = acts.bounds[name]
            states = torch.ones_like(value, dtype=torch.long).masked_fill(value <= lo, 0).masked_fill(value >= hi, 2)
            assert torch.equal(states.reshape(n, -1), code.states()), name
        else:
            assert value.shape == (n, *code.shape, code.num_states)
            assert torch.equal(value.argmax(-1).reshape(n, -1), code.states()), name
    return acts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures, dtype=st.sampled_from([torch.float32, torch.float64]), zeros=st.booleans())
def test_pre_activation_signs_are_the_partition_codes(arch, dtype, zeros):
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 3, seed, dtype)
    if zeros:  # exact zeros: ties at ReLU(0) and in flat max-pool windows
        x = torch.where(x.abs() < 0.5, torch.zeros((), dtype=dtype), x)
    _check_against_codes(net, x)


class Mixed(nn.Module):
    """Every layer kind, as modules and functional calls; the expected pre-activations are computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.leaky = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))  # in place: its pre-activation is the conv output
        p = self.pool(h)
        r = p + F.relu(self.conv2(p))  # residual with a functional ReLU
        z = self.leaky(r).flatten(1)
        y = self.fc(z)
        y = torch.maximum(y.clamp(min=0.25), -y)  # one-sided clamp, then maximum(a, b)
        return self.fc2(F.hardtanh(y, -0.5, 0.5))


def test_values_are_the_pre_activations(dtype):
    torch.manual_seed(0)
    net = Mixed().to(dtype).eval()
    x = torch.randn(4, 1, 8, 8, dtype=dtype)
    acts = _check_against_codes(net, x)
    assert list(acts) == ["act", "pool", "relu_0", "leaky", "clamp_0", "maximum_0", "hardtanh_0"]
    with torch.no_grad():  # the same quantities from plain PyTorch
        c = net.conv(x)
        p = F.max_pool2d(F.relu(c), 2)
        c2 = net.conv2(p)
        r = p + F.relu(c2)
        y = net.fc(F.leaky_relu(r, 0.1).flatten(1))
        yc = y.clamp(min=0.25)
        m = torch.maximum(yc, -y)
    torch.testing.assert_close(acts["act"], c, rtol=0, atol=0)  # the value before the in-place ReLU
    torch.testing.assert_close(acts["pool"].amax(-1), p, rtol=0, atol=0)
    assert acts["pool"].shape == (4, 3, 4, 4, 4)
    torch.testing.assert_close(acts["relu_0"], c2, rtol=0, atol=0)
    torch.testing.assert_close(acts["leaky"], r, rtol=0, atol=0)
    torch.testing.assert_close(acts["clamp_0"], y - 0.25, rtol=0, atol=0)
    torch.testing.assert_close(acts["maximum_0"], yc + y, rtol=0, atol=0)
    torch.testing.assert_close(acts["hardtanh_0"], m, rtol=0, atol=0)
    assert [float(b) for b in acts.bounds["hardtanh_0"]] == [-0.5, 0.5]
    assert acts.kinds == {"act": "binary", "pool": "argmax", "relu_0": "binary", "leaky": "binary",
                          "clamp_0": "binary", "maximum_0": "binary", "hardtanh_0": "ternary"}


def test_layers_batches_and_datasets():
    torch.manual_seed(1)
    net = Mixed().double().eval()
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    full = activations(net, x)
    some = activations(net, x, layers=["leaky", 0])
    assert list(some) == list(partition_codes(net, x, layers=["leaky", 0])) == ["act", "leaky"]
    for other in (activations(net, x, batch_size=3), activations(net, TensorDataset(x, torch.zeros(7)), batch_size=2)):
        assert list(other) == list(full)
        for name in full:
            torch.testing.assert_close(other[name], full[name], rtol=1e-12, atol=1e-12)


def test_errors_are_those_of_partition_codes():
    net = Mixed().eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"no layer named 'relu'; the model's max-affine layers are \['act', 'pool'"):
        activations(net, x, layers=["relu"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        activations(net, x, batch_size=0)
    with pytest.raises(TypeError, match="must be a floating-point tensor"):
        activations(net, torch.ones(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a Tensor .* or a sized Dataset"):
        activations(net, [x])
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm2d\) is in training mode"):
        activations(bn, x)
    with pytest.raises(NotPiecewiseAffineError, match="sigmoid"):
        activations(nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.Sigmoid()).eval(), x)
