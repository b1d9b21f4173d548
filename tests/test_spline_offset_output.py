"""cnnlens.testing.offset_output: J_b b from one forward-mode JVP of the plain model equals affine_map's B (eq. 9).

The two are computed independently: B by the spline engine (f(x) - A x with A from the transposed sweep), J_b b by
torch.func.jvp along the offsets of a batch-norm-folded copy of the model, with PyTorch's own derivative rules.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.spline import affine_map
from cnnlens.testing import default_tolerance, offset_output
from test_spline_properties_nets import input_for, random_net

# the positively homogeneous parts (no clamp bound): every ReLU form, leaky ReLU, PReLU, abs, maximum(x, 0 x)
_HOMOGENEOUS = ("relu_mod", "relu_f", "relu_torch", "relu_method", "clamp0", "maximum0", "leaky_mod", "leaky_f",
                "prelu", "abs", "relu_inplace")
_BLOCKS = ("conv", "bn", "act", "maxpool", "maxpool_f", "avgpool", "residual", "cat", "scale", "dropout", "branches")
architectures = st.tuples(
    st.lists(st.tuples(st.sampled_from(_BLOCKS), st.sampled_from(_HOMOGENEOUS)), min_size=1, max_size=5)
    .map(lambda blocks: [("conv", "relu_mod"), ("bn", "relu_mod"), *blocks]),  # at least one batch-norm
    st.sampled_from([1, 2]),
    st.integers(0, 10_000),
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _check(net: nn.Module, x: torch.Tensor) -> None:
    b = affine_map(net, x).B
    jb = offset_output(net, x).reshape(b.shape)
    scale = b.abs().amax(1, keepdim=True).clamp_min(1e-30)
    assert float(((jb - b).abs() / scale).max()) <= default_tolerance(x.dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures)
def test_offset_output_equals_the_engines_offset_on_random_nets_with_batch_norm(arch):
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, torch.float64)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    _check(net, input_for(net, 3, seed, torch.float64))


def test_offset_output_in_float32_and_untouched_model():
    net = random_net([("conv", "relu_f"), ("bn", "relu_mod"), ("maxpool", "relu_mod"), ("residual", "leaky_f")], 2,
                     3, torch.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = input_for(net, 4, 3, torch.float32)
    _check(net, x)
    with torch.no_grad():
        f = net(x)
    jb = offset_output(net, x)
    assert float(((jb - f).abs() / f.abs().amax(1, keepdim=True)).max()) > 1e-2  # J_b b is not the output itself
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # batch-norm folded on a copy


def test_offset_output_rejects_models_it_cannot_check():
    torch.manual_seed(0)
    clamped = nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(-0.1, 0.1), nn.Linear(4, 2)).double().eval()
    x = 5 * torch.randn(6, 3, dtype=torch.float64)  # far outside [-0.1, 0.1]: the bounds are active
    with pytest.raises(ValueError, match="not positively homogeneous in its input and offsets"):
        offset_output(clamped, x)
    with pytest.raises(TypeError, match="needs an nn.Module"):
        offset_output(lambda v: v, x)
    with pytest.raises(ValueError, match="training mode"):
        offset_output(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).double(), x)
    no_bias = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)).double().eval()
    assert torch.equal(offset_output(no_bias, x), torch.zeros(6, 2, dtype=torch.float64))
