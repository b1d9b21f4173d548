"""B[x] summed in the reverse sweep (eq. 7 of 000): equal to the replay at input 0 and to f(x) - J x from jacrev,
for every kind of constant term; and the cases where it must not be used (constants the capture cannot tell
independent of x) replay instead, or fail the identity check, never silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cnnlens import ExactnessError
from cnnlens.spline import ElementwisePiecewise, Pieces, affine_map, register_op, templates, unregister_op
from cnnlens.spline._affine import propagated_bias
from cnnlens.testing import default_tolerance
from test_spline_properties_nets import ACTIVATIONS, BLOCKS, arch_settings, input_for, random_net

F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _jacobian(model, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    jac = torch.func.jacrev(lambda v: model(v.view_as(x)).reshape(n, -1))(x.reshape(n, -1)).detach()
    return jac[torch.arange(n), :, torch.arange(n)]


def _reference_offset(model, x: torch.Tensor) -> torch.Tensor:
    """f(x) - J x with J from torch.func.jacrev: B of the region, computed without cnnlens."""
    with torch.no_grad():
        f = model(x).reshape(x.shape[0], -1)
    return f - torch.einsum("ncd,nd->nc", _jacobian(model, x), x.reshape(x.shape[0], -1))


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return float((a - b).abs().max()) <= 10 * default_tolerance(dtype) * scale


@arch_settings(60)
@given(arch=st.tuples(st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(ACTIVATIONS)), min_size=1,
                               max_size=6), st.sampled_from([1, 2]), st.integers(0, 10_000)),
       dtype=st.sampled_from([F32, F64]), rows=st.sampled_from([None, [1], [3, 0], [2, 2, 1]]))
def test_swept_bias_equals_the_replay_and_jacrev(arch, dtype, rows):
    """Random architectures (conv and linear biases, batch-norm shifts, clamps, residuals, ...): B summed in the
    sweep equals B replayed at input 0 and f(x) - J x, for any subset of the classes."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 3, seed, dtype)
    res = affine_map(net, x, classes=rows)
    assert res.bias_method == "swept" and res.identity_error <= default_tolerance(dtype)
    cols = slice(None) if rows is None else rows
    assert _close(res.B, propagated_bias(net, x)[:, cols], dtype)
    assert _close(res.B, _reference_offset(net, x)[:, cols], dtype)


class OneOffset(nn.Module):
    """A small net whose middle part is one kind of constant term (``form``)."""

    def __init__(self, form: str, dtype: torch.dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.form = form
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=form != "conv_bn_nobias")
        self.bn = nn.BatchNorm2d(4)
        self.lin = nn.Linear(4 * 5 * 5, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            for bn in (self.bn, self.bn1):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.weight.copy_(torch.randn(bn.num_features, generator=g))
                bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        self.register_buffer("const", torch.randn(1, 4, 5, 5, generator=g))
        self.register_buffer("mask", torch.rand(1, 4, 5, 5, generator=g) > 0.5)
        self.to(dtype).eval()

    def middle(self, h: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per form
        c = self.const.to(h.dtype)
        form = self.form
        if form in ("conv_bias", "conv_bn", "conv_bn_nobias"):
            return F.relu(self.bn(h)) if form != "conv_bias" else F.relu(h)
        if form == "add_tensor":
            return F.relu(h + c)
        if form == "add_scalar":
            return F.relu(0.7 + h)
        if form == "sub_from_constant":
            return F.relu(c - h)
        if form == "rsub_scalar":
            return F.relu(1.5 - 2 * h)
        if form == "clamp_min_tensor":
            return torch.clamp(h, min=c)
        if form == "clamp_max_float":
            return torch.clamp(h, max=0.3)
        if form == "clamp_two_sided":
            return torch.clamp(h, -0.4, 0.6)
        if form == "hardtanh":
            return F.hardtanh(h, -0.5, 0.2)
        if form == "relu6":
            return F.relu6(4 * h)
        if form == "maximum_constant":
            return torch.maximum(h, c)
        if form == "minimum_constant_first":
            return torch.minimum(c, h)
        if form == "hardsigmoid":
            return F.hardsigmoid(3 * h)
        if form == "threshold":
            return F.threshold(h, 0.1, -0.7)
        if form == "softshrink":
            return F.softshrink(h, 0.3)
        if form == "hardshrink":
            return F.hardshrink(h, 0.3)
        if form == "pad_value":
            return F.relu(F.pad(h, (1, 0, 0, 1), value=0.8))[..., :5, 1:]
        if form == "where_constant":
            return F.relu(torch.where(self.mask, h, c))
        if form == "masked_fill":
            return F.relu(h.masked_fill(self.mask, -0.25))
        if form == "cat_constant":
            return F.relu(torch.cat([h, c.expand(h.shape[0], -1, -1, -1)], dim=1))[:, 2:6]
        if form == "setitem":
            h = h.clone()
            h[:, 1] = 0.35
            return F.relu(h)
        if form == "iadd_constant":
            h = h.clone()
            h += c
            return F.relu(h)
        raise AssertionError(form)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.conv(x))
        h = F.relu(self.bn1(self.lin(h.flatten(1))))
        return self.head(h)


FORMS = ("conv_bias", "conv_bn", "conv_bn_nobias", "add_tensor", "add_scalar", "sub_from_constant", "rsub_scalar",
         "clamp_min_tensor", "clamp_max_float", "clamp_two_sided", "hardtanh", "relu6", "maximum_constant",
         "minimum_constant_first", "hardsigmoid", "threshold", "softshrink", "hardshrink", "pad_value",
         "where_constant", "masked_fill", "cat_constant", "setitem", "iadd_constant")


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("form", FORMS)
def test_every_kind_of_constant_term_is_summed(form, dtype):
    """Each constant term (a bias, a shift, a constant operand, a clamp's bound, a unit's constant piece, an affine
    op's value at 0) enters B once: equal to the replay and to jacrev's f(x) - J x, with few rows (no folding) and
    with many (batch-norms folded into the convolutions' weights and biases), in float64 and float32."""
    net = OneOffset(form, dtype)
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(2), dtype=F64).to(dtype)
    reference = _reference_offset(net, x)
    # PyTorch's hardsigmoid backward uses 1/6 rounded to float32 (5e-9 off in float64), so jacrev is that far off
    tol_dtype = F32 if form == "hardsigmoid" else dtype
    for rows in ([1], None):
        res = affine_map(net, x, classes=rows)
        assert res.bias_method == "swept", form
        assert res.identity_error <= default_tolerance(dtype)
        cols = slice(None) if rows is None else rows
        assert _close(res.B, reference[:, cols], tol_dtype), (form, rows)
    assert _close(affine_map(net, x).B, propagated_bias(net, x), dtype)


def test_templates_and_chunks_sum_the_same_bias():
    net = OneOffset("conv_bn", F64)
    x = torch.randn(5, 2, 5, 5, dtype=F64)
    full = affine_map(net, x)
    chunked = affine_map(net, x, chunk_size=2)
    t = templates(net, x, classes=[2, 0])
    assert full.bias_method == chunked.bias_method == t.bias_method == "swept"
    assert torch.allclose(full.B, chunked.B, rtol=0, atol=1e-12)
    assert torch.allclose(t.biases, full.B[:, [2, 0]], rtol=0, atol=1e-12)


class Replays(nn.Module):
    """Models whose B cannot be summed in the sweep: it is replayed at input 0, still exact and checked (constants
    of unknown origin, values read off x, random numbers, state, constants written in place)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.first = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        if self.form == "from_numpy":  # torch.from_numpy is not seen by the capture: its origin is unknown
            h = h + torch.from_numpy(np.linspace(-0.5, 0.5, 4))
        elif self.form == "item_control_flow":
            if h.sum().item() > -1e9:
                h = h * 2.0
        elif self.form == "random_unused":
            torch.rand(3)
        elif self.form == "state":
            self.calls.add_(1)
        elif self.form == "written_after_use":  # the tape keeps c by reference; the where used its old value
            c = torch.full((1, 4), 0.3, dtype=h.dtype)
            h = torch.where(torch.tensor([True, False, True, False]), h, c)
            c.add_(1.0)
        elif self.form == "written_with_x":
            buf = torch.zeros_like(h)
            buf.add_(h)
            h = torch.relu(buf - 0.2)
        return self.head(h)


@pytest.mark.parametrize("form", ["from_numpy", "item_control_flow", "random_unused", "state", "written_after_use",
                                  "written_with_x"])
def test_constants_of_unknown_origin_are_replayed(form, caplog):
    net = Replays(form).double().eval()
    x = torch.randn(3, 5, dtype=F64)
    with caplog.at_level("DEBUG", logger="cnnlens.spline"):
        res = affine_map(net, x)
    assert res.bias_method == "replayed" and res.identity_error <= 1e-10
    assert "B replayed at input 0 rather than summed in the sweep" in caplog.text
    plain = Replays("none").double().eval()  # the same function without the part jacrev cannot run (state)
    plain.load_state_dict(net.state_dict())
    assert _close(res.B, _reference_offset(net if form != "state" else plain, x), F64)


def test_a_global_tensor_and_a_closure_are_the_models_own_constants():
    lin = nn.Linear(5, 3).double()
    shift = torch.randn(3, dtype=F64)
    res = affine_map(lambda v: torch.relu(lin(v)) + shift, torch.randn(4, 5, dtype=F64))
    assert res.bias_method == "swept" and res.identity_error <= 1e-10
    x = torch.randn(4, 5, dtype=F64)
    res = affine_map(_global_model, x)
    assert res.bias_method == "swept" and _close(res.B, _reference_offset(_global_model, x), F64)


_GLOBAL_LIN = nn.Linear(5, 3).double()
_GLOBAL_SHIFT = torch.linspace(-1, 1, 3, dtype=F64)


def _global_model(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(_GLOBAL_LIN(v), min=-0.2) - _GLOBAL_SHIFT


def test_a_numpy_constant_computed_from_x_fails_the_identity():
    """A value of x sent through numpy and back: the swept B is not used, the replay recomputes it, and the
    identity check fails (no silent wrong map)."""

    class Escape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            c = torch.from_numpy(np.tanh(z.detach().numpy()))
            return self.lin(torch.relu(z) + c)

    with pytest.raises(ExactnessError, match="escaped the capture"):
        affine_map(Escape().double().eval(), torch.randn(3, 6, dtype=F64))


def test_a_wrong_rule_is_not_hidden_by_the_swept_bias():
    """An elementwise rule with a wrong slope (verify off): B is the rule's own offset, not f(x) - A x, so the
    identity check fails."""

    def soft_relu(h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h) + 0.25

    op = register_op(soft_relu, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 2.0], [0.25, 0.25]), verify=False))
    right = None
    try:
        lin, head = nn.Linear(5, 4).double(), nn.Linear(4, 3).double()
        x = torch.randn(6, 5, dtype=F64)
        with pytest.raises(ExactnessError, match=r"A x \+ B differs from f\(x\)"):
            affine_map(lambda v: head(op(lin(v))), x)
        right = register_op(soft_relu, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 1.0], [0.25, 0.25])),
                            replace=True)
        res = affine_map(lambda v: head(right(lin(v))), x)
        assert res.bias_method == "swept" and res.identity_error <= 1e-10
        assert _close(res.B, _reference_offset(lambda v: head(soft_relu(lin(v))), x), F64)
    finally:
        unregister_op(right or op)


def test_batch_norm_changed_in_place_between_calls_is_read_again():
    """The batch-norm's affine form is kept between calls; an in-place change of any of its tensors (or a new
    tensor) is seen."""
    net = OneOffset("conv_bn", F64)
    x = torch.randn(3, 2, 5, 5, dtype=F64)
    first = affine_map(net, x, classes=[0])
    with torch.no_grad():
        for t in (net.bn.bias, net.bn.weight, net.bn.running_mean, net.bn.running_var):
            t.mul_(1.5)
            res = affine_map(net, x, classes=[0])
            assert _close(res.B, _reference_offset(net, x)[:, [0]], F64)
            assert not torch.allclose(res.B, first.B)
        net.bn.running_var = net.bn.running_var.clone() + 0.5
    assert _close(affine_map(net, x).B, _reference_offset(net, x), F64)


def test_a_model_that_ignores_its_input_has_its_output_as_b():
    """A = 0 and B = f(x); an output of unknown origin (numpy) is replayed instead."""

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("c", torch.randn(1, 3, generator=torch.Generator().manual_seed(3), dtype=F64))

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.c.expand(v.shape[0], 3) * 2.0

    net = Constant()
    x = torch.randn(4, 5, dtype=F64)
    res = affine_map(net, x, classes=[2, 0])
    assert res.bias_method == "swept" and float(res.A.abs().max()) == 0.0
    assert torch.equal(res.B, (2.0 * net.c).expand(4, 3)[:, [2, 0]])
    ones = affine_map(lambda v: torch.from_numpy(np.ones((v.shape[0], 3))), x)
    assert ones.bias_method == "replayed" and torch.equal(ones.B, torch.ones(4, 3, dtype=F64))



@pytest.mark.parametrize("dtype", [F64, F32])
def test_waiting_shares_and_shares_added_at_once_agree(dtype, monkeypatch):
    """The per-channel shares of B (ResNet-18's 20 batch-norm shifts and its head's bias) wait and are summed in one
    matrix-vector product; flushed after every node instead they give the same B, and both equal jacrev's
    f(x) - J x."""
    from cnnlens.nn.models import resnet18
    from cnnlens.spline import _transpose

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval().to(dtype)
    for module in net.modules():  # shifts and statistics away from their initial 0 / 1
        if isinstance(module, nn.BatchNorm2d):
            for t in (module.running_mean, module.running_var, module.weight, module.bias):
                t.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64).to(dtype)
    reference = _reference_offset(net, x)
    waiting = affine_map(net, x, classes=[4])
    monkeypatch.setattr(_transpose, "_SHARES", -1)
    at_once = affine_map(net, x, classes=[4])
    for res in (waiting, at_once):
        assert res.bias_method == "swept" and res.identity_error <= default_tolerance(dtype)
        assert _close(res.B, reference[:, [4]], dtype)
    assert _close(waiting.B, at_once.B, dtype)
