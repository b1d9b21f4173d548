"""Which path computed A (transposed sweep or batched autograd), the transpose rules, and errors that must surface.

Every check compares the engine's A with torch.func.jacrev of the unmodified model (an independent computation).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.spline import ReplayDivergenceError, affine_map, templates
from cnnlens.testing import assert_affine_exact, default_tolerance


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    jac = torch.func.jacrev(lambda v: model(v.view_as(x)).reshape(n, -1))(x.reshape(n, -1)).detach()
    return jac[torch.arange(n), :, torch.arange(n)]


def _assert_exact(model: nn.Module, x: torch.Tensor) -> None:
    a, _ = affine_map(model, x)
    jac = _jacobian(model, x)
    assert float((a - jac).abs().max()) <= default_tolerance(x.dtype) * float(jac.abs().max().clamp_min(1))
    assert_affine_exact(model, x)


class OpNet(nn.Module):
    """conv -> one functional op under test -> linear head, on (N, 2, 6, 6) inputs."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 4, 3, padding="same")
        self.head = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per op
        h = self.conv(x)
        op = self.op
        if op == "permute":
            h = h.permute(0, 2, 3, 1).relu().transpose(1, 3)
        elif op == "getitem":
            h = torch.relu(h[:, 1:, ::2, 1:])
        elif op == "pad":
            h = F.relu(F.pad(h, (1, 0, 2, 1), value=0.3))
        elif op == "pad_reflect":
            h = F.relu(F.pad(h, (1, 1, 1, 1), mode="reflect"))
        elif op == "mean_broadcast":
            h = torch.relu(h - h.mean(dim=(2, 3), keepdim=True))
        elif op == "minimum_broadcast":
            h = torch.minimum(h, 0.5 + h.mean(dim=(2, 3), keepdim=True))
        elif op == "maximum_two":
            h = torch.maximum(h, self.conv2(x))
        elif op == "chunk":
            a, b = h.chunk(2, dim=1)
            h = torch.relu(a) - 0.5 * b
        elif op == "setitem":
            h = h.clone()
            h[:, 0] = torch.relu(h[:, 1])
        elif op == "flip_roll":
            h = torch.relu(h.flip(-1).roll(1, dims=2) + h)
        elif op == "stack":
            h = torch.stack([torch.relu(h), h], dim=2).sum(2)
        elif op == "matmul":
            h = torch.relu(h.flatten(2) @ torch.linspace(-1, 1, 36 * 5, dtype=h.dtype).view(36, 5))
        elif op == "einsum":
            h = torch.relu(torch.einsum("nchw,c->nhw", h, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=h.dtype)))
        elif op == "linear_kwargs":
            w = torch.linspace(-1, 1, 6 * 7, dtype=h.dtype).view(7, 6)
            h = F.relu(F.linear(input=h, weight=w))
        elif op == "cat_negative_dim":
            h = torch.relu(torch.cat([h, -h[:, :1]], dim=-3))
        elif op == "inplace_relu_after_view_unused_base":
            h = h.reshape(h.shape[0], -1)
            F.relu(h, inplace=True)
        else:
            raise AssertionError(op)
        return self.head(h.reshape(h.shape[0], -1))


_RULE_OPS = ["permute", "getitem", "pad", "pad_reflect", "mean_broadcast", "minimum_broadcast", "maximum_two",
             "chunk", "setitem", "flip_roll", "stack", "matmul", "einsum", "linear_kwargs", "cat_negative_dim",
             "inplace_relu_after_view_unused_base"]


def _net(op: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = OpNet(op)
    net(torch.zeros(1, 2, 6, 6))  # materialise the lazy head
    return net.to(dtype).eval()


@pytest.mark.parametrize("op", _RULE_OPS)
def test_common_ops_take_the_transposed_path_exactly(op, dtype):
    net = _net(op, dtype)
    x = torch.randn(3, 2, 6, 6, dtype=dtype)
    result = affine_map(net, x)
    assert result.path == "transposed" and result.fallback_reason is None, result.fallback_reason
    _assert_exact(net, x)


class ViewWrite(nn.Module):
    """Writes in place into a view of a tensor, then reads the tensor: no transpose rule can follow the aliasing."""

    def __init__(self, only_if_positive: bool = False) -> None:
        super().__init__()
        self.block = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)
        self.only_if_positive = only_if_positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        if not self.only_if_positive or bool(x[:, 0].sum() > 0):  # for some batches only (the chunk test)
            view = h.view(h.shape[0], 2, 3)
            view.mul_(3.0)
        return self.head(torch.relu(h))


def test_forced_fallback_is_reported_and_exact(dtype, caplog):
    torch.manual_seed(1)
    net = ViewWrite().to(dtype).eval()
    x = torch.randn(4, 5, dtype=dtype)
    with caplog.at_level(logging.DEBUG, logger="cnnlens.spline"):
        result = affine_map(net, x)
    assert result.path == "autograd"
    assert result.fallback_reason.startswith("no exact transpose rule for the operation torch.relu (called in "
                                             "module '<root>' of type ViewWrite), which reads a tensor after the "
                                             "in-place operation torch.Tensor.mul_")
    assert "batched autograd" in result.fallback_reason
    assert any("path autograd" in r.getMessage() for r in caplog.records)
    a, b = result  # still an (A, B) pair
    assert a is result.A and b is result.B
    _assert_exact(net, x)
    t = templates(net, x, classes=[0, 2])
    assert t.path == "autograd" and t.fallback_reason == result.fallback_reason


def test_a_chunk_that_falls_back_is_reported():
    torch.manual_seed(1)
    net = ViewWrite(only_if_positive=True).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    x[:2, 0] = x[:2, 0].abs() + 0.1  # first chunk writes into the view
    x[2:, 0] = -x[2:, 0].abs() - 0.1  # second chunk does not
    result = affine_map(net, x, chunk_size=2)
    assert result.path == "autograd"
    assert result.fallback_reason.startswith("1 of 2 chunks: no exact transpose rule")
    assert affine_map(net, x[2:]).path == "transposed"
    jac = torch.cat([_jacobian(net, x[:2]), _jacobian(net, x[2:])])  # the branch is taken per chunk
    assert float((result.A - jac).abs().max()) <= 1e-10 * float(jac.abs().max())


def test_fast_path_is_reported_and_logged(caplog):
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="cnnlens.spline"):
        result = affine_map(net, x)
    assert result.path == "transposed" and result.fallback_reason is None
    assert any("affine_map on 3 samples: path transposed" in r.getMessage() for r in caplog.records)
    assert templates(net, x).path == "transposed"
    approx = affine_map(net, x, approximate=True)
    assert approx.path == "autograd" and "approximate=True" in approx.fallback_reason


# --- errors that must reach the user as they are -------------------------------------------------------------------


def test_errors_inside_the_transposed_sweep_propagate(monkeypatch):
    """An arbitrary RuntimeError (a bug in a rule, out of memory) is not a reason to fall back silently."""
    import cnnlens.spline._transpose as tr

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)

    def broken(*_args, **_kwargs):
        raise RuntimeError("bug in a transpose rule")

    monkeypatch.setattr(tr, "_conv_t", broken)
    with pytest.raises(RuntimeError, match="bug in a transpose rule"):
        affine_map(net, x)

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("out of memory: tried to allocate 8 GiB")

    monkeypatch.setattr(tr, "_conv_t", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        affine_map(net, x)


class Branchy(nn.Module):
    """Takes another layer (of another width) when the first layer is silent: control flow on input values, read
    as a float (``float(h.sum()) > 0``) or as a tensor comparison (``bool(h.sum() > 0)``)."""

    def __init__(self, compare_tensors: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.wide = nn.Linear(4, 5)
        self.narrow = nn.Linear(4, 3)
        self.compare_tensors = compare_tensors
        with torch.no_grad():
            self.first.bias.fill_(-5.0)  # silent at input 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        if (bool(h.sum() > 0) if self.compare_tensors else float(h.sum()) > 0):
            return torch.relu(self.wide(h))[:, :3]
        return torch.relu(self.narrow(h))


def test_control_flow_on_a_tensor_comparison_is_replayed():
    """Branchy takes the wide branch at x and the narrow one at input 0. The replay that propagates B is given the
    discrete values read at x (``bool(h.sum() > 0)``), so it takes the recorded branch and B is the offset of the map
    at x: it equals f(x) - J x with J from jacrev (an independent computation)."""
    torch.manual_seed(0)
    net = Branchy(compare_tensors=True).double().eval()
    with torch.no_grad():
        net.first.weight.fill_(2.0)
    x = torch.full((2, 3), 2.0, dtype=torch.float64)
    result = affine_map(net, x)
    assert result.bias_fallback is None and result.identity_error <= 1e-12
    jac = _jacobian(net, x)
    with torch.no_grad():
        offset = net(x) - torch.einsum("ncd,nd->nc", jac, x)
    assert float((result.B - offset).abs().max()) <= 1e-10 * float(offset.abs().max())
    assert_affine_exact(net, x)


def test_replay_divergence_is_its_own_error():
    """With ``float(h.sum()) > 0`` the replay keeps its own float (a float may flow into arithmetic), so it takes the
    narrow branch at input 0: affine_map warns that B falls back to f(x) - A x, and the replay check raises."""
    torch.manual_seed(0)
    net = Branchy().double().eval()
    with torch.no_grad():
        net.first.weight.fill_(2.0)
    x = torch.full((2, 3), 2.0, dtype=torch.float64)
    with pytest.warns(UserWarning, match="not an independent check"):
        a, b = affine_map(net, x)  # the map at x itself is fine
    assert a.shape == (2, 3, 3)
    with pytest.raises(ReplayDivergenceError, match="depends on something the replay cannot force") \
            as info:
        assert_affine_exact(net, x)
    assert "could not be evaluated" not in str(info.value)
    assert "nonlinearity number 1" in str(info.value)


class Alternating(nn.Module):
    """Takes one more layer on every other call: control flow on state that the capture does not see.

    ``shift``: add a constant made by ``torch.from_numpy``, which the capture cannot tell independent of x (so B
    cannot be summed in the sweep and must be replayed at input 0)."""

    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.extra = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.calls = 0
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.relu(self.first(x))
        if self.calls % 2:
            h = torch.relu(self.extra(h))
        if self.shift:
            h = h + torch.from_numpy(np.full(4, 0.5))
        return self.head(h)


def test_replay_divergence_is_its_own_error_and_affine_map_says_so():
    torch.manual_seed(0)
    net = Alternating(shift=True).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"B is f\(x\) - A x, because the propagation of B could not replay"):
        # one chunk of samples (no memory probe), so the recording pass is the model's first call
        result = affine_map(net, x, chunk_size=x.shape[0])  # the map of the call that recorded it is still exact
    assert result.identity_error is None and "cannot force" in result.bias_fallback
    assert result.bias_method is None
    net.calls = 0  # the recording call takes the extra layer, as in affine_map
    jac = _jacobian(net, x)
    assert float((result.A - jac).abs().max()) <= 1e-12 * float(jac.abs().max())
    # without the numpy constant, B is summed in the sweep of the recording call: exact, and checked
    plain = Alternating().double().eval()
    plain.load_state_dict(net.state_dict())
    swept = affine_map(plain, x, chunk_size=x.shape[0])
    assert swept.bias_method == "swept" and swept.identity_error <= 1e-12
    plain.calls = 0
    with torch.no_grad():
        offset = plain(x) - torch.einsum("ncd,nd->nc", swept.A, x)
    assert float((swept.B - offset).abs().max()) <= 1e-12 * float(offset.abs().max())
    with pytest.raises(ReplayDivergenceError, match="depends on something the replay cannot force") \
            as info:
        assert_affine_exact(net, x)
    assert "could not be evaluated" not in str(info.value)


def test_shape_mismatch_keeps_the_hint_and_the_cause():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=r"input of shape \(2, 5\): torch.nn.functional.linear \(called in module "
                                         r"'1' of type Linear\) failed") as info:
        affine_map(net, torch.randn(2, 5))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "mat1 and mat2" in str(info.value.__cause__)


def test_a_runtime_error_of_the_model_itself_propagates():
    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 1:
                raise RuntimeError("Picky takes one sample at a time")
            return self.lin(x)

    with pytest.raises(RuntimeError, match="Picky takes one sample at a time"):
        affine_map(Picky().eval(), torch.randn(2, 3))
