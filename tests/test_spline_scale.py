"""The spline engine at scale (issue 10, sec. 3): class subsets, the memory budget and its chunking, the fast exact
forms of the transposed sweep, and the hand-written ResNet-18 / VGG-11-BN / MobileNet-v1 against torch.func.jacrev.

Speed and peak memory at ImageNet scale are measured in ``benchmarks/bench_imagenet.py``, not here.
"""

from __future__ import annotations

import contextlib
import weakref
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cnnlens.nn.models import get_model, lenet5, mobilenet_v1, resnet18, small_resnet, vgg11_bn
from cnnlens.spline import _affine as affine_module
from cnnlens.spline import _capture as capture_module
from cnnlens.spline import affine_map, partition_codes, templates
from cnnlens.spline._capture import Capture, capture, run_captured
from cnnlens.spline._transpose import (
    Tape,
    _conv_form,
    _conv_params,
    _conv_t,
    _conv_t_phases,
    _conv_t_planes,
    _is_channels_last,
    _onednn,
    tape_bytes,
)
from conftest import tol

_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP contention on the shared CI machine (conftest restores it)."""
    torch.set_num_threads(1)


def _randomise_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding batch-norm into weights matters."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.randn(n, generator=gen))
            mod.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, D) by torch.func.jacrev, one sample at a time: independent of the capture and the sweep."""
    jac = torch.func.vmap(torch.func.jacrev(lambda z: model(z[None])[0]))(x)
    return jac.reshape(x.shape[0], jac.shape[1], -1).detach()


def _autograd_rows(model: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, rows, D) by plain autograd on the batch itself, one backward pass per row: the model's own kernels at the
    model's own batch size, so a max-pool breaks ties as in the map's recording pass (vmap's batched kernels can
    round differently and then pick another of two equal values)."""
    xi = x.clone().requires_grad_(True)
    y = model(xi)
    grads = [torch.autograd.grad(y[:, c].sum(), xi, retain_graph=True)[0].flatten(1) for c in range(rows)]
    return torch.stack(grads, 1).detach()


def _recorded(model: nn.Module, x: torch.Tensor) -> Tape:
    """The tape of one recording pass of ``model`` at ``x`` (what the sweep of affine_map runs on)."""
    tape = Tape()
    with torch.no_grad(), capture(model, cap=Capture(graph=False, tape=tape)) as cap:
        run_captured(cap, model, x)
    return tape


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


_IMAGENET = {"resnet18": (resnet18, {"width": 8}), "vgg11-bn": (vgg11_bn, {"width": 8, "hidden": 32}),
             "mobilenet-v1": (mobilenet_v1, {"width": 8})}


@pytest.mark.parametrize("name", list(_IMAGENET))
def test_imagenet_models_equal_jacrev(name: str, dtype: torch.dtype) -> None:
    """A of the hand-written ImageNet models (narrow, 32x32) equals jacrev; in float32 this runs the oneDNN forms
    (phases for the stem, channels-last transposed convolutions, depthwise)."""
    builder, config = _IMAGENET[name]
    torch.manual_seed(1)
    model = _randomise_batch_norm(builder(num_classes=10, **config), seed=2).to(dtype)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    res = affine_map(model, x)
    assert res.path == "transposed", res.fallback_reason
    assert res.A.shape == (2, 10, 3 * 32 * 32)
    assert _rel(res.A, _jacobian(model, x)) <= tol(dtype)
    with torch.no_grad():
        out = model(x)
    assert _rel(torch.einsum("ncd,nd->nc", res.A, x.flatten(1)) + res.B, out) <= tol(dtype)


def _conv_forms(model: nn.Module, x: torch.Tensor, rows: int) -> set[str]:
    tape = _recorded(model, x)
    cotangent = lambda t: (rows * t.shape[0], *t.shape[1:])  # noqa: E731 - R rows of every sample
    forms = {}
    for n in tape.plan(rows):
        if n.kind == "conv":
            weight = n.data.get("weight", n.data["args"][1])
            form = _conv_form(cotangent(n.out), n.ins[0].shape, weight.shape,
                              _conv_params(n.data["func"], n.data["args"]), _onednn(x), _is_channels_last(weight))
            assert (form == "channels_last") == _is_channels_last(weight)  # the layout is held for that form only
            forms[form] = forms.get(form, 0) + 1
    return forms


def test_fast_conv_forms_and_batch_norm_folding() -> None:
    """On oneDNN (float32 on CPU) a narrow ResNet-18 takes the phase, pointwise and channels-last forms (so the
    jacrev test above exercises them), and float64 takes none of them. The channels-last form holds the weight in
    that order, for the layers whose weight is at most twice the R cotangents of their output: at 32x32 from some
    R on, at 224x224 the first layers already at R = 1. Batch-norm is folded into a convolution's weight when that
    is cheaper than scaling the R cotangents: all of them for 1000 rows, not the wide layers for one."""
    model = resnet18(num_classes=10, width=8).eval()
    x = torch.randn(1, 3, 32, 32)
    if _onednn(x):
        assert {"phases", "channels_last", "pointwise"} <= set(_conv_forms(model, x, rows=10))
        assert "channels_last" not in _conv_forms(model, x, rows=1)
        assert "pointwise" in _conv_forms(model, x, rows=1)
        wide = resnet18(num_classes=10, width=16).eval()
        forms = _conv_forms(wide, torch.randn(1, 3, 224, 224), rows=1)
        assert 0 < forms.get("channels_last", 0) and 0 < forms.get("backward", 0)
    assert not {"phases", "channels_last", "pointwise"} & set(_conv_forms(model.double(), x.double(), rows=10))
    tape = _recorded(model, x.double())
    assert not any(n.kind == "channel_scale" for n in tape.plan(1000))
    assert 0 < sum(n.kind == "channel_scale" for n in tape.plan(1)) < 20


@settings(max_examples=60, **_SETTINGS)
@given(cin=st.integers(1, 24), cout=st.integers(1, 24), k=st.integers(1, 5), stride=st.integers(1, 3),
       pad=st.integers(0, 3), dil=st.integers(1, 2), grouped=st.booleans(), size=st.integers(5, 12),
       batch=st.integers(1, 3), double=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 1000))
def test_conv_transpose_forms_equal_autograd(cin, cout, k, stride, pad, dil, grouped, size, batch, double,
                                             channels_last, seed):
    """Every form of the transposed convolution (whichever ``_conv_form`` picks, with the weight in either order)
    equals autograd's input gradient of ``F.conv2d``; the phase form also on its own, in 1-d, 2-d and 3-d."""
    dtype = torch.float64 if double else torch.float32
    groups = cin if grouped else 1
    cout = cout * groups if grouped else cout
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin // groups, k, k, generator=gen, dtype=dtype)
    x = torch.randn(batch, cin, size, size, generator=gen, dtype=dtype, requires_grad=True)
    pad = min(pad, k - 1)
    if (size + 2 * pad - dil * (k - 1) - 1) < 0:
        return
    out = F.conv2d(x, weight, None, stride, pad, dil, groups)
    g = torch.randn(out.shape, generator=gen, dtype=dtype)
    (ref,) = torch.autograd.grad(out, x, g)
    held = weight.contiguous(memory_format=torch.channels_last) if channels_last else weight
    mine = _conv_t(g, x.shape, F.conv2d, (x, weight, None, stride, pad, dil, groups), held)
    assert mine.shape == x.shape
    assert _rel(mine, ref) <= tol(dtype)
    for d, conv in ((1, F.conv1d), (2, F.conv2d), (3, F.conv3d)):
        if stride == 1 or dil != 1:
            break
        shape = (batch, cin, *[size - i for i in range(d)])
        xd = torch.randn(shape, generator=gen, dtype=dtype, requires_grad=True)
        wd = torch.randn(cout, cin, *[k] * d, generator=gen, dtype=dtype)
        if any(n + 2 * pad - k < 0 for n in shape[2:]):
            continue
        od = conv(xd, wd, None, stride, pad)
        gd = torch.randn(od.shape, generator=gen, dtype=dtype)
        (refd,) = torch.autograd.grad(od, xd, gd)
        assert _rel(_conv_t_phases(gd, wd, (stride,) * d, (pad,) * d, xd.shape), refd) <= tol(dtype)


@settings(max_examples=40, **_SETTINGS)
@given(cout=st.integers(1, 8), k=st.integers(1, 5), pad=st.integers(0, 4), size=st.integers(5, 10),
       batch=st.integers(1, 40), chunk=st.integers(1, 16), dims=st.sampled_from([1, 2]), double=st.booleans(),
       seed=st.integers(0, 1000))
def test_planes_form_in_chunks_equals_autograd(cout, k, pad, size, batch, chunk, dims, double, seed):
    """The "planes" form (one input channel, stride 1: LeNet-5's first layer) in chunks that share their two buffers,
    the last chunk shorter, equals autograd's input gradient of the convolution, in 1-d and 2-d."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    pad = min(pad, k - 1)
    conv = (F.conv1d, F.conv2d)[dims - 1]
    x = torch.randn(batch, 1, *[size] * dims, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(cout, 1, *[k] * dims, generator=gen, dtype=dtype)
    out = conv(x, weight, None, 1, pad)
    g = torch.randn(out.shape, generator=gen, dtype=dtype)
    (ref,) = torch.autograd.grad(out, x, g)
    mine = _conv_t_planes(g, weight, (pad,) * dims, x.shape, chunk=chunk)
    assert mine.shape == x.shape
    assert _rel(mine, ref) <= tol(dtype)


@settings(max_examples=40, **_SETTINGS)
@given(cout=st.integers(1, 6), k=st.integers(1, 4), pool=st.integers(1, 3), stride=st.integers(1, 3),
       size=st.integers(4, 9), batch=st.integers(1, 12), chunk=st.integers(1, 9), double=st.booleans(),
       seed=st.integers(0, 1000))
def test_planes_form_scatters_a_pooled_cotangent(cout, k, pool, stride, size, batch, chunk, double, seed):
    """The "planes" form given the cotangent of a max-pool of the convolution (its argmax per sample): each chunk is
    scattered to the argmax straight into the form's buffer, also when a chunk's rows wrap around the samples (R*N
    cotangents of N samples) and when windows overlap (stride < pool: two outputs can share an argmax). Equals
    autograd's input gradient of ``max_pool(conv(x))`` on integer-valued inputs (ties in the windows)."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    k = min(k, size)
    x = torch.randint(-2, 3, (batch, 1, size, size), generator=gen).to(dtype).requires_grad_()
    weight = torch.randint(-1, 2, (cout, 1, k, k), generator=gen).to(dtype)
    y = F.conv2d(x, weight)
    pooled, idx = F.max_pool2d(y, min(pool, y.shape[-1]), stride, return_indices=True)
    rows = 3  # the sweep's cotangents are R*N, row-major in (R, N): each sample's argmax serves R of them
    g = torch.randn(rows, *pooled.shape, generator=gen, dtype=dtype)
    ref = torch.stack([torch.autograd.grad(pooled, x, g[r], retain_graph=True)[0] for r in range(rows)])
    mine = _conv_t_planes(g.flatten(0, 1), weight, (0, 0), x.shape, chunk=chunk, pool=(idx, y.shape))
    assert mine.shape == (rows * batch, *x.shape[1:])
    assert _rel(mine, ref.flatten(0, 1)) <= tol(dtype)


@settings(max_examples=40, **_SETTINGS)
@given(unit=st.sampled_from(["relu", "relu_", "none", "leaky"]), norm=st.booleans(), bias=st.booleans(),
       k=st.integers(2, 3), pool=st.integers(2, 3), stride=st.integers(1, 3), pad=st.integers(0, 1),
       size=st.integers(6, 10), batch=st.integers(1, 3), rows=st.sampled_from([1, 5]), dims=st.sampled_from([1, 2, 3]),
       double=st.booleans(), seed=st.integers(0, 1000))
def test_a_pool_merged_into_a_planes_convolution(unit, norm, bias, k, pool, stride, pad, size, batch, rows, dims,
                                                 double, seed):
    """A one-channel convolution (the "planes" form: LeNet-5's first layer), [batch-norm,] a ReLU-like unit or none,
    then a max-pool, in 1-d, 2-d and 3-d: the sweep merges the pool into the convolution where the pool alone reads
    its output, and never makes the pre-pool cotangent. A equals jacrev and B equals f(x) - A x with jacrev's A
    (independent of the sweep, which propagates the biases at the pooled size), for one and several rows, float32
    and float64, on integer-valued inputs (exact zeros and ties). The reference is autograd on the batch itself
    (:func:`_autograd_rows`): under vmap, a 3-d batch-norm's output rounded differently and the pool took the other
    of two tied values (found by hypothesis: 0.61 relative, where plain autograd agreed with the map to 8e-8)."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    units = {"relu": nn.ReLU(), "relu_": nn.ReLU(inplace=True), "none": nn.Identity(), "leaky": nn.LeakyReLU(0.1)}
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    norm_layer = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    max_pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dims - 1]
    size = size if dims < 3 else size // 2 + 2  # (3-d: 5-7 per side, at most 343 inputs for jacrev)
    layers = [conv(1, 3, k, padding=min(pad, k - 1), bias=bias), *([norm_layer(3)] if norm else []),
              units[unit], max_pool(pool, stride, min(pad, pool // 2)), nn.Flatten(), nn.LazyLinear(5)]
    model = nn.Sequential(*layers).to(dtype)
    x = torch.randint(-2, 3, (batch, 1, *[size] * dims), generator=gen).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(-1, 2, model[0].weight.shape, generator=gen).to(dtype))
        model(x)  # materialise the lazy layer
    _randomise_batch_norm(model, seed)
    tape = _recorded(model, x)
    kinds = [n.kind for n in tape.plan(rows)]
    if unit != "leaky" and not norm:  # (a leaky unit's factor, a batch-norm, fold into their neighbours or not)
        assert "pooled_planes" in kinds and "gather" not in kinds
    res = affine_map(model, x, classes=list(range(rows)))
    assert res.path == "transposed"
    jac = _autograd_rows(model.eval(), x, rows)
    assert _rel(res.A, jac) <= tol(dtype)
    with torch.no_grad():
        b = model(x)[:, :rows] - torch.einsum("ncd,nd->nc", jac, x.flatten(1))
    assert float((res.B - b).abs().max()) <= tol(dtype) * (1 + float(b.abs().max()))


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "pad", "groups"),
                         [(16, 16, 3, 1, 1, 1), (16, 32, 3, 2, 1, 1), (32, 16, 5, 3, 2, 1), (32, 32, 3, 1, 1, 32),
                          (16, 48, 3, 2, 0, 16)])
def test_channels_last_form_equals_autograd(cin, cout, k, stride, pad, groups, dtype) -> None:
    """The channels-last form (a full kernel held in that order; grouped layers from 4 cotangents on, oneDNN)
    equals autograd's input gradient, for 1 and 5 cotangents; in float64 the same weight takes PyTorch's kernel."""
    gen = torch.Generator().manual_seed(cin + cout + k)
    weight = torch.randn(cout, cin // groups, k, k, generator=gen, dtype=dtype)
    x = torch.randn(1, cin, 15, 15, generator=gen, dtype=dtype, requires_grad=True)
    out = F.conv2d(x, weight, None, stride, pad, 1, groups)
    held = weight.contiguous(memory_format=torch.channels_last)
    params = (x, weight, None, stride, pad, 1, groups)
    for rows in (1, 5):
        g = torch.randn(rows, *out.shape[1:], generator=gen, dtype=dtype)
        form = _conv_form(g.shape, x.shape, held.shape, _conv_params(F.conv2d, params), _onednn(x), True)
        assert (form == "channels_last") == (_onednn(x) and (groups == 1 or rows >= 4))
        mine = _conv_t(g, x.shape, F.conv2d, params, held)
        refs = torch.cat([torch.autograd.grad(out, x, g[i:i + 1], retain_graph=True)[0] for i in range(rows)])
        assert _rel(mine, refs) <= tol(dtype)


class _Shared(nn.Module):
    """Cotangents shared between several inputs (a tensor used twice, residual sums, concatenation, views, in-place
    ReLU) and batch-norm after a convolution used once (folded) and used twice (not folded), and after a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 6)
        self.bn1d = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)), inplace=True)
        u = self.conv2(torch.cat([h, h * 2 + h], dim=1))
        v = self.bn2(u) + u  # u read twice: bn2 is not folded into conv2
        z = F.relu(self.bn1d(self.fc(v.flatten(1))))
        return self.out(z + z)


def test_shared_cotangents_and_folded_batch_norm_equal_jacrev(dtype: torch.dtype) -> None:
    model = _randomise_batch_norm(_Shared(), seed=3).to(dtype)
    x = torch.randn(4, 2, 8, 8, dtype=dtype)
    res = affine_map(model, x)
    assert res.path == "transposed", res.fallback_reason
    assert _rel(res.A, _jacobian(model, x)) <= tol(dtype)


def _small(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_batch_norm(small_resnet(num_classes=10, width=4), seed=0).to(dtype)


@settings(max_examples=15, **_SETTINGS)
@given(classes=st.lists(st.integers(0, 9), min_size=1, max_size=12), double=st.booleans(), seed=st.integers(0, 99))
def test_class_subset_rows_equal_full_rows(classes, double, seed):
    """``classes`` (any order, repeats allowed) gives the full map's rows, for A, B and the templates."""
    dtype = torch.float64 if double else torch.float32
    model = _small(dtype)
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    full = affine_map(model, x)
    sub = affine_map(model, x, classes)
    assert sub.A.shape == (3, len(classes), 144) and sub.B.shape == (3, len(classes))
    assert _rel(sub.A, full.A[:, classes]) <= tol(dtype)
    assert float((sub.B - full.B[:, classes]).abs().max()) <= tol(dtype) * float(full.B.abs().max().clamp_min(1))
    tpl = templates(model, x, torch.tensor(classes))
    assert tpl.classes.tolist() == classes
    assert _rel(tpl.templates.flatten(2), full.A[:, classes]) <= tol(dtype)


def _linearised(approximate: bool) -> contextlib.AbstractContextManager:
    return pytest.warns(UserWarning, match="not piecewise affine") if approximate else contextlib.nullcontext()


@pytest.mark.parametrize("approximate", [False, True])
def test_chunked_by_classes_and_samples_equals_unchunked(dtype: torch.dtype, approximate: bool) -> None:
    """A budget just above the minimum forces chunks of samples and of classes (also on the autograd path of
    approximate=True); the result equals the unchunked one and the chunking follows the budget."""
    model = _small(dtype)
    if approximate:
        model.stem[2] = nn.GELU()  # not piecewise affine: linearised, computed by batched autograd
    x = torch.randn(5, 1, 12, 12, dtype=dtype)
    with _linearised(approximate):
        full = affine_map(model, x, approximate=approximate)
    assert full.chunking.samples == 5 and full.chunking.classes == 10
    low, high = full.chunking.minimum, full.chunking.estimate
    budgets = [low + (high - low) // 2, low + (high - low) // 6, low]
    for budget in budgets:
        with _linearised(approximate):
            part = affine_map(model, x, max_memory=budget, approximate=approximate)
        chunks = part.chunking
        assert chunks.budget == budget and chunks.estimate <= budget
        assert chunks.samples < 5 or chunks.classes < 10
        assert _rel(part.A, full.A) <= tol(dtype)
        assert float((part.B - full.B).abs().max()) <= tol(dtype) * float(full.B.abs().max().clamp_min(1))
    assert chunks.samples == 1 and chunks.classes == 1  # the minimum budget: one class of one sample at a time
    # chunk_size fixes the samples per chunk; the budget then chunks the classes
    with _linearised(approximate):
        least = affine_map(model, x, chunk_size=2, approximate=approximate).chunking.minimum
        fixed = affine_map(model, x, chunk_size=2, max_memory=least, approximate=approximate)
    assert fixed.chunking.samples == 2 and fixed.chunking.classes == 1
    assert _rel(fixed.A, full.A) <= tol(dtype)


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive (every aten op's outputs;
    storages of ``known`` tensors, created before, are not counted). Backend scratch memory is invisible here."""

    def __init__(self, *known: torch.Tensor) -> None:
        super().__init__()
        self.skip = {t.untyped_storage().data_ptr() for t in known}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and key not in self.skip and storage.nbytes() > 0:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._freed, key)
        return out


@pytest.mark.parametrize("name", ["lenet5", "small-resnet", "mobilenet-v1"])
def test_tensor_memory_stays_within_the_budget(name: str, dtype: torch.dtype) -> None:
    """The tensors alive at any time during affine_map (A, the recorded passes, the cotangents) take at most the
    budget, for budgets from generous to the minimum; measured by a dispatch mode, independently of the estimate."""
    config = {"width": 4, "in_channels": 1} if name == "mobilenet-v1" else {}
    model = _randomise_batch_norm(get_model(name, num_classes=10, **config), seed=1).to(dtype)
    x = torch.randn(6, 1, 32, 32, dtype=dtype)
    full = affine_map(model, x)
    low, high = full.chunking.minimum, full.chunking.estimate
    for budget in (high, (high + low) // 2, low + (high - low) // 8, low):
        with _LiveTensorBytes(x, *model.parameters(), *model.buffers()) as live:
            res = affine_map(model, x, max_memory=int(budget))
        assert live.peak <= budget, (live.peak, res.chunking)
        assert _rel(res.A, full.A) <= tol(dtype)


def test_bad_classes_and_budgets_raise_clear_errors() -> None:
    model = lenet5().eval()
    x = torch.rand(2, 1, 32, 32)
    for bad in ([], [10], [-1], [1.5], "a", torch.tensor([True])):
        with pytest.raises(ValueError, match="classes must"):
            affine_map(model, x, bad)
    for bad in (0, -5, "lots", "2 parsecs", "-1GB", 1.5, True, "nanGB"):
        with pytest.raises(ValueError, match="max_memory must be a positive number of bytes"):
            affine_map(model, x, max_memory=bad)
    with pytest.raises(ValueError, match=r"max_memory=.* is too small: A alone takes .*Raise max_memory to at least"):
        affine_map(model, x, max_memory=1000)
    tiny = affine_map(model, x).A.numel() * 4 + 10  # A fits, but not one class of the sweep
    with pytest.raises(ValueError, match="too small"):
        affine_map(model, x, max_memory=tiny)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        affine_map(model, x, chunk_size=True)


def test_memory_sizes_and_the_default_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = affine_module._parse_memory
    assert parse("2GB") == 2 * 10**9 and parse("1.5 GiB") == 3 * 2**29 and parse("512mb") == 512 * 10**6
    assert parse("1e9") == 10**9 and parse(4096) == 4096 and parse(" 3 KiB ") == 3072 and parse(None) is None
    gib = 2**30
    monkeypatch.setattr(affine_module, "_free_memory", lambda device, enough=None: None)
    assert affine_module._default_budget(10, torch.device("cpu")) == gib  # at least 1 GiB
    assert affine_module._default_budget(3 * gib, torch.device("cpu")) == 6 * gib  # twice A
    monkeypatch.setattr(affine_module, "_free_memory", lambda device, enough=None: 4 * gib)
    assert affine_module._default_budget(3 * gib, torch.device("cpu")) == 6 * gib  # A + 3/4 of 4 GiB
    monkeypatch.setattr(affine_module, "_free_memory", lambda device, enough=None: 2 * gib)
    assert affine_module._default_budget(3 * gib, torch.device("cpu")) == 3 * gib + 3 * gib // 2
    monkeypatch.undo()
    free = affine_module._free_memory(torch.device("cpu"))
    assert free is None or free > 0
    if free is not None:  # the free pages spare reading MemAvailable only where its cap would not bind
        for a in (10, gib, 2 * free):
            read = affine_module._free_memory(torch.device("cpu"))
            expected = min(max(2 * a, gib), a + read * 3 // 4)
            assert abs(affine_module._default_budget(a, torch.device("cpu")) - expected) <= 0.02 * expected
        floor = affine_module._free_memory(torch.device("cpu"), enough=1)
        assert 0 < floor <= affine_module._free_memory(torch.device("cpu")) + 2**26  # MemFree <= MemAvailable


def test_imagenet_models_layout() -> None:
    """Parameter counts of torchvision's ResNet-18 and VGG-11-BN and of MobileNet-v1 (paper: 4.2 M), and
    torchvision's parameter names; built on the meta device (no memory)."""
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in get_model(name).parameters()) for name in _IMAGENET}
        r18 = resnet18()
        vgg = vgg11_bn(in_channels=1, num_classes=7)
    assert counts == {"resnet18": 11_689_512, "vgg11-bn": 132_868_840, "mobilenet-v1": 4_231_976}
    names = set(r18.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias",
            "fc.weight"} <= names
    assert {"features.0.weight", "features.1.running_mean", "classifier.6.weight"} <= set(vgg.state_dict())
    assert vgg.features[0].in_channels == 1 and vgg.classifier[6].out_features == 7
    for builder in (resnet18, vgg11_bn, mobilenet_v1):
        with pytest.raises(ValueError, match="width"):
            builder(width=0)


def test_relu_units_are_held_as_one_byte_masks(dtype) -> None:
    """Between the recording and the sweep the tape holds a ReLU's mask (one byte per unit), not a float factor:
    the held bytes of a bias-free conv/ReLU net are exactly its units, and the map is still jacrev's."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 3, 3, bias=False),
                          nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False)).to(dtype)
    x = torch.randn(2, 2, 6, 6, dtype=dtype)
    tape = _recorded(model, x)
    relus = [n for n in tape.plan(1) if n.kind == "scale"]
    assert len(relus) == 2 and all(set(n.data) - {"nonzero"} == {"mask"} and n.data["mask"].dtype == torch.bool
                                for n in relus)
    assert tape_bytes(tape)[0] == 2 * (4 * 6 * 6 + 3 * 4 * 4)
    res = affine_map(model, x)
    assert res.path == "transposed" and _rel(res.A, _jacobian(model, x)) <= tol(dtype)


class _GlobalPool(nn.Module):
    """conv -> ReLU -> adaptive average pooling to ``out`` -> linear, in 1, 2 or 3 spatial dimensions."""

    def __init__(self, dims: int, out: int) -> None:
        super().__init__()
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](2, 5, 3, padding=1)
        self.pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[dims - 1](out)
        self.fc = nn.Linear(5 * out ** dims, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize(("dims", "out", "kind"), [(1, 1, "global_mean"), (2, 1, "global_mean"),
                                                     (3, 1, "global_mean"), (2, 2, "generic")])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_global_average_pooling_has_its_own_rule(dims, out, kind, layout, dtype) -> None:
    """Average pooling to one position per channel (ResNet's head) is transposed by its own rule, 1 / (positions)
    of the channel's cotangent at every position; other adaptive poolings keep autograd's VJP. Both equal jacrev,
    with one and with several rows per sweep."""
    torch.manual_seed(dims + out)
    model = _GlobalPool(dims, out).to(dtype).eval()
    x = torch.randn(3, 2, *[5 + d for d in range(dims)], dtype=dtype)
    if layout == "channels_last":
        if dims != 2:
            pytest.skip("channels-last order is defined for 4-d tensors")
        x = x.contiguous(memory_format=torch.channels_last)
    tape = _recorded(model, x)
    assert kind in {n.kind for n in tape.plan(1)}
    reference = _jacobian(model, x)
    for one_row in (False, True):  # all four rows in one sweep, or one row per sweep
        res = affine_map(model, x, classes=[0] if one_row else None)
        assert res.path == "transposed" and _rel(res.A, reference[:, :1] if one_row else reference) <= tol(dtype)
        assert res.identity_error <= tol(dtype)


@settings(max_examples=40, **_SETTINGS)
@given(unit=st.sampled_from(["relu", "relu_", "leaky", "threshold"]), k=st.integers(2, 3), stride=st.integers(1, 3),
       pad=st.integers(0, 1), size=st.integers(5, 9), batch=st.integers(1, 3), rows=st.sampled_from([1, 5]),
       double=st.booleans(), seed=st.integers(0, 1000))
def test_mask_at_the_argmax_of_a_pooled_relu(unit, k, stride, pad, size, batch, rows, double, seed):
    """A ReLU followed by a max-pool: the recording pass reads the ReLU's mask at the argmax off the pooled values
    (``picked``, where the maximum is not 0) and the sweep applies it at the pooled positions. On integer-valued
    inputs (many exact zeros and ties in every window) ``picked`` equals the mask gathered at the argmax, it is
    recorded for a ReLU only (not for a leaky ReLU, nor a threshold whose mask is not ``out != 0``), and A equals
    jacrev for one and for several rows, float32 and float64."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    units = {"relu": nn.ReLU(), "relu_": nn.ReLU(inplace=True), "leaky": nn.LeakyReLU(0.1),
             "threshold": nn.Threshold(-0.5, 0.0)}
    pad = min(pad, k // 2)
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), units[unit], nn.MaxPool2d(k, stride, pad), nn.Flatten(),
                          nn.LazyLinear(5)).to(dtype)
    x = torch.randint(-2, 3, (batch, 2, size, size), generator=gen).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(-1, 2, model[0].weight.shape, generator=gen).to(dtype))
        model(x)  # materialise the lazy layer
    tape = _recorded(model, x)
    relu, pool = [n for n in tape.nodes if n.kind in ("scale", "gather")]
    assert ("picked" in pool.data) == (unit in ("relu", "relu_"))
    if "picked" in pool.data:
        idx = pool.data["idx"]
        assert torch.equal(pool.data["picked"], relu.data["mask"].flatten(2).gather(2, idx.flatten(2)).view(idx.shape))
        assert any(n.kind == "gather" and "mask" in n.data for n in tape.plan(rows))  # fused at every row count
    res = affine_map(model, x, classes=list(range(rows)))
    assert res.path == "transposed"
    assert _rel(res.A, _jacobian(model, x)[:, :rows]) <= tol(dtype)


@settings(max_examples=30, **_SETTINGS)
@given(k=st.integers(2, 3), stride=st.integers(1, 3), pad=st.integers(0, 1), size=st.integers(5, 9),
       batch=st.integers(1, 3), indices=st.booleans(), large=st.booleans(), double=st.booleans(),
       seed=st.integers(0, 1000))
def test_a_max_pool_code_is_computed_on_first_use(k, stride, pad, size, batch, indices, large, double, seed):
    """The window-relative argmax of a max-pool (its region code, eq. 14 of 000) is read off the flat index only
    when it is used: an affine_map call computes none, and the codes of partition_codes equal the argmax of each
    window read off the unfolded input (an independent computation; random inputs, no ties). A model that asks for
    the indices gets its own copy, in the layout PyTorch returns: it may write into it (here it does) without
    changing the recorded argmax, A or the codes. ``large``: a pool input of at least 2**14 elements, pooled on a
    channels-last copy (:func:`cnnlens.spline._capture._pool_with_indices`)."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    pad = min(pad, k // 2)
    size = size + 70 if large else size  # 3 x 75 x 75 and more elements
    seen = []

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1)
            self.head = nn.LazyLinear(4)
            self.write = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.max_pool2d(self.conv(x), k, stride, pad, return_indices=indices)
            if indices and self.write:
                seen.append(out[1].is_contiguous())
                out[1].zero_()  # the model writes into its indices (autograd's own backward then refuses)
            return self.head((out[0] if indices else out).flatten(1))

    model = Pooled().to(dtype)
    x = torch.randn(batch, 2, size, size, generator=gen, dtype=dtype)
    with torch.no_grad():
        model(x)  # materialise the lazy layer
    tape = _recorded(model, x)
    assert _is_channels_last([n for n in tape.nodes if n.kind == "gather"][0].data["idx"]) == large
    seen.clear()
    with mock.patch.object(capture_module, "_window_index", wraps=capture_module._window_index) as spy:
        res = affine_map(model, x)
        assert spy.call_count == 0
        codes = partition_codes(model, x)
        assert spy.call_count > 0
    assert all(seen) and bool(seen) == indices
    model.write = False
    assert _rel(res.A, _jacobian(model, x)) <= tol(dtype) and res.identity_error <= tol(dtype)
    (pool,) = [layer for layer in codes.values() if layer.kind == "argmax"]
    h = model.conv(x).detach()
    windows = F.unfold(F.pad(h, (pad,) * 4, value=float("-inf")), k, stride=stride)  # (N, C*k*k, L)
    expected = windows.view(batch, 3, k * k, -1).argmax(2)
    assert torch.equal(pool.states().reshape(batch, 3, -1).long(), expected)


@settings(max_examples=30, **_SETTINGS)
@given(unit=st.sampled_from(["relu", "relu_", "leaky", "none"]), after=st.sampled_from(["conv", "linear"]),
       k=st.integers(2, 3), stride=st.integers(1, 3), pad=st.integers(0, 1), size=st.integers(40, 48),
       batch=st.integers(1, 3), rows=st.sampled_from([1, 3]), norm=st.booleans(), double=st.booleans(),
       seed=st.integers(0, 1000))
def test_a_channels_last_max_pool_in_the_sweep(unit, after, k, stride, pad, size, batch, rows, norm, double, seed):
    """A max-pool whose input has at least 2**14 elements is pooled on a channels-last copy, and its argmax stays in
    that order: the sweep scatters the pool's cotangent in channels-last order (a cotangent in NCHW order is copied
    to it first) and hands on a channels-last cotangent. Before the pool: a convolution, maybe a batch-norm, a unit
    (ReLU, in place, leaky, none: fused into the pool at the argmax or not); after it a 16-channel convolution
    (channels-last transposed form in float32) or a linear layer (an NCHW cotangent). A equals plain autograd on
    the batch, one and three rows, float32 and float64, and the identity holds with B propagated."""
    dtype = torch.float64 if double else torch.float32
    torch.manual_seed(seed)
    pad = min(pad, k // 2)
    units = {"relu": nn.ReLU(), "relu_": nn.ReLU(inplace=True), "leaky": nn.LeakyReLU(0.1), "none": nn.Identity()}
    head = [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)] if after == "conv" else \
        [nn.Flatten(), nn.LazyLinear(4)]
    model = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), *([nn.BatchNorm2d(16)] if norm else []), units[unit],
                          nn.MaxPool2d(k, stride, pad), *head).to(dtype)
    x = torch.randn(batch, 2, size, size, dtype=dtype)
    with torch.no_grad():
        model(x)  # materialise the lazy layer
    _randomise_batch_norm(model.eval(), seed)
    tape = _recorded(model, x)
    (pool,) = [n for n in tape.plan(rows) if n.kind == "gather"]
    assert _is_channels_last(pool.data["idx"])
    res = affine_map(model, x, classes=list(range(rows)))
    assert res.path == "transposed"
    assert _rel(res.A, _autograd_rows(model, x, rows)) <= tol(dtype) and res.identity_error <= tol(dtype)
