"""The lean path of a recording pass (convolution, batch-norm, ReLU, residual sums and shape reads taken without the
generic dispatch): the same region codes, control-flow decisions, tape and map as the generic dispatch, on random
architectures and on the forms that must leave the lean path (which then behave as before)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cnnlens import NotPiecewiseAffineError
from cnnlens.nn.models import resnet18
from cnnlens.spline import Composite, affine_map, register_op, unregister_op
from cnnlens.spline._capture import Capture, capture, run_captured
from cnnlens.spline._transpose import Tape, transpose_rows
from cnnlens.testing import default_tolerance
from test_spline_properties_nets import ACTIVATIONS, BLOCKS, arch_settings, input_for, random_net

F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _record(model, x: torch.Tensor, lean: bool) -> dict:
    """One recording pass with the lean path on or off, and the full map from its tape."""
    tape = Tape()
    cap = Capture(graph=False, tape=tape)
    cap.lean = lean
    with torch.no_grad(), capture(model, cap=cap):
        y = run_captured(cap, model, x)
    rows = torch.arange(y.shape[1])
    a = b = None
    if tape.ok:
        a = x.new_empty(x.shape[0], rows.numel(), x[0].numel())
        b = y.new_empty(x.shape[0], rows.numel())
        transpose_rows(tape, x, y, rows, out=a, bias=b)
    return {"y": y, "a": a, "b": b, "kinds": [n.kind for n in tape.nodes], "ok": tape.ok, "reason": tape.reason,
            "blocker": cap.bias_blocker, "decisions": cap.decisions, "tracked_out": cap.is_tracked(y),
            "entries": [(e.name, e.kind, e.shape, e.states) for e in cap.entries]}


def _same(lean: dict, generic: dict) -> None:
    assert torch.equal(lean["y"], generic["y"])
    assert lean["kinds"] == generic["kinds"] and lean["ok"] == generic["ok"] and lean["reason"] == generic["reason"]
    assert lean["blocker"] == generic["blocker"] and lean["tracked_out"] == generic["tracked_out"]
    assert [(f, v) for f, v in lean["decisions"]] == [(f, v) for f, v in generic["decisions"]]
    assert len(lean["entries"]) == len(generic["entries"])
    for (n1, k1, s1, c1), (n2, k2, s2, c2) in zip(lean["entries"], generic["entries"], strict=True):
        assert (n1, k1, s1) == (n2, k2, s2) and torch.equal(c1, c2)
    if lean["a"] is not None:
        assert torch.equal(lean["a"], generic["a"]) and torch.equal(lean["b"], generic["b"])


@arch_settings(50)
@given(arch=st.tuples(st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(ACTIVATIONS)), min_size=1,
                               max_size=6), st.sampled_from([1, 2]), st.integers(0, 10_000)),
       dtype=st.sampled_from([F32, F64]), n=st.sampled_from([1, 3]))
def test_lean_path_records_what_the_generic_dispatch_records(arch, dtype, n):
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, n, seed, dtype)
    _same(_record(net, x, True), _record(net, x, False))


class Residuals(nn.Module):
    """Every form of sum and reading of shapes the lean path takes, and forms it must leave to the dispatch."""

    def __init__(self, form: str, dims: int = 2) -> None:
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else \
            (nn.Conv2d, nn.BatchNorm2d)
        self.form = form
        self.conv1 = conv(2, 4, 3, padding=1)
        self.conv2 = conv(4, 4, 3, padding="same" if form == "string_padding" else 1, bias=False)
        self.bn = bn(4, affine=form != "bn_no_affine")
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.head = nn.Linear(4 * 4 ** dims, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        z = self.bn(self.conv2(h))
        if self.form == "iadd":
            z += h
        elif self.form == "add_":
            z.add_(h)
        elif self.form == "torch_add":
            z = torch.add(z, h)
        elif self.form == "alpha":
            z = torch.add(z, h, alpha=0.5)
        elif self.form == "self_sum":
            z = z + z
        elif self.form == "shapes":
            if z.dim() == h.dim() and z.shape == h.shape and z.size(1) == 4:  # control flow on shapes
                z = z + h
        else:
            z = z + h
        z = torch.relu_(z) if self.form == "relu_" else z.relu()
        return self.head(z.flatten(1))


FORMS = ["plus", "iadd", "add_", "torch_add", "alpha", "self_sum", "shapes", "relu_", "string_padding",
         "bn_no_affine"]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("form", FORMS)
def test_every_form_records_the_same_and_is_exact(form, dims, dtype):
    torch.manual_seed(0)
    net = Residuals(form, dims).to(dtype).eval()
    x = torch.randn(2, 2, *[4] * dims, dtype=dtype)
    lean, generic = _record(net, x, True), _record(net, x, False)
    _same(lean, generic)
    assert lean["ok"] and lean["blocker"] is None
    jac = torch.func.jacrev(lambda v: net(v.view_as(x)))(x.reshape(2, -1))  # (N, C, N, D)
    assert torch.allclose(lean["a"], jac[torch.arange(2), :, torch.arange(2)].detach(),
                          atol=10 * default_tolerance(dtype))
    res = affine_map(net, x)
    assert res.bias_method == "swept" and res.identity_error <= default_tolerance(dtype)


def test_resnet18_records_the_same_on_the_lean_path():
    torch.manual_seed(0)
    net = resnet18(num_classes=5).eval()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    lean, generic = _record(net, x, True), _record(net, x, False)
    _same(lean, generic)
    assert lean["kinds"].count("conv") == 20 and lean["kinds"].count("channel_scale") == 20


class WeightFromInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x[:1].reshape(2, 1, 1, 1).expand(2, 2, 1, 1).contiguous()
        return F.conv2d(x, w).flatten(1)


class TrainingBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(2, track_running_stats=False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x).flatten(1)


def test_forms_the_lean_path_leaves_to_the_dispatch_still_raise():
    x = torch.randn(1, 2, 1, 1)
    with pytest.raises(NotPiecewiseAffineError, match="input-dependent weight"):
        affine_map(WeightFromInput(), x)
    with pytest.raises(ValueError, match="batch statistics"):
        affine_map(TrainingBatchNorm(), torch.randn(2, 2, 3, 3))


def test_a_user_rule_for_relu_takes_precedence_over_the_lean_path():
    calls = []

    def relu_by_clamp(h: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        calls.append(h.shape)
        return h.clamp(min=0)

    register_op(F.relu, Composite(relu_by_clamp), replace=True)
    try:
        torch.manual_seed(0)
        net = Residuals("plus").eval()
        x = torch.randn(2, 2, 4, 4)
        res = affine_map(net, x)
    finally:
        unregister_op(F.relu)
    assert calls and res.identity_error <= default_tolerance(F32)
    assert torch.allclose(res.A, affine_map(net, x).A, atol=1e-6)


class Constants(nn.Module):
    """A convolution whose weight or bias is not the model's own tensor (or one the capture does not look for: an
    attribute of a torch layer), or is written in place after its use: B cannot be summed in the sweep, so it is
    replayed, on the lean path as on the generic one."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        g = torch.Generator().manual_seed(0)
        self.weight_np = torch.randn(3, 2, 3, 3, generator=g, dtype=F64).numpy()
        self.weight = nn.Parameter(torch.randn(3, 2, 3, 3, generator=g, dtype=F64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=F64))
        self.held = nn.Identity()
        self.held.shift = torch.randn(3, generator=g, dtype=F64)  # a plain attribute, neither parameter nor buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "from_numpy":  # not seen by the capture: a weight of unknown origin
            return torch.relu(F.conv2d(x, torch.from_numpy(self.weight_np), self.bias, 1, 1)).flatten(1)
        if self.form == "on_torch_layer":  # a tensor set on one of torch's layers, read by this module's code
            return torch.relu(F.conv2d(x, self.weight, self.held.shift, 1, 1)).flatten(1)
        bias = self.bias * 1.0  # computed from the model's own tensors: known
        out = torch.relu(F.conv2d(x, self.weight, bias, 1, 1))
        bias.add_(1.0)  # written after its use: the tape's reference no longer holds the value the pass used
        return out.flatten(1)


@pytest.mark.parametrize("form", ["from_numpy", "on_torch_layer", "written_after_use"])
def test_constants_the_capture_cannot_vouch_for_are_replayed_on_the_lean_path(form):
    net = Constants(form).eval()
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    lean, generic = _record(net, x, True), _record(net, x, False)
    assert lean["blocker"] is not None and lean["blocker"] == generic["blocker"]
    res = affine_map(net, x)
    assert res.bias_method == "replayed" and res.identity_error <= default_tolerance(F64)
