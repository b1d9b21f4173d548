"""Op coverage of the spline engine and the op-rule registry (:mod:`cnnlens.spline._ops`).

Every newly covered operation is checked against independently computed quantities: A against torch.func.jacrev
(float64 <= 1e-10 relative, float32 <= 1e-4), the offset propagated with the regions held fixed against f(x) - A x,
the partition codes against torch's own indices and a direct evaluation of the definition, and the segment walk
against dense sampling of the segment (codes and per-sample Jacobians constant between breakpoints, codes changing
across each one).
"""

from __future__ import annotations

import doctest
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cnnlens.spline as spline
from cnnlens import NotPiecewiseAffineError
from cnnlens.spline import (
    Composite,
    ElementwisePiecewise,
    Linear,
    NotPiecewiseAffine,
    Pieces,
    activations,
    affine_map,
    boundary_units,
    is_globally_convex,
    nearest_neighbors,
    op_rule,
    partition_codes,
    partition_distance,
    regions_on_segment,
    register_op,
    unregister_op,
)
from cnnlens.testing import assert_affine_exact, default_tolerance

_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _hsig_ref(h: torch.Tensor) -> torch.Tensor:
    """Hardsigmoid by its definition: torch's own backward of hardsigmoid uses 1/6 rounded to float32 (measured:
    5e-9 off in float64), so the float64 Jacobian is taken through this exact formula."""
    return (h + 3).clamp(0, 6) / 6


_C = 3  # channels of the hidden tensor h (N, 3, 5, 5) the operations act on
_MASK = (torch.arange(25).view(1, 1, 5, 5) % 3) == 0

#: name -> (operation on h, reference for jacrev or None). Nonlinear (piecewise-affine) ones first.
NONLINEAR = {
    "amax_hw": (lambda h: torch.amax(h, dim=(2, 3)), None),
    "amax_keepdim": (lambda h: h.amax(1, keepdim=True), None),
    "amin_two_dims": (lambda h: torch.amin(h, dim=(1, 3)), None),
    "max_dim": (lambda h: torch.max(h, 2).values, None),
    "max_method_keepdim": (lambda h: h.max(dim=3, keepdim=True)[0], None),
    "min_dim": (lambda h: torch.min(h, dim=1).values, None),
    "adaptive_max1d": (lambda h: F.adaptive_max_pool1d(h.flatten(2), 7), None),
    "adaptive_max2d": (lambda h: nn.AdaptiveMaxPool2d((3, 2))(h), None),
    "adaptive_max2d_indices": (lambda h: nn.AdaptiveMaxPool2d(2, return_indices=True)(h)[0], None),
    "adaptive_max3d": (lambda h: nn.AdaptiveMaxPool3d((2, 3, 2))(h.unsqueeze(1)), None),
    "cummax": (lambda h: torch.cummax(h, 3).values, None),
    "cummin": (lambda h: h.cummin(2).values, None),
    "sort": (lambda h: torch.sort(h, 1).values, None),
    "sort_descending": (lambda h: h.sort(3, descending=True).values, None),
    "topk": (lambda h: h.topk(2, 1).values, None),
    "topk_smallest": (lambda h: h.topk(3, 3, largest=False).values, None),
    "kthvalue": (lambda h: h.kthvalue(2, 1).values, None),
    "median": (lambda h: h.median(dim=3, keepdim=True).values, None),
    "nanmedian": (lambda h: torch.nanmedian(h, 2).values, None),
    "hardsigmoid": (lambda h: nn.Hardsigmoid()(4 * h), lambda h: _hsig_ref(4 * h)),
    "hardsigmoid_inplace": (lambda h: F.hardsigmoid(4 * h, inplace=True), lambda h: _hsig_ref(4 * h)),
    "hardshrink": (lambda h: nn.Hardshrink(0.3)(h), None),
    "hardshrink_method": (lambda h: h.hardshrink(0.4), None),
    "softshrink": (lambda h: nn.Softshrink(0.3)(h), None),
    "threshold": (lambda h: nn.Threshold(0.1, -0.5)(h), None),
    "threshold_inplace": (lambda h: F.threshold(h, 0.2, 0.3, inplace=True), None),
    # RReLU in eval mode is the leaky ReLU of slope (lower + upper) / 2 (torch's docs; vmap has no rrelu rule)
    "rrelu_eval": (lambda h: nn.RReLU(0.1, 0.3).eval()(h), lambda h: F.leaky_relu(h, 0.2)),
    "rrelu_functional": (lambda h: F.rrelu(h, 0.2, 0.4), lambda h: F.leaky_relu(h, 0.3)),
}
_W = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
_GRID = torch.rand(1, 4, 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
LINEAR = {
    "where_constant_mask": lambda h: torch.where(_MASK, h, -2 * h),
    "masked_fill": lambda h: h.masked_fill(_MASK, 0.5),
    "masked_scatter_constant": lambda h: h.masked_scatter(_MASK, torch.arange(h.numel(), dtype=h.dtype)),
    "gather": lambda h: h.gather(1, torch.tensor([2, 0, 0, 1]).view(1, 4, 1, 1).expand(h.shape[0], 4, 5, 5)),
    "index_select": lambda h: h.index_select(3, torch.tensor([4, 0, 2])),
    "take_along_dim": lambda h: torch.take_along_dim(h, torch.tensor([1, 0]).view(1, 1, 1, 2), 3),
    "cumsum": lambda h: h.cumsum(2),
    "unfold": lambda h: F.unfold(h, 2),
    "fold": lambda h: F.fold(F.unfold(h, 2, stride=2, padding=1), (5, 5), 2, stride=2, padding=1),
    "diff_prepend": lambda h: torch.diff(h, dim=3, prepend=torch.ones(h.shape[0], _C, 5, 1, dtype=h.dtype)),
    "tril_triu": lambda h: h.tril() + torch.triu(h, 1) * 3,
    "diagonal": lambda h: h.diagonal(dim1=2, dim2=3),
    "diag_embed": lambda h: torch.diag_embed(h[:, :, 0]),
    "kron_constant": lambda h: torch.kron(h, torch.ones(1, 1, 2, 1, dtype=h.dtype)),
    "tensordot": lambda h: torch.tensordot(h, _W.to(h.dtype), dims=([3], [0])),
    "einsum": lambda h: torch.einsum("nchw,wk->nchk", h, _W.to(h.dtype)),
    "index_add": lambda h: torch.zeros(h.shape[0], _C, 5, 3, dtype=h.dtype).index_add(
        3, torch.tensor([0, 1, 1, 2, 0]), h),
    "scatter_add": lambda h: torch.zeros(h.shape[0], _C, 5, 2, dtype=h.dtype).scatter_add(
        3, (torch.arange(5) % 2).view(1, 1, 1, 5).expand(h.shape), h),
    "scatter": lambda h: torch.zeros(h.shape[0], _C, 5, 6, dtype=h.dtype).scatter(
        3, torch.tensor([5, 0, 3, 1, 2]).view(1, 1, 1, 5).expand(h.shape), h),
    "index_copy_fill": lambda h: h.index_copy(2, torch.tensor([4, 3, 2, 1, 0]), 2 * h).index_fill(3, torch.tensor([1]),
                                                                                                   -1.0),
    "rot90_fliplr": lambda h: torch.fliplr(torch.rot90(h, 1, (2, 3))),
    "tile_repeat_interleave": lambda h: torch.tile(h, (1, 1, 2, 1)).repeat_interleave(2, dim=3),
    "lerp_two_operands": lambda h: torch.lerp(h, 2 * h.flip(3), 0.3),
    "addmm": lambda h: torch.addmm(torch.ones(4, dtype=h.dtype), h.flatten(0, 2), _W.to(h.dtype)).view(
        h.shape[0], _C, 5, 4),
    "addcmul_constant": lambda h: torch.addcmul(h, torch.full_like(h, 2.0), torch.full_like(h, -0.5)),
    "cumulative_trapezoid": lambda h: torch.cumulative_trapezoid(h, dim=2),
    "max_unpool2d": lambda h: F.max_unpool2d(*F.max_pool2d(h[:, :, :4, :4], 2, return_indices=True), 2),
    "grid_sample": lambda h: F.grid_sample(h, _GRID.to(h.dtype).expand(h.shape[0], 4, 4, 2), align_corners=False),
}
ALL = {**{k: v for k, v in NONLINEAR.items()}, **{k: (v, None) for k, v in LINEAR.items()}}


class Net(nn.Module):
    """conv -> op -> linear: the op acts on an input-dependent h (N, 3, 5, 5) and every output reads all of it."""

    def __init__(self, op, in_ch: int = 2, classes: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_ch, _C, 3, padding=1).to(dtype)
        self.op = op
        with torch.no_grad():
            size = self._hidden(torch.zeros(1, in_ch, 5, 5, dtype=dtype)).shape[1]
        self.fc = nn.Linear(size, classes).to(dtype)
        self.eval()

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.conv(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._hidden(x))


def _jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians (N, C, D) by torch.func.jacrev of one sample at a time (vmap over the batch)."""
    single = lambda v: model(v.view(1, *x.shape[1:]))[0]  # noqa: E731
    return torch.func.vmap(torch.func.jacrev(single))(x.reshape(x.shape[0], -1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def _reference(name: str, seed: int, dtype: torch.dtype) -> tuple[Net, Net]:
    op, ref = ALL[name]
    net = Net(op, seed=seed, dtype=dtype)
    if ref is None:
        return net, net
    reference = Net(ref, seed=seed, dtype=dtype)
    reference.load_state_dict(net.state_dict())
    return net, reference


@pytest.mark.parametrize("name", list(ALL))
@settings(max_examples=4, **_SETTINGS)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.3, 1.0, 4.0]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_new_op_is_exact(name, seed, scale, dtype):
    """A equals jacrev (float64 <= 1e-10, float32 <= 1e-4, relative), on the fast transposed path and on the
    autograd path over the masked graph; B propagated with the regions fixed agrees with f(x) - A x."""
    net, reference = _reference(name, seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64) * scale).to(dtype)
    res = affine_map(net, x)
    assert res.path == "transposed" and not res.approximate, res.fallback_reason
    jac = _jacobian(reference, x)
    assert _rel(res.A, jac) <= default_tolerance(dtype)
    graph = affine_map(net, x, approximate=True)  # nothing to linearise: the autograd path over the masked graph
    assert graph.path == "autograd" and not graph.approximate
    assert _rel(graph.A, jac) <= default_tolerance(dtype)
    stats = assert_affine_exact(net, x)
    assert stats["bias_max_rel_error"] <= default_tolerance(dtype)


def test_every_nonlinear_op_records_a_layer_and_linear_ops_none():
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    kinds = {"binary", "piecewise", "argmax", "rank"}
    for name, (op, _) in NONLINEAR.items():
        codes = partition_codes(Net(op), x)
        assert len(codes) == 1 and next(iter(codes.values())).kind in kinds, name
    for name, op in LINEAR.items():
        assert len(partition_codes(Net(op), x)) == (name == "max_unpool2d"), name  # unpooling after max-pooling


# --- codes against independent definitions ---------------------------------------------------------------------

def _hidden(net: Net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.conv(x)


def test_codes_equal_torch_indices_and_definitions():
    """Codes of max-like, rank and piecewise layers against torch's own indices and direct definitions."""
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)

    def code(op):
        net = Net(op)
        return next(iter(partition_codes(net, x).values())), _hidden(net, x)

    c, h = code(NONLINEAR["max_dim"][0])
    assert torch.equal(c.states().view(4, *c.shape), torch.max(h, 2).indices)
    c, h = code(NONLINEAR["amax_hw"][0])
    assert c.num_states == 25 and torch.equal(c.states().view(4, _C), h.flatten(2).argmax(2))
    c, h = code(NONLINEAR["amin_two_dims"][0])
    assert torch.equal(c.states().view(4, 5), h.permute(0, 2, 1, 3).reshape(4, 5, -1).argmin(-1))
    c, h = code(NONLINEAR["sort"][0])
    assert c.kind == "rank" and torch.equal(c.states().view(4, *c.shape), torch.sort(h, dim=1, stable=True).indices)
    c, h = code(NONLINEAR["topk"][0])
    assert torch.equal(c.states().view(4, *c.shape), torch.sort(h, dim=1, descending=True, stable=True).indices[:, :2])
    c, h = code(NONLINEAR["median"][0])
    assert torch.equal(c.states().view(4, *c.shape), torch.sort(h, dim=3, stable=True).indices[..., 2:3])
    c, h = code(NONLINEAR["cummax"][0])
    first = torch.stack([h[..., : i + 1].argmax(-1) for i in range(5)], -1)  # first index of the prefix maximum
    assert torch.equal(c.states().view(4, *c.shape), first)
    c, h = code(NONLINEAR["adaptive_max1d"][0])
    flat = h.flatten(2)
    starts = [(j * 25) // 7 for j in range(7)]
    ends = [-(-(j + 1) * 25 // 7) for j in range(7)]
    direct = torch.stack([flat[..., s:e].argmax(-1) for s, e in zip(starts, ends, strict=True)], -1)
    assert torch.equal(c.states().view(4, *c.shape), direct)
    _, idx = F.adaptive_max_pool1d(flat, 7, return_indices=True)  # torch's flat index = start + code
    assert torch.equal(idx, direct + torch.tensor(starts))
    c, h = code(NONLINEAR["hardshrink"][0])
    assert c.kind == "piecewise" and c.num_states == 3
    assert torch.equal(c.states().view(4, *c.shape), (h >= -0.3).long() + (h > 0.3).long())
    c, h = code(NONLINEAR["threshold"][0])
    assert torch.equal(c.states().view(4, *c.shape), (h > 0.1).long())
    c, h = code(NONLINEAR["rrelu_eval"][0])
    assert c.kind == "binary" and torch.equal(c.states().view(4, *c.shape), (h > 0).long())


def test_max_like_ops_return_their_indices_and_ties_take_the_first():
    """max(dim) / cummax / sort / adaptive pooling return (values, indices) under the capture; on exact ties the
    code is the first index (the stable order for sort), and the values are torch's."""

    class Ties(nn.Module):
        def forward(self, x):
            values, idx = torch.max(x, 2)
            run = torch.cummax(x, 3)
            srt = x.sort(3, descending=True)
            pooled, pidx = F.adaptive_max_pool2d(x, 2, return_indices=True)
            return torch.cat([values.flatten(1), idx.flatten(1).to(x.dtype), run.values.flatten(1),
                              run.indices.flatten(1).to(x.dtype), srt.values.flatten(1),
                              srt.indices.flatten(1).to(x.dtype), pooled.flatten(1), pidx.flatten(1).to(x.dtype)], 1)

    x = torch.randint(0, 3, (3, 2, 4, 4)).double()  # many exact ties
    y = Ties()(x)
    res = affine_map(Ties(), x)
    assert torch.allclose(torch.einsum("ncd,nd->nc", res.A, x.flatten(1)) + res.B, y, atol=1e-12)
    codes = partition_codes(Ties(), x)
    names = list(codes)
    assert names == ["max_0", "cummax_0", "sort_0", "adaptive_max_pool2d_0"]
    assert torch.equal(codes["max_0"].states().view(3, 2, 4), x.argmax(2))  # torch.argmax: first maximum
    prefix_first = torch.stack([x[..., : i + 1].argmax(-1) for i in range(4)], -1)
    assert torch.equal(codes["cummax_0"].states().view(3, 2, 4, 4), prefix_first)
    assert torch.equal(codes["sort_0"].states().view(3, 2, 4, 4), torch.sort(x, dim=3, descending=True,
                                                                              stable=True).indices)
    on = boundary_units(Ties(), x)
    assert bool(on["max_0"].any()) and bool(on["sort_0"].any())


def test_activations_of_new_kinds_give_the_codes_and_the_outputs():
    """Pre-activations of every new kind: code = argmax / piece / rank position of them, output recomputed."""
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    for name in ("amax_hw", "min_dim", "adaptive_max2d", "cummin", "sort", "topk_smallest", "kthvalue",
                 "hardsigmoid", "softshrink", "threshold"):
        op = NONLINEAR[name][0]
        net = Net(op)
        acts = activations(net, x)
        (layer,) = list(acts)
        code = partition_codes(net, x)[layer]
        states = code.states().view(3, *code.shape)
        value = acts[layer]
        out = op(_hidden(net, x))
        kind = acts.kinds[layer]
        if kind == "argmax":
            assert torch.equal(value.argmax(-1), states), name
            sign = -1.0 if name in ("min_dim", "cummin") else 1.0
            assert torch.allclose(sign * value.amax(-1), out.view(value.shape[:-1]), atol=1e-12), name
        elif kind == "rank":
            order = torch.sort(value, dim=-1, descending=True, stable=True).indices
            ranks = acts.ranks[layer].expand(states.shape)
            assert torch.equal(order.gather(-1, ranks.unsqueeze(-1)).squeeze(-1), states), name
        else:
            pieces = acts.pieces[layer]
            assert torch.equal(pieces.code(value), states), name
            assert torch.allclose(pieces(value), out, atol=1e-12), name


# --- the segment walk against dense sampling ---------------------------------------------------------------------

def _flat_codes(model, x: torch.Tensor) -> torch.Tensor:
    codes = partition_codes(model, x)
    return torch.cat([c.states() for c in codes.values()], 1)


def _check_walk(model, x0: torch.Tensor, x1: torch.Tensor, samples: int = 240, reference=None) -> int:
    """Breakpoints of regions_on_segment against dense sampling: codes and jacrev Jacobians (of ``reference``,
    default the model) constant inside every region (at ``samples`` points plus the region midpoints), codes
    different just before and after each breakpoint. Returns the number of regions."""
    seg = regions_on_segment(model, x0, x1)
    bps = seg.breakpoints
    assert seg.num_regions == bps.numel() + 1 and bool((bps[1:] > bps[:-1]).all())
    direction = (x1 - x0).double()
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), bps, torch.ones(1, dtype=torch.float64)])
    t = torch.cat([torch.linspace(0, 1, samples, dtype=torch.float64)[1:-1], (edges[1:] + edges[:-1]) / 2])
    region = torch.searchsorted(bps, t)
    pts = x0.double()[None] + t.view(-1, *[1] * x0.dim()) * direction[None]
    codes = _flat_codes(model, pts)
    jac = _jacobian(model if reference is None else reference, pts)
    for r in range(seg.num_regions):
        inside = region == r
        assert bool((codes[inside] == codes[inside][:1]).all()), f"code changes inside region {r}"
        assert _rel(jac[inside], jac[inside][:1].expand_as(jac[inside])) <= 1e-7, f"jacobian changes in region {r}"
    eps = 1e-7
    around = torch.cat([bps - eps, bps + eps])
    k = bps.numel()
    if k:
        near = _flat_codes(model, x0.double()[None] + around.view(-1, *[1] * x0.dim()) * direction[None])
        assert bool((near[:k] != near[k:]).any(1).all()), "a breakpoint where no code changes"
    return seg.num_regions


class Small(nn.Module):
    """A small 1-channel net (fewer regions per segment) for the walk: conv -> op -> linear."""

    def __init__(self, op, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, _C, 3, padding=1).double()
        self.op = op
        with torch.no_grad():
            size = op(self.conv(torch.zeros(1, 1, 5, 5, dtype=torch.float64))).flatten(1).shape[1]
        self.fc = nn.Linear(size, 3).double()
        self.eval()

    def forward(self, x):
        return self.fc(self.op(self.conv(x)).flatten(1))


@pytest.mark.parametrize("name", ["amax_hw", "amin_two_dims", "max_dim", "adaptive_max1d", "adaptive_max2d",
                                  "adaptive_max3d", "cummax", "sort", "topk_smallest", "kthvalue", "median",
                                  "hardsigmoid", "hardshrink", "softshrink", "threshold", "rrelu_eval"])
def test_walk_matches_dense_sampling(name):
    gen = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(2, 1, 5, 5, generator=gen, dtype=torch.float64)
    op, ref = NONLINEAR[name]
    regions = _check_walk(Small(op), x0, x1, reference=None if ref is None else Small(ref))
    assert regions > 1, f"{name}: the segment should cross at least one boundary of the op"


# --- distances on the new kinds ---------------------------------------------------------------------------------

def test_partition_distance_and_neighbors_on_new_kinds():
    """Eq. 15 on piecewise, argmax (with > 256 and > 32768 states) and rank codes against a direct count."""

    class Mixed(nn.Module):
        def forward(self, x):
            h = F.hardshrink(x, 0.3)
            m = torch.amax(x, dim=(2, 3))  # 400 states: int16 storage
            s = torch.sort(x[:, :, :3, :3], 1).values
            g = x.reshape(x.shape[0], 1, -1).repeat(1, 2, 45).amax(2)  # 36000 states: int32 storage
            return torch.cat([h.flatten(1), m, s.flatten(1), g], 1)

    x = torch.randn(12, 2, 20, 20, dtype=torch.float64)
    codes = partition_codes(Mixed(), x)
    assert [c.kind for c in codes.values()] == ["piecewise", "argmax", "rank", "argmax"]
    assert codes["amax_0"].data.dtype == torch.int16 and codes["amax_1"].data.dtype == torch.int32
    assert codes["amax_1"].num_states == 36000
    for name, code in codes.items():
        states = code.states()
        direct = (states[:, None, :] != states[None, :, :]).double().mean(-1)
        assert torch.allclose(partition_distance(codes, codes, name), direct, atol=1e-15)
        idx, dist = nearest_neighbors(code[:4], code, 3)
        order = np.lexsort((np.arange(12)[None].repeat(4, 0), direct[:4].numpy()), axis=1)[:, :3]
        assert torch.equal(idx, torch.from_numpy(order)) and torch.allclose(dist, direct[:4].gather(1, idx))


# --- errors and boundaries of what is supported -----------------------------------------------------------------

@pytest.mark.parametrize("part, reason", [
    (nn.Sigmoid(), "smooth and curved"), (nn.Tanh(), "smooth and curved"), (lambda h: torch.exp(h), "curved"),
    (nn.GELU(), "curved activation"), (nn.SiLU(), "curved activation"), (nn.Softmax(dim=1), "exponentials"),
    (nn.Hardswish(), "quadratic h"), (nn.ELU(), "exponential for negative inputs"),
    (nn.LayerNorm([_C, 5, 5]).double(), "divides by a statistic"), (lambda h: h.prod(1), "multiplies entries"),
])
def test_not_piecewise_affine_ops_raise_with_their_reason(part, reason):
    net = Net(part)
    with pytest.raises(NotPiecewiseAffineError, match=rf"(?s)not piecewise affine: .*{reason}.*approximate=True"):
        affine_map(net, torch.randn(2, 2, 5, 5, dtype=torch.float64))


def test_an_op_without_rule_says_so_and_points_to_the_registry():
    net = Net(lambda h: torch.special.bessel_j0(h))
    with pytest.raises(NotPiecewiseAffineError, match=r"(?s)bessel_j0.*has no rule in cnnlens.*register_op"):
        affine_map(net, torch.randn(2, 2, 5, 5, dtype=torch.float64))


def test_refused_forms_of_the_new_ops():
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    for op in (lambda v: v.amax(dim=(0, 1)), lambda v: v.max(), lambda v: torch.cummax(v, 0).values,
               lambda v: torch.msort(v)):
        with pytest.raises(ValueError, match="reduces over the sample dimension"):
            affine_map(lambda v, op=op: op(v).reshape(1, -1).expand(2, -1), x)
    with pytest.raises(ValueError, match=r"rrelu.*training mode"):
        affine_map(lambda v: F.rrelu(v, training=True).flatten(1), x)
    with pytest.raises(ValueError, match=r"RReLU\) is in training mode"):
        partition_codes(nn.Sequential(nn.Flatten(), nn.RReLU()), x)
    with pytest.raises(NotPiecewiseAffineError, match="input-dependent mask"):
        affine_map(Net(lambda h: torch.where(h > 0, h, 0.1 * h)), x)  # the mask depends on the input
    with pytest.raises(NotPiecewiseAffineError, match=r"reduce='amax'.*selects entries by the input's values"):
        affine_map(Net(lambda h: torch.zeros(2, _C, 5, 2, dtype=h.dtype).scatter_reduce(
            3, (torch.arange(5) % 2).view(1, 1, 1, 5).expand(h.shape), h, "amax")), x)
    with pytest.raises(NotPiecewiseAffineError, match="multiplying two input-dependent tensors"):
        affine_map(Net(lambda h: torch.kron(h, h)), x)


def test_convexity_of_the_new_ops():
    """Thm. 2 of 000: maxima over dimensions / adaptive windows keep convexity; minima, order statistics and
    non-convex pieces do not."""
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)

    def model(op):
        net = nn.Sequential(nn.Conv2d(1, _C, 3, padding=1), nn.ReLU(), nn.Conv2d(_C, _C, 1)).double().eval()
        with torch.no_grad():
            net[2].weight.abs_()
        return lambda v: op(net(v)).flatten(1)

    assert is_globally_convex(model(lambda h: torch.amax(h, dim=(2, 3))), x)
    assert is_globally_convex(model(nn.AdaptiveMaxPool2d(2)), x)
    assert is_globally_convex(model(lambda h: torch.cummax(h, 3).values), x)
    assert not is_globally_convex(model(lambda h: torch.amin(h, dim=(2, 3))), x)
    assert not is_globally_convex(model(lambda h: torch.sort(h, 1).values), x)
    assert not is_globally_convex(model(nn.Hardshrink()), x)
    assert not is_globally_convex(model(nn.Hardsigmoid()), x)
    assert not is_globally_convex(model(lambda h: torch.diff(h, dim=3)), x)


# --- the registry: a user's own operations ------------------------------------------------------------------------

def test_register_op_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    (test,) = [t for t in finder.find(register_op, "register_op", globs={}) if t.examples]
    result = runner.run(test, out=lambda s: None)
    assert result.attempted >= 8 and result.failed == 0


def _pieces_function(bps: list[float], slopes: list[float], offsets: list[float], ties: list[str]):
    """An independent implementation of an elementwise piecewise function (comparisons, which cnnlens rejects)."""
    def fn(h):
        piece = torch.zeros(h.shape, dtype=torch.long)
        for b, tie in zip(bps, ties, strict=True):
            piece = piece + ((h > b) if tie == "left" else (h >= b)).long()
        return torch.tensor(slopes, dtype=h.dtype)[piece] * h + torch.tensor(offsets, dtype=h.dtype)[piece]
    return fn


@settings(max_examples=12, **_SETTINGS)
@given(data=st.data(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_user_elementwise_rule_is_used_and_exact(data, dtype):
    """A random piecewise function written with comparisons: rejected without a rule, exact with its Pieces."""
    r = data.draw(st.integers(1, 4), label="breakpoints")
    bps = sorted(data.draw(st.lists(st.floats(-1.5, 1.5), min_size=r, max_size=r, unique=True)))
    slopes = data.draw(st.lists(st.floats(-2, 2), min_size=r + 1, max_size=r + 1))
    offsets = data.draw(st.lists(st.floats(-1, 1), min_size=r + 1, max_size=r + 1))
    ties = data.draw(st.lists(st.sampled_from(["left", "right"]), min_size=r, max_size=r))
    fn = _pieces_function(bps, slopes, offsets, ties)
    x = torch.randn(3, 2, 5, 5, dtype=dtype)
    with pytest.raises(NotPiecewiseAffineError):
        affine_map(Net(fn, dtype=dtype), x)
    op = register_op(fn, ElementwisePiecewise(lambda h: Pieces(bps, slopes, offsets, ties)))
    try:
        net = Net(op, dtype=dtype)
        reference = Net(fn, dtype=dtype)
        res = affine_map(net, x)
        assert res.path == "transposed"
        assert _rel(res.A, _jacobian(reference, x)) <= default_tolerance(dtype)
        assert_affine_exact(net, x)
        code = partition_codes(net, x)["fn_0"]
        assert code.kind == "piecewise" and code.num_states == r + 1
        h = _hidden(net, x)
        piece = sum(((h > b) if t == "left" else (h >= b)).long() for b, t in zip(bps, ties, strict=True))
        assert torch.equal(code.states().view(h.shape), piece)
        if dtype == torch.float64:
            _check_walk(Small(op), *torch.randn(2, 1, 5, 5, dtype=torch.float64))
    finally:
        unregister_op(op)
    assert op_rule(op) is None


def test_user_rule_for_a_discontinuous_function_uses_the_tie_side_of_its_value():
    """ties decide the piece of a unit exactly at a breakpoint; wrong ties are caught by verify."""
    step = _pieces_function([0.0], [0.0, 0.0], [0.0, 1.0], ["right"])  # 1 for h >= 0
    x = torch.zeros(2, 4, dtype=torch.float64)
    good = register_op(step, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 0.0], [0.0, 1.0], ties="right")))
    bad = register_op(step, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 0.0], [0.0, 1.0], ties="left")))
    wrong_slope = register_op(step, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 1.0], [0.0, 1.0])))
    try:
        lin = nn.Linear(4, 4).double()
        with torch.no_grad():
            lin.bias.zero_()
        res = affine_map(nn.Sequential(lin, nn.Flatten()).eval(), x)  # sanity: a plain linear model
        assert torch.equal(res.B, torch.zeros(2, 4, dtype=torch.float64))
        net = lambda v: good(lin(v))  # noqa: E731
        assert torch.equal(affine_map(net, x).B, torch.ones(2, 4, dtype=torch.float64))
        for op in (bad, wrong_slope):
            with pytest.raises(ValueError, match=r"do not reproduce its output"):
                affine_map(lambda v, op=op: op(lin(v)) + 0.5 * lin(v), x + (op is wrong_slope))
    finally:
        for op in (good, bad, wrong_slope):
            unregister_op(op)


class _ClipSTE(torch.autograd.Function):
    """A hard clip with a straight-through backward (gradient 1 everywhere): its autograd graph is not its
    Jacobian."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(-0.5, 0.5)

    @staticmethod
    def backward(ctx, g):
        return g


class _FlipNumpy(torch.autograd.Function):
    """A linear op computed in numpy (invisible to the capture), with an exact backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.ascontiguousarray(x.numpy()[:, ::-1])) * 2

    @staticmethod
    def backward(ctx, g):
        return g.flip(1) * 2


@pytest.mark.parametrize("rule", [
    Composite(lambda x: x.clamp(-0.5, 0.5)),
    ElementwisePiecewise(lambda x: Pieces([-0.5, 0.5], [0.0, 1.0, 0.0], [-0.5, 0.0, 0.5], ties=("left", "right"))),
])
def test_custom_autograd_function_rules(rule):
    """A registered Function is seen by the capture (apply dispatches through handle_torch_function): its rule
    gives the true Jacobian whatever its backward says; unregistering restores apply."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)).double().eval()
    model = lambda v: net[2](_ClipSTE.apply(net[0](v)))  # noqa: E731
    truth = lambda v: net[2](net[0](v).clamp(-0.5, 0.5))  # noqa: E731
    x = torch.randn(5, 4, dtype=torch.float64) * 3
    original = _ClipSTE.apply
    assert register_op(_ClipSTE, rule) is _ClipSTE and op_rule(_ClipSTE) is rule
    try:
        for approximate in (False, True):
            res = affine_map(model, x, approximate=approximate)
            assert _rel(res.A, _jacobian(truth, x)) <= 1e-10
        codes = partition_codes(model, x)
        assert len(codes) == 1
        _check_walk(model, x[0], x[1], reference=truth)
    finally:
        unregister_op(_ClipSTE)
    assert _ClipSTE.apply == original and op_rule(_ClipSTE) is None


def test_linear_rule_for_a_function_and_for_a_python_function():
    x = torch.randn(4, 5, dtype=torch.float64)
    lin = nn.Linear(5, 5).double()
    model = lambda v: lin(_FlipNumpy.apply(lin(v)))  # noqa: E731
    truth = lambda v: lin(2 * lin(v).flip(1))  # noqa: E731
    register_op(_FlipNumpy, Linear())
    try:
        res = affine_map(model, x)
        assert res.path == "autograd" and "custom autograd.Function _FlipNumpy" in res.fallback_reason
        assert _rel(res.A, _jacobian(truth, x)) <= 1e-10
    finally:
        unregister_op(_FlipNumpy)

    def spectrum(v):  # real part of an FFT: linear, but torch.fft has no rule in cnnlens
        return torch.fft.rfft(v).real

    with pytest.raises(NotPiecewiseAffineError, match=r"has no rule in cnnlens.*register_op"):
        affine_map(lambda v: spectrum(lin(v)), x)
    op = register_op(rule=Linear())(spectrum)  # decorator form
    try:
        res = affine_map(lambda v: op(lin(v)), x)
        assert res.path == "transposed"
        assert _rel(res.A, _jacobian(lambda v: spectrum(lin(v)), x)) <= 1e-10
    finally:
        unregister_op(op)


@torch.library.custom_op("cnnlens_test_ops::relu_numpy", mutates_args=())
def _relu_numpy(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.maximum(x.numpy(), 0.0))


def test_torch_library_custom_op_rule():
    x = torch.randn(4, 5, dtype=torch.float64)
    lin = nn.Linear(5, 5).double()
    model = lambda v: lin(_relu_numpy(lin(v)))  # noqa: E731
    with pytest.raises(NotPiecewiseAffineError, match=r"relu_numpy.*has no rule"):
        affine_map(model, x)
    register_op(_relu_numpy, ElementwisePiecewise(lambda h: Pieces([0.0], [0.0, 1.0], [0.0, 0.0])))
    try:
        res = affine_map(lambda v: lin(torch.ops.cnnlens_test_ops.relu_numpy(lin(v))), x)  # the packet, too
        assert _rel(res.A, _jacobian(lambda v: lin(F.relu(lin(v))), x)) <= 1e-10
        assert [c.kind for c in partition_codes(model, x).values()] == ["piecewise"]
    finally:
        unregister_op(_relu_numpy)


def test_not_piecewise_affine_registration_raises_with_the_users_reason():
    def soft_clip(h):
        return torch.where(h.abs() < 1, h, h.sign())  # piecewise affine in fact, but say it is not

    op = register_op(soft_clip, NotPiecewiseAffine("the team has not validated soft_clip"))
    try:
        with pytest.raises(NotPiecewiseAffineError,
                           match=r"operation .*soft_clip.* is not piecewise affine: the team has not validated"):
            affine_map(Net(op), torch.randn(2, 2, 5, 5, dtype=torch.float64))
        with pytest.warns(UserWarning, match="soft_clip"):
            assert affine_map(Net(op), torch.randn(2, 2, 5, 5, dtype=torch.float64), approximate=True).approximate
    finally:
        unregister_op(op)


def test_registry_guards():
    with pytest.raises(ValueError, match="already has a rule"):
        register_op(F.hardsigmoid, Linear())
    with pytest.raises(TypeError, match="rule must be"):
        register_op(torch.special.bessel_j0, "linear")
    with pytest.raises(TypeError, match="would not reach the capture"):
        register_op(functools.partial(torch.add, other=1.0), Linear())
    with pytest.raises(ValueError, match="no rule registered"):
        unregister_op(torch.special.bessel_j0)
    with pytest.raises(ValueError, match="inputs"):
        Linear("some")
    with pytest.raises(ValueError, match="non-decreasing"):
        Pieces([1.0, 0.0], [0, 1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="need 3 slopes"):
        Pieces([0.0, 1.0], [0, 1], [0, 0, 0])
    # a built-in replaced and restored
    register_op(F.hardsigmoid, NotPiecewiseAffine("replaced"), replace=True)
    try:
        with pytest.raises(NotPiecewiseAffineError, match="replaced"):
            affine_map(Net(nn.Hardsigmoid()), torch.randn(2, 2, 5, 5, dtype=torch.float64))
    finally:
        unregister_op(F.hardsigmoid)
    assert isinstance(op_rule(F.hardsigmoid), ElementwisePiecewise)
    assert isinstance(op_rule(torch.sigmoid), NotPiecewiseAffine) and op_rule(torch.amax) is not None
    assert {"register_op", "unregister_op", "op_rule", "Pieces", "Linear"} <= set(spline.__all__)
