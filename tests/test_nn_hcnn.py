"""Hierarchical Attribute CNNs (001 ch. 5): the attribute convolutions against explicit sums, the factorisation of
eq. 37, Prop. 5.3.1's exact invariance, eq. 38's neighbours and the parameter counts of sec. 5.4.2."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.nn import (
    AttributeConv,
    FactorisedAttributeConv,
    HierarchicalCNN,
    attribute_translation_neighbors,
    get_model,
)
from cnnlens.testing import attribute_conv_reference
from conftest import tol

DTYPES = (torch.float32, torch.float64)
BOUNDARIES = ("zero", "periodic")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@st.composite
def layer_cases(draw: st.DrawFn) -> dict:
    """A random layer geometry: 1 or 2 convolved attribute axes, optional marginal sum, kernels, boundaries."""
    n_conv = draw(st.sampled_from((1, 2)))
    marginal = draw(st.booleans()) and n_conv == 2
    sizes = [draw(st.sampled_from((2, 4, 6, 8))) for _ in range(n_conv)]
    kernels = [draw(st.sampled_from([k for k in (1, 3, 5, 7) if k // 2 < n])) for n in sizes]
    attrs = ([draw(st.sampled_from((1, 2, 3)))] if marginal else []) + sizes
    boundary = tuple(draw(st.sampled_from(BOUNDARIES)) for _ in range(n_conv + 1))
    stride = draw(st.sampled_from((1, 2)))
    return dict(attrs=tuple(attrs), kernels=tuple(kernels), marginal=marginal, boundary=boundary, stride=stride,
                features=draw(st.integers(1, 4)), dtype=draw(st.sampled_from(DTYPES)),
                seed=draw(st.integers(0, 2**16)))


def _input(case: dict, batch: int = 2, size: tuple[int, int] = (4, 6)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case["seed"])
    return torch.randn(batch, *case["attrs"], *size, generator=gen, dtype=case["dtype"])


@settings(max_examples=60, deadline=None)
@given(layer_cases())
def test_attribute_conv_equals_explicit_sums(case: dict) -> None:
    torch.manual_seed(case["seed"])
    conv = AttributeConv(case["attrs"], case["features"], case["kernels"], spatial_stride=case["stride"],
                         marginal=case["marginal"], boundary=case["boundary"]).to(case["dtype"])
    nn.init.normal_(conv.bias)
    x = _input(case)
    with torch.no_grad():
        out = conv(x)
        ref = attribute_conv_reference(x, conv.weight, marginal=case["marginal"], spatial_stride=case["stride"],
                                       boundary=case["boundary"]) + conv.bias.view(-1, 1, 1)
    assert out.shape == ref.shape
    assert _rel(out, ref) < tol(case["dtype"])


@settings(max_examples=40, deadline=None)
@given(layer_cases(), st.integers(1, 12))
def test_factorised_without_nonlinearity_equals_w_sum_of_h_g(case: dict, q: int) -> None:
    """Eq. 37: with no intermediate normalisation or nonlinearity the layer is the convolution by
    w_{v_j}(v, u) = sum_q h_q(u) g_{v_j,q}(v), here composed in the test and run through the explicit sums."""
    torch.manual_seed(case["seed"])
    layer = FactorisedAttributeConv(case["attrs"], case["features"], case["kernels"], q=q,
                                    spatial_stride=case["stride"], marginal=case["marginal"],
                                    boundary=case["boundary"], intermediate="none").to(case["dtype"])
    nn.init.normal_(layer.bias)
    x = _input(case)
    n = len(case["kernels"])
    g = layer.g.detach().reshape(case["features"], q, -1)
    w = (g.unsqueeze(-1) * layer.h.detach().reshape(1, q, 1, -1)).sum(1)  # (F, prod(kernels), k^2)
    w = w.reshape(case["features"], *case["kernels"], 3, 3)
    with torch.no_grad():
        ref = attribute_conv_reference(x, w, marginal=case["marginal"], spatial_stride=case["stride"],
                                       boundary=case["boundary"]) + layer.bias.view(-1, 1, 1)
        out = layer(x)
        exported = layer.to_attribute_conv()(x)
    assert n in (1, 2) and _rel(out, ref) < tol(case["dtype"])
    assert _rel(exported, ref) < tol(case["dtype"])


@settings(max_examples=30, deadline=None)
@given(layer_cases())
def test_q9_represents_any_3x3_filter_and_q8_does_not(case: dict) -> None:
    """Sec. 5.4.2: the tensor rank of W_j is at most 9 (the 3x3 spatial support), so Q = 9 is exact."""
    torch.manual_seed(case["seed"])
    conv = AttributeConv(case["attrs"], case["features"], case["kernels"], spatial_stride=case["stride"],
                         marginal=case["marginal"], boundary=case["boundary"]).to(case["dtype"])
    x = _input(case)
    with torch.no_grad():
        ref = attribute_conv_reference(x, conv.weight, marginal=case["marginal"], spatial_stride=case["stride"],
                                       boundary=case["boundary"]) + conv.bias.view(-1, 1, 1)
        assert _rel(FactorisedAttributeConv.from_attribute_conv(conv, 9)(x), ref) < tol(case["dtype"])
        assert _rel(FactorisedAttributeConv.from_attribute_conv(conv, 12)(x), ref) < tol(case["dtype"])
        rows = case["features"] * math.prod(case["kernels"])
        if rows >= 9:  # a random (9 x rows) matrix has rank 9: rank 8 leaves a residual
            matrix = conv.weight.reshape(-1, 9).T
            s = torch.linalg.svdvals(matrix.double())
            assert float(s[8] / s[0]) > 1e-6
            w8 = FactorisedAttributeConv.from_attribute_conv(conv, 8).equivalent_weight()
            assert _rel(w8, conv.weight) > 1e-4


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_export_folds_the_eval_normalisation(dtype: torch.dtype, boundary: str) -> None:
    torch.manual_seed(0)
    layer = FactorisedAttributeConv((2, 4, 8), 3, (3, 5), q=5, marginal=True, boundary=boundary).to(dtype)
    norm = layer.norm
    assert isinstance(norm, nn.BatchNorm2d)
    norm.running_var.uniform_(0.5, 2.0)
    if boundary == "periodic":
        norm.running_mean.normal_()
    layer.eval()
    x = torch.randn(2, 2, 4, 8, 6, 6, dtype=dtype)
    with torch.no_grad():
        assert _rel(layer.to_attribute_conv()(x), layer(x)) < tol(dtype)
    if boundary == "zero":
        norm.running_mean.normal_()
        with pytest.raises(ValueError, match="position dependent"):
            layer.to_attribute_conv()
    with pytest.raises(ValueError, match="intermediate nonlinearity"):
        FactorisedAttributeConv((4, 8), 3, (3, 5), q=2, plus=True).to_attribute_conv()
    with pytest.raises(ValueError, match="eval"):
        FactorisedAttributeConv((4, 8), 3, (3, 5), q=2).to_attribute_conv()


def _random_model(seed: int, dtype: torch.dtype, **config: object) -> HierarchicalCNN:
    """A periodic network with random weights and random (constant along (u, v)) normalisation statistics."""
    torch.manual_seed(seed)
    base: dict[str, object] = dict(width=8, depth=7, downsample=(2, 4), attribute_kernel=(3, 5), q=3,
                                   boundary="periodic")
    model = HierarchicalCNN(2, 5, **{**base, **config}).to(dtype)  # type: ignore[arg-type]
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.normal_(0, 0.3)
    return model.eval()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(DTYPES), st.booleans(), st.booleans(), st.data())
def test_prop_5_3_1_exact_invariance_with_periodic_boundaries(seed: int, dtype: torch.dtype, plus: bool,
                                                              factorised: bool, data: st.DataObject) -> None:
    """Prop. 5.3.1: rolling x_j along (u, v_{j-2}, v_{j-1}, v_j) by multiples of the accumulated subsampling leaves
    the logits unchanged, for every depth j < J - 1."""
    model = _random_model(seed, dtype, plus=plus, factorised=factorised)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 16, 16, generator=gen, dtype=dtype)
    layers = model.hidden_layers(x)
    depth = data.draw(st.integers(1, model.depth - 2))
    h = layers[depth - 1]
    steps = model.invariant_shifts(depth)
    assert all(s is not None for s in steps)
    multiples = [data.draw(st.integers(-3, 3)) for _ in range(len(steps) + 1)]
    shifts = [m * s for m, s in zip(multiples, [*steps, steps[-1]], strict=True)]  # u counts twice (u1, u2)
    dims = tuple(range(1, h.ndim))
    with torch.no_grad():
        base = model.forward_from(h, depth)
        moved = model.forward_from(h.roll(shifts, dims), depth)
        assert _rel(model(x), base) < tol(dtype)
    assert _rel(moved, base) < 10 * tol(dtype)


def test_invariance_needs_its_conditions() -> None:
    """Each condition of Prop. 5.3.1 is needed: a shift that is not a multiple of the subsampling, a zero
    boundary, or a per-position mean array (m_{j,q} varying along (u, v)) changes the logits."""
    dtype = torch.float64
    model = _random_model(1, dtype)
    x = torch.randn(2, 2, 16, 16, dtype=dtype)
    depth = 3
    with torch.no_grad():
        h = model.hidden_layers(x)[depth - 1]
        base = model.forward_from(h, depth)
        assert model.invariant_shifts(depth) == (1, 2, 4, 2)
        assert _rel(model.forward_from(h.roll(1, -1), depth), base) > 1e-6  # u step is 2 here
        assert _rel(model.forward_from(h.roll(2, 3), depth), base) > 1e-6  # v_j step is 4
        zero = _random_model(1, dtype, boundary="zero")
        hz = zero.hidden_layers(x)[depth - 1]
        assert _rel(zero.forward_from(hz.roll(2, -1), depth), zero.forward_from(hz, depth)) > 1e-6
    position = _random_model(1, dtype, intermediate="position")
    position.train()
    with torch.no_grad():
        position(x)  # shapes the mean arrays
        position.eval()
        for module in position.modules():
            if hasattr(module, "running_mean") and not isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
        hp = position.hidden_layers(x)[depth - 1]
        assert _rel(position.forward_from(hp.roll(2, -1), depth), position.forward_from(hp, depth)) > 1e-3
    assert model.invariant_shifts(model.depth - 1)[2] is None  # the class axis of x_{J-1} is not summed


def test_paper_configurations_and_counts() -> None:
    """Sec. 5.4.2's networks; the counts recomputed here from the text's description, layer by layer."""
    c10, c100 = HierarchicalCNN.cifar10(), HierarchicalCNN.cifar100()
    assert (c10.depth, c10.width, c10.downsample, c10.attribute_kernel, c10.num_classes) == (12, 16, (5, 9),
                                                                                          (7, 11), 10)
    assert (c100.attribute_kernel, c100.num_classes) == ((11, 11), 100)
    with torch.no_grad():
        shapes = [tuple(h.shape[1:]) for h in HierarchicalCNN.cifar10(q=2).hidden_layers(torch.zeros(1, 3, 32, 32))]
    assert shapes[0] == (16, 32, 32) and shapes[1] == (8, 16, 32, 32) and shapes[2] == (4, 8, 16, 32, 32)
    assert shapes[4] == (4, 8, 16, 16, 16) and shapes[8] == (4, 8, 16, 8, 8) and shapes[-1] == (4, 8, 10, 8, 8)
    for model, support, classes in ((c10, 7 * 11, 10), (c100, 11 * 11, 100)):
        first, second = 3 * 16 * 9, 16 * 9 * 11
        free = first + second + 8 * 16 * 9 * support + classes * 9 * support
        deep = 8 * (32 * 9 + 32 * 16 * support) + 32 * 9 + 32 * classes * support
        counts = model.parameter_counts()
        assert (counts.free, counts.factorised_deep) == (free, deep)
        assert counts.factorised == deep + first + 32 * 9 + 32 * 16 * 11
        assert counts.total == sum(p.numel() for p in model.parameters())
    assert c10.parameter_counts().free == 97_650 and c100.parameter_counts().free == 250_308


def test_neighbors_match_a_brute_force_search(dtype: torch.dtype) -> None:
    """Eq. 38: sum over v_{j-2} at the central position, a periodic 3-tap average along v_{j-1}, the roll by tau
    and the nearest database array, recomputed here from the hidden layers by a loop."""
    model = _random_model(2, dtype)
    x = torch.randn(3, 2, 16, 16, dtype=dtype)
    database = torch.randn(11, 2, 16, 16, dtype=dtype)
    depth, taus = 4, (1, 3, 7)
    result = attribute_translation_neighbors(model, x, depth, taus, database, batch_size=4)

    def array(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = model.hidden_layers(images)[depth - 1]
        bar = h[..., h.shape[-2] // 2, h.shape[-1] // 2].sum(1)
        return (bar.roll(1, 1) + bar + bar.roll(-1, 1)) / 3

    arrays, base = array(x), array(database)
    torch.testing.assert_close(result.arrays, arrays, rtol=tol(dtype), atol=tol(dtype))
    for b in range(len(x)):
        for t, tau in enumerate(taus):
            d = [float(torch.linalg.norm(arrays[b].roll(tau, 0) - base[i])) for i in range(len(database))]
            best = min(range(len(d)), key=d.__getitem__)
            assert int(result.indices[b, t]) == best
            assert abs(float(result.distances[b, t]) - d[best]) <= 10 * tol(dtype) * max(d[best], 1.0)
    again = attribute_translation_neighbors(model, x, depth, taus, database, batch_size=64)
    assert torch.equal(again.indices, result.indices)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not divide by the attribute subsampling"):
        AttributeConv((5, 8), 4, (3, 3))
    with pytest.raises(ValueError, match="K is too small"):
        AttributeConv((2, 4), 4, (7, 11))
    with pytest.raises(ValueError, match="K is too small"):
        HierarchicalCNN(3, 10, width=4, attribute_kernel=(7, 11))
    with pytest.raises(ValueError, match="odd"):
        AttributeConv((4, 8), 4, (2, 3))
    conv = AttributeConv((4, 8), 4, (3, 3), spatial_stride=2)
    with pytest.raises(ValueError, match="rank-5"):
        conv(torch.zeros(2, 4, 8, 6))
    with pytest.raises(ValueError, match="attributes"):
        conv(torch.zeros(2, 4, 6, 6, 6))
    with pytest.raises(ValueError, match="does not divide by the spatial subsampling"):
        conv(torch.zeros(2, 4, 8, 5, 6))
    model = get_model("hcnn")
    with pytest.raises(ValueError, match="expects images"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="does not divide by the total spatial subsampling"):
        model(torch.zeros(2, 1, 30, 30))
    with pytest.raises(ValueError, match="multiple of 4"):
        HierarchicalCNN(width=6)
    with pytest.raises(ValueError, match="depth J must be >= 4"):
        HierarchicalCNN(depth=3)
    with pytest.raises(ValueError, match="boundary"):
        AttributeConv((4, 8), 4, (3, 3), boundary="reflect")
    with pytest.raises(ValueError, match="three attribute axes"):
        model.attribute_arrays(torch.zeros(1, 1, 28, 28), depths=(2,))
