"""No silent wrong answers (issue 10, section 1): each case is exact (A against jacrev / finite differences) or a
named error.

References are computed without the spline engine: ``torch.func.jacrev`` of a twin model that computes the same
function with a plain autograd graph, central finite differences of the model itself (they see what it computes,
whatever its autograd graph says), and ``f(x) - J x`` for the offsets. The autograd fall-back path of
:func:`affine_map` is forced by switching the tape off (``_force_autograd``), as an op without a transpose rule does.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cnnlens.spline._affine as affine_module
from cnnlens import ExactnessError, NotPiecewiseAffineError
from cnnlens.nn.models import lenet5
from cnnlens.spline import (
    activations,
    affine_map,
    boundary_units,
    is_globally_convex,
    partition_codes,
    regions_on_segment,
    templates,
)
from cnnlens.spline._affine import _chunk_map, propagated_bias
from cnnlens.testing import assert_affine_exact, default_tolerance, offset_output

F64 = torch.float64


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobian (N, C, D) by jacrev of the whole batch (its diagonal blocks)."""
    n = x.shape[0]
    jac = torch.func.jacrev(lambda v: model(v.view_as(x)).reshape(n, -1))(x.reshape(n, -1)).detach()
    return jac[torch.arange(n), :, torch.arange(n)]


def _finite_differences(model: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of the model's outputs, one input coordinate at a time, for every sample (N, C, D)."""
    n, d = x.shape[0], x[0].numel()
    cols = []
    with torch.no_grad():
        for i in range(d):
            e = torch.zeros(d, dtype=x.dtype)
            e[i] = eps
            e = e.view(x.shape[1:])
            cols.append((model(x + e) - model(x - e)).reshape(n, -1) / (2 * eps))
    return torch.stack(cols, -1)


def _close(a: torch.Tensor, ref: torch.Tensor, rtol: float) -> bool:
    return float((a - ref).abs().max()) <= rtol * float(ref.abs().max().clamp_min(1.0))


@pytest.fixture
def force_autograd(monkeypatch):
    """Make every affine_map/templates call take the autograd fall-back (the tape reports no rule)."""

    def no_rule(tape, *_args, **_kwargs):
        tape.switch_off("the test forcing the autograd path")
        return None

    monkeypatch.setattr(affine_module, "transpose_rows", no_rule)


# --- 1. TorchScript -------------------------------------------------------------------------------------------------


def _eager() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()


@torch.jit.script
def _scripted_relu(z: torch.Tensor) -> torch.Tensor:
    return torch.relu(z)


class HoldsScriptFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.act = _scripted_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


def _scripted_models() -> dict[str, object]:
    x = torch.randn(2, 5, dtype=F64)
    wrap = nn.Sequential(nn.Linear(5, 5), torch.jit.script(_eager())).double().eval()
    traced_sub = nn.Sequential(nn.Linear(5, 5), torch.jit.trace(_eager(), x)).double().eval()
    return {"script": torch.jit.script(_eager()), "trace": torch.jit.trace(_eager(), x), "script_submodule": wrap,
            "trace_submodule": traced_sub, "script_function": _scripted_relu,
            "script_function_attribute": HoldsScriptFunction().double().eval()}


ENTRY_POINTS = {
    "affine_map": lambda m, x: affine_map(m, x),
    "templates": lambda m, x: templates(m, x),
    "partition_codes": lambda m, x: partition_codes(m, x),
    "activations": lambda m, x: activations(m, x),
    "boundary_units": lambda m, x: boundary_units(m, x),
    "regions_on_segment": lambda m, x: regions_on_segment(m, x[0], x[1]),
    "propagated_bias": lambda m, x: propagated_bias(m, x),
    "is_globally_convex": lambda m, x: is_globally_convex(m, x),
    "assert_affine_exact": lambda m, x: assert_affine_exact(m, x),
    "offset_output": lambda m, x: offset_output(m, x),
}


@pytest.mark.parametrize("kind", list(_scripted_models()))
def test_torchscript_is_refused_at_every_entry_point(kind):
    model = _scripted_models()[kind]
    x = torch.randn(3, 5, dtype=F64)
    for name, call in ENTRY_POINTS.items():
        if name == "offset_output" and not isinstance(model, nn.Module):
            continue  # offset_output takes modules only (its own TypeError)
        with pytest.raises(TypeError, match="TorchScript") as info:
            call(model, x)
        assert "Pass the eager nn.Module" in str(info.value), name


def test_torch_compiled_modules_are_refused():
    """A compiled graph reruns without the Python code of the capture: refused, as root module and as submodule."""
    compiled = torch.compile(_eager(), backend="eager")  # compiles lazily: nothing runs until the first call
    inside = nn.Sequential(nn.Linear(5, 5), torch.compile(_eager(), backend="eager")).double().eval()
    x = torch.randn(3, 5, dtype=F64)
    for model, where in ((compiled, "'<root>'"), (inside, "'1'")):
        for name in ("affine_map", "templates", "partition_codes", "regions_on_segment", "is_globally_convex"):
            with pytest.raises(TypeError, match=f"module {where} was compiled with torch.compile.*_orig_mod"):
                ENTRY_POINTS[name](model, x)


def test_torchscript_called_from_a_plain_function_fails_the_identity_check():
    """A function cannot be inspected; the check of A x + B == f(x) with B propagated catches it (A reads 0)."""
    scripted = torch.jit.script(_eager())
    eager = _eager()
    x = torch.randn(4, 5, dtype=F64)
    with pytest.raises(ExactnessError, match="saw no operation on x reach the outputs"):
        affine_map(lambda z: scripted(z), x)
    with pytest.raises(ExactnessError, match="escaped the capture"):  # one branch seen, one not
        templates(lambda z: eager(z) + scripted(z), x)


# --- 2. detach, .data, no_grad, inference_mode inside forward ---------------------------------------------------------

DETACH_MODES = ["detach", "detach_", "data", "no_grad", "inference_mode", "set_grad_enabled", "cpu", "to",
                "torch_tensor", "new_tensor", "as_tensor"]


class Twin(nn.Module):
    """Linear -> ReLU -> (op under test: an identity on values) -> Linear -> maximum/max-pool -> Linear.

    ``mode="plain"`` computes the same function with a plain autograd graph: the jacrev reference.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 8)
        self.head = nn.Linear(4, 3)

    def _op(self, h: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per mode
        mode = self.mode
        if mode == "plain":
            return 2 * h + 1
        if mode == "detach":
            return 2 * h.detach() + 1
        if mode == "detach_":
            g = h.clone()
            g.detach_()
            return 2 * g + 1
        if mode == "data":
            return 2 * h.data + 1
        if mode == "no_grad":
            with torch.no_grad():
                return 2 * h + 1
        if mode == "inference_mode":
            with torch.inference_mode():
                return 2 * h + 1
        if mode == "set_grad_enabled":
            with torch.set_grad_enabled(False):
                return 2 * h + 1
        if mode == "cpu":
            return 2 * h.cpu() + 1
        if mode == "to":
            return 2 * h.to(h.dtype).to("cpu") + 1
        if mode == "torch_tensor":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch advises clone().detach(); the model does not care
                return 2 * torch.tensor(h) + 1
        if mode == "new_tensor":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return 2 * h.new_tensor(h) + 1
        if mode == "as_tensor":
            return 2 * torch.as_tensor(h.detach(), dtype=h.dtype) + 1
        raise AssertionError(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._op(torch.relu(self.first(x)))
        g = self.second(h)
        g = torch.maximum(g, -0.5 * g)
        return self.head(F.max_pool1d(g.unsqueeze(1), 2).squeeze(1))


def _twins(mode: str, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = Twin(mode).to(dtype).eval()
    plain = Twin("plain").to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    return model, plain


@pytest.mark.parametrize("path", ["transposed", "autograd", "approximate"])
@pytest.mark.parametrize("mode", DETACH_MODES)
def test_detach_and_grad_modes_inside_forward_keep_a_exact(mode, path, request):
    if path == "autograd":
        request.getfixturevalue("force_autograd")
    model, plain = _twins(mode, F64)
    x = torch.randn(5, 6, dtype=F64)
    result = affine_map(model, x, approximate=path == "approximate")
    assert result.path == ("transposed" if path == "transposed" else "autograd")
    assert _close(result.A, _jacobian(plain, x), 1e-12)
    assert _close(result.A, _finite_differences(model, x), 1e-7)  # what the model computes, independently
    assert result.identity_error <= 1e-12 and result.bias_fallback is None
    with torch.no_grad():
        assert _close(result.B, plain(x) - torch.einsum("ncd,nd->nc", _jacobian(plain, x), x), 1e-12)


class NoGradThenViewWrite(nn.Module):
    """no_grad inside forward, then an in-place write into a view that the tape cannot transpose: the natural
    autograd fall-back (where the measured A was 0 before)."""

    def __init__(self, no_grad: bool) -> None:
        super().__init__()
        self.no_grad = no_grad
        self.block = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.no_grad:
            with torch.no_grad():
                h = torch.relu(self.block(x))
        else:
            h = torch.relu(self.block(x))
        h = h * 1.0
        h.view(h.shape[0], 2, 3).mul_(3.0)
        return self.head(torch.relu(h - 0.2))


def test_no_grad_then_an_op_without_transpose_rule_is_exact(dtype):
    torch.manual_seed(0)
    model = NoGradThenViewWrite(no_grad=True).to(dtype).eval()
    plain = NoGradThenViewWrite(no_grad=False).to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(5, 5, dtype=dtype)
    result = affine_map(model, x)
    assert result.path == "autograd" and "in-place operation torch.Tensor.mul_" in result.fallback_reason
    assert _close(result.A, _jacobian(plain, x), default_tolerance(dtype))
    assert float(result.A.abs().max()) > 0.1
    assert_affine_exact(model, x)


@pytest.mark.parametrize("mode", ["detach", "no_grad", "inference_mode", "data"])
def test_detach_inside_forward_keeps_codes_and_the_segment_walk(mode):
    model, plain = _twins(mode, F64, seed=1)
    x = torch.randn(6, 6, dtype=F64)
    codes, ref = partition_codes(model, x), partition_codes(plain, x)
    assert list(codes) == list(ref)
    assert all(torch.equal(codes[k].data, ref[k].data) for k in codes)
    walk, ref_walk = regions_on_segment(model, x[0], x[1]), regions_on_segment(plain, x[0], x[1])
    assert walk.num_regions == ref_walk.num_regions > 1
    assert torch.allclose(walk.breakpoints, ref_walk.breakpoints, rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(DETACH_MODES), double=st.booleans(), seed=st.integers(0, 10_000),
       n=st.integers(1, 5), fallback=st.booleans())
def test_property_detach_like_ops_are_identities(mode, double, seed, n, fallback, monkeypatch):
    dtype = F64 if double else torch.float32
    if fallback:
        monkeypatch.setattr(affine_module, "transpose_rows", lambda tape, *_a, **_k: tape.switch_off("test") or None)
    model, plain = _twins(mode, dtype, seed)
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    result = affine_map(model, x)
    tol = default_tolerance(dtype)
    assert _close(result.A, _jacobian(plain, x), tol)
    assert result.identity_error <= tol
    monkeypatch.undo()


class Straight(torch.autograd.Function):
    """Forward ReLU, backward identity (a straight-through estimator): its autograd graph is not its function."""

    @staticmethod
    def forward(ctx, z):  # noqa: ANN001, ANN205 - torch.autograd.Function signature
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g


def test_custom_autograd_function_exact_on_the_tape_and_caught_on_autograd(monkeypatch):
    """The tape sees the ops the forward runs (A exact); batched autograd would follow the fake backward, and the
    independent identity check catches it instead of returning the straight-through 'Jacobian'."""
    torch.manual_seed(0)
    lin, head = nn.Linear(5, 6).double(), nn.Linear(6, 3).double()

    def model(z):
        return head(Straight.apply(lin(z)))

    def plain(z):
        return head(torch.relu(lin(z)))

    x = torch.randn(4, 5, dtype=F64)
    result = affine_map(model, x)
    assert result.path == "transposed" and _close(result.A, _jacobian(plain, x), 1e-12)
    monkeypatch.setattr(affine_module, "transpose_rows", lambda tape, *_a, **_k: tape.switch_off("test") or None)
    with pytest.raises(ExactnessError, match="torch.autograd.Function whose backward is not the derivative"):
        affine_map(model, x)


# --- 3. two input-dependent operands --------------------------------------------------------------------------------


class TwoOperands(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bil = nn.Bilinear(4, 4, 3)
        self.head = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per form
        h, g = self.a(x), self.b(x)
        form = self.form
        if form == "linear_same_tensor":
            out = F.linear(h, h)
        elif form == "linear_weight":
            out = F.linear(h, g[:3])
        elif form == "conv_weight":
            img = h.view(-1, 1, 2, 2)
            out = F.conv2d(img, img[:2].expand(2, 1, 2, 2)).flatten(1)
        elif form == "bilinear_module_same":
            out = self.bil(h, h)
        elif form == "bilinear_two":
            out = F.bilinear(h, g, self.bil.weight)
        elif form == "mul":
            out = h * g
        elif form == "square":
            out = h * h
        elif form == "matmul":
            out = torch.matmul(h.view(-1, 2, 2), g.view(-1, 2, 2)).flatten(1)
        elif form == "bmm":
            out = torch.bmm(h.view(-1, 2, 2), g.view(-1, 2, 2)).flatten(1)
        elif form == "einsum":
            out = torch.einsum("ni,ni->n", h, g).unsqueeze(1)
        elif form == "div":
            out = torch.div(h, g.abs() + 1)
        else:
            raise AssertionError(form)
        return self.head(torch.relu(out))


TWO_OPERAND_MESSAGES = {
    "linear_same_tensor": ("torch.nn.functional.linear with an input-dependent weight", "quadratic in x"),
    "linear_weight": ("torch.nn.functional.linear with an input-dependent weight", "quadratic in x"),
    "conv_weight": ("torch.nn.functional.conv2d with an input-dependent weight", "quadratic in x"),
    "bilinear_module_same": ("torch.nn.functional.bilinear with both inputs input-dependent (called in module "
                             "'bil' of type Bilinear)", "quadratic in x"),
    "bilinear_two": ("torch.nn.functional.bilinear with both inputs input-dependent", "quadratic in x"),
    "mul": ("torch.Tensor.mul multiplying two input-dependent tensors", "quadratic in x"),
    "square": ("torch.Tensor.mul multiplying two input-dependent tensors", "quadratic in x"),
    "matmul": ("torch.matmul multiplying two input-dependent tensors", "quadratic in x"),
    "bmm": ("torch.bmm multiplying two input-dependent tensors", "quadratic in x"),
    "einsum": ("torch.functional.einsum multiplying two input-dependent tensors", "quadratic in x"),
    "div": ("torch.div dividing by an input-dependent tensor", "1 / t is not affine in t"),
}


@pytest.mark.parametrize("form", list(TWO_OPERAND_MESSAGES))
def test_two_input_dependent_operands_are_named(form):
    torch.manual_seed(0)
    model = TwoOperands(form).double().eval()
    x = torch.randn(4, 4, dtype=F64)
    with torch.no_grad():
        model(x)  # materialise the lazy head
    op, why = TWO_OPERAND_MESSAGES[form]
    for call in (affine_map, partition_codes):
        with pytest.raises(NotPiecewiseAffineError) as info:
            call(model, x)
        assert op in str(info.value) and why in str(info.value)
        if "module '" not in op:
            assert "(called in module '<root>' of type TwoOperands)" in str(info.value)


@pytest.mark.parametrize("form", ["mul", "square", "bilinear_module_same", "matmul", "div"])
def test_two_operands_with_approximate_is_the_local_linearisation(form):
    torch.manual_seed(0)
    model = TwoOperands(form).double().eval()
    x = torch.randn(4, 4, dtype=F64)
    with torch.no_grad():
        model(x)
    with pytest.warns(UserWarning, match="approximate=True"):
        result = affine_map(model, x, approximate=True)
    assert result.approximate and result.bias_fallback.startswith("approximate=True")
    assert _close(result.A, _jacobian(model, x), 1e-12)


class OneSidedBilinear(nn.Module):
    """F.bilinear with exactly one input-dependent operand (first or second): linear in x."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side
        self.a = nn.Linear(5, 4)
        self.bil = nn.Bilinear(4, 3, 6)
        self.head = nn.Linear(6, 2)
        self.register_buffer("const", torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        c = self.const.expand(x.shape[0], 3)
        if self.side == 0:
            out = self.bil(h, c)
        else:
            out = F.bilinear(c, h, self.bil.weight.transpose(1, 2), self.bil.bias)
        return self.head(torch.relu(out))


@pytest.mark.parametrize("path", ["transposed", "autograd"])
@pytest.mark.parametrize("side", [0, 1])
def test_bilinear_with_one_input_dependent_operand_is_exact(side, path, dtype, request):
    if path == "autograd":
        request.getfixturevalue("force_autograd")
    torch.manual_seed(side)
    model = OneSidedBilinear(side).to(dtype).eval()
    x = torch.randn(6, 5, dtype=dtype)
    result = affine_map(model, x)
    assert result.path == path
    assert _close(result.A, _jacobian(model, x), default_tolerance(dtype))
    assert_affine_exact(model, x)


def test_a_number_read_off_the_input_is_not_taken_for_a_constant():
    """``x * h.norm().item()`` is quadratic, and the identity check cannot see it (the map is homogeneous)."""
    lin = nn.Linear(4, 3).double()

    def scaled(z):
        return lin(z) * lin(z).abs().sum().item()

    def shifted(z):
        return lin(z) + float(lin(z)[0].sum())

    x = torch.randn(3, 4, dtype=F64)
    for model in (scaled, shifted):
        with pytest.raises(NotPiecewiseAffineError, match=r"receives the Python number .* read off an input-"):
            affine_map(model, x)


# --- 4. models whose outputs mix the samples of the batch ------------------------------------------------------------

N_MIX = 4


class Mixer(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.first = nn.Linear(5, 4)
        self.across = nn.Linear(N_MIX, N_MIX)
        self.head = nn.Linear(4, 3)
        self.register_buffer("mixing", torch.randn(N_MIX, N_MIX))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: C901 - one branch per form
        h = self.first(x)
        form = self.form
        if form == "flip":
            h = h.flip(0)
        elif form == "sum_keepdim":
            h = h + h.sum(0, keepdim=True)
        elif form == "roll":
            h = torch.roll(h, 1, 0)
        elif form == "batch_mean":
            h = h - h.mean(0)
        elif form == "linear_across_batch":
            h = self.across(h.t()).t()
        elif form == "transpose":
            h = h.transpose(0, 1).flip(1).transpose(0, 1)
        elif form == "full_sum":
            h = h + h.sum()
        elif form == "output_mean":
            return self.head(torch.relu(h)).mean().expand(x.shape[0], 3)
        elif form == "matmul_left":
            h = self.mixing @ h
        elif form == "einsum":
            h = torch.einsum("mn,nd->md", self.mixing, h)
        elif form == "index":
            h = h[torch.tensor([1, 0, 3, 2])]
        elif form == "cat_slices":  # seen only by the diagnosis of the identity check
            h = torch.cat([h[1:], h[:1]])
        elif form == "reshape_flip":  # seen only by the diagnosis of the identity check
            h = h.reshape(-1).flip(0).reshape(x.shape[0], -1)
        else:
            raise AssertionError(form)
        return self.head(torch.relu(h))


STRUCTURAL = ["flip", "sum_keepdim", "roll", "batch_mean", "linear_across_batch", "transpose", "full_sum",
              "output_mean", "matmul_left", "einsum", "index"]


@pytest.mark.parametrize("form", [*STRUCTURAL, "cat_slices", "reshape_flip"])
def test_models_mixing_the_samples_are_refused(form):
    torch.manual_seed(0)
    model = Mixer(form).double().eval()
    x = torch.randn(N_MIX, 5, dtype=F64)
    calls = [affine_map, templates] + ([partition_codes, activations] if form in STRUCTURAL else [])
    for call in calls:
        with pytest.raises(ValueError, match="mix(es)? the samples of the batch") as info:
            call(model, x)
        assert "cnnlens.spline needs per-sample models" in str(info.value)
        if form in STRUCTURAL and form != "output_mean":
            assert "(called in module '<root>' of type Mixer)" in str(info.value)


class PerSample(nn.Module):
    """Per-sample models that touch dim 0 or shapes equal to the batch size: they must not be refused."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.first = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def net(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.first(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.form == "test_time_flip":  # doubled batch, averaged back
            return self.net(torch.cat([x, x.flip(1)])).view(2, n, 3).mean(0)
        if self.form == "loop":
            return torch.cat([self.net(x[i:i + 1]) for i in range(n)])
        if self.form == "stack_sum":
            h = self.first(x)
            return self.head(torch.relu(torch.stack([h, 0.5 * h]).sum(0)))
        if self.form == "unsqueeze_pool":  # a leading dim of size n that is not the batch
            h = torch.relu(self.first(x)).unsqueeze(0)
            return self.head(F.avg_pool1d(h.transpose(1, 2), 1).transpose(1, 2).squeeze(0) * 1.0)
        if self.form == "control_flow_on_sum":
            h = torch.relu(self.first(x))
            return self.head(h if h.sum() > 0 else -h)
        raise AssertionError(self.form)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("form", ["test_time_flip", "loop", "stack_sum", "control_flow_on_sum"])
def test_per_sample_models_touching_dim_zero_stay_exact(form, n):
    torch.manual_seed(0)
    model = PerSample(form).double().eval()
    x = torch.randn(n, 5, dtype=F64)
    result = affine_map(model, x)
    assert _close(result.A, _jacobian(model, x), 1e-12)
    assert result.identity_error <= 1e-12
    assert_affine_exact(model, x)


# --- 5. half precision ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_with_the_expected_error_size(half):
    model = lenet5().eval().to(half)
    x = torch.rand(2, 1, 32, 32).to(half)
    name = str(half).removeprefix("torch.")
    for call in (affine_map, templates, propagated_bias, assert_affine_exact):
        with pytest.raises(TypeError, match=rf"needs float32 or float64; received {name}\..* up to "
                                             r"(1\.1e-3|8\.8e-3) of the outputs already on LeNet-5"):
            call(model, x)
    assert set(partition_codes(model, x)) == set(partition_codes(model.float(), x.float()))


def test_the_half_precision_error_sizes_hold():
    """The sizes the refusal quotes: the identity error of LeNet-5 with B propagated, per dtype (5e-7 in float32)."""
    torch.manual_seed(0)
    x = torch.rand(16, 1, 32, 32)
    errors = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        chunk = _chunk_map(lenet5().eval().to(dt), x.to(dt), None, False)
        errors[dt] = float(chunk.offset.errors.float().max())
    assert errors[torch.float32] < 1e-6
    assert 1e-4 < errors[torch.float16] <= 1.1e-3
    assert 1e-3 < errors[torch.bfloat16] <= 8.8e-3


# --- 6. B propagated and checked ------------------------------------------------------------------------------------


def _small_net(seed: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3), nn.Hardtanh(-0.5, 0.7), nn.Flatten(), nn.Linear(4, 3)).to(dtype).eval()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), double=st.booleans(), n=st.integers(1, 4), fallback=st.booleans())
def test_property_b_is_the_offset_of_the_region(seed, double, n, fallback):
    """B equals f(x) - J x with J from jacrev (computed without the engine), on both paths."""
    dtype = F64 if double else torch.float32
    net = _small_net(seed, dtype)
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    original = affine_module.transpose_rows
    if fallback:
        affine_module.transpose_rows = lambda tape, *_a, **_k: tape.switch_off("test") or None
    try:
        result = affine_map(net, x)
        t = templates(net, x, classes=[2, 0])
    finally:
        affine_module.transpose_rows = original
    tol = default_tolerance(dtype)
    jac = _jacobian(net, x)
    with torch.no_grad():
        offset = net(x) - torch.einsum("ncd,nd->nc", jac, x.reshape(n, -1))
    scale = float(net(x).abs().max().clamp_min(1.0))
    assert float((result.B - offset).abs().max()) <= tol * scale
    assert result.identity_error <= tol and t.identity_error <= tol
    # the same rows up to rounding (the sweep folds batch-norms for some numbers of rows and not others)
    assert float((t.biases - result.B[:, [2, 0]]).abs().max()) <= tol * scale


class Escapes(nn.Module):
    """Part of the forward runs where the capture cannot see, or is not the same function on every call."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.first = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        if self.form == "numpy":
            h = h + torch.from_numpy(h.numpy() * 2.0)
        elif self.form == "random":
            h = h + 0.1 * torch.rand(h.shape, dtype=h.dtype)
        return self.head(h)


def test_escapes_fail_the_independent_identity_check():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=F64)
    with pytest.raises(ExactnessError, match=r"A x \+ B differs from f\(x\) by .* escaped the capture"):
        affine_map(Escapes("numpy").double().eval(), x)
    with pytest.raises(ExactnessError, match="The model is not deterministic"):
        templates(Escapes("random").double().eval(), x)
    with pytest.raises(AssertionError, match="affine map not exact"):
        assert_affine_exact(Escapes("numpy").double().eval(), x)


def test_assert_affine_exact_catches_a_wrong_a_that_the_identity_misses(monkeypatch):
    """A corrupted A whose error is orthogonal to x keeps A x + B == f(x); the directional check sees it."""
    net = _small_net(3, F64)
    x = torch.randn(3, 1, 6, 6, dtype=F64)
    original = affine_module.transpose_rows

    def corrupted(tape, xt, y, rows, out=None, bias=None):
        a = original(tape, xt, y, rows, out=out, bias=bias)
        flat = xt.reshape(xt.shape[0], 1, -1)
        noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0), dtype=a.dtype)
        noise = noise - (noise * flat).sum(-1, keepdim=True) / (flat * flat).sum(-1, keepdim=True) * flat
        return a.add_(0.01 * noise)  # in place: the rows are written into A's storage

    monkeypatch.setattr(affine_module, "transpose_rows", corrupted)
    assert affine_map(net, x).identity_error <= 1e-12  # the identity alone cannot tell
    with pytest.raises(AssertionError, match="finite-difference derivative of the model along a random direction"):
        assert_affine_exact(net, x)
    monkeypatch.undo()
    stats = assert_affine_exact(net, x)
    assert stats["directional_max_rel_error"] <= 1e-8 and stats["directional_samples_skipped"] == 0


def test_the_identity_error_is_on_the_results(dtype):
    net = _small_net(0, dtype)
    x = torch.randn(4, 1, 6, 6, dtype=dtype)
    result, t = affine_map(net, x, chunk_size=3), templates(net, x)
    for value in (result.identity_error, t.identity_error):
        assert 0 <= value <= default_tolerance(dtype)
    assert result.bias_fallback is None and t.bias_fallback is None


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("target", ["bn_weight", "bn_bias", "running_mean", "running_var", "conv_weight"])
def test_parameters_changed_through_data_between_calls_are_used(target, dtype):
    """Writes through ``.data`` do not count in a tensor's version counter; the second map must still be that of
    the changed model (A against jacrev, the identity with B propagated)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 4))
    net = net.to(dtype).eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 2, 6, 6, dtype=dtype)
    before = affine_map(net, x)
    tensor = {"bn_weight": net[1].weight, "bn_bias": net[1].bias, "running_mean": net[1].running_mean,
              "running_var": net[1].running_var, "conv_weight": net[0].weight}[target]
    tensor.data.mul_(1.7).add_(0.3)
    after = affine_map(net, x)
    assert after.path == "transposed"
    assert _close(after.A, _jacobian(net, x), 1e-5 if dtype == torch.float32 else 1e-10)
    assert after.identity_error <= default_tolerance(dtype)  # A x + B == f(x), B propagated
    assert not _close(after.A, before.A, 1e-3) or not _close(after.B, before.B, 1e-3)  # the change was seen


class ClampsItsStatistics(nn.Module):
    """A batch-norm whose running variance the forward clamps after using it (idempotent once clamped): in place,
    through ``.data`` (which does not move the version counter) or into an ``out=`` argument."""

    def __init__(self, writer: str) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.Linear(5 * 16, 3)
        self.writer = writer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        var = self.bn.running_var
        with torch.no_grad():
            if self.writer == "out_argument":
                torch.clamp(var, min=0.5, out=var)
            else:
                (var.data if self.writer == "through_data" else var).clamp_(min=0.5)
        return self.fc(torch.relu(h).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("writer", ["in_place", "through_data", "out_argument"])
def test_statistics_written_after_their_use_keep_the_values_the_pass_used(writer, dtype):
    """The batch-norm forms are computed after the pass, and before a later in-place write into their statistics
    (Tape.before_write): the sweep runs with the values the pass used and the map is exact. (Computed only after
    the pass, the in-place form would switch the tape off, and the autograd fall-back fails on this model: autograd
    saved the variance the write changed.)"""
    torch.manual_seed(2)
    net = ClampsItsStatistics(writer).to(dtype).eval()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.1, 2.0)
        net(torch.zeros(1, 2, 6, 6, dtype=dtype))  # clamps once: later passes compute one fixed function
    x = torch.randn(3, 2, 6, 6, dtype=dtype)
    result = affine_map(net, x)
    assert result.path == "transposed"
    reference = _finite_differences(copy.deepcopy(net).double(), x.double())  # autograd refuses this model
    assert _close(result.A.double(), reference, 1e-4 if dtype == torch.float32 else 1e-7)
    assert result.identity_error <= default_tolerance(dtype)
