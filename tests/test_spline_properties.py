"""Property tests of the spline engine over random piecewise-affine architectures (eqs. 5-9, 14 of 000).

Each example draws an architecture mixing every supported part (see ``test_spline_properties_nets``), in float64
(relative error <= 1e-10) and float32 (<= 1e-4).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnlens.spline import affine_map, partition_codes, regions_on_segment
from cnnlens.testing import assert_affine_exact, default_tolerance
from test_spline_properties_nets import ACTIVATIONS, BLOCKS, input_for, random_net

# Example counts below keep this file under ~40 s; CNNLENS_HYPOTHESIS_SCALE=4 runs four times as many.
_SCALE = float(os.environ.get("CNNLENS_HYPOTHESIS_SCALE", "1"))


def _n(examples: int) -> int:
    return max(1, int(examples * _SCALE))


architectures = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(ACTIVATIONS)), min_size=1, max_size=6),
    st.sampled_from([1, 2]),
    st.integers(0, 10_000),
)
dtypes = st.sampled_from([torch.float32, torch.float64])
_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on the shared CI machine (conftest restores it)."""
    torch.set_num_threads(1)


def _jacobian(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference Jacobian from torch.func.jacrev of the unmodified model (diagonal blocks of the batch Jacobian)."""
    n = x.shape[0]
    jac = torch.func.jacrev(lambda v: net(v.view_as(x)))(x.reshape(n, -1)).detach()  # (N, C, N, D)
    return jac[torch.arange(n), :, torch.arange(n)]


@settings(max_examples=_n(150), **_SETTINGS)
@given(arch=architectures, dtype=dtypes)
def test_identity_and_jacobian(arch, dtype):
    """A x + B == f(x) (B also propagated independently) and A equals torch.func.jacrev."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 3, seed, dtype)
    stats = assert_affine_exact(net, x)
    assert stats["identity_max_rel_error"] <= default_tolerance(dtype)
    a, _ = affine_map(net, x)
    jac = _jacobian(net, x)
    scale = jac.abs().max().clamp_min(1e-30)
    assert float((a - jac).abs().max() / scale) <= default_tolerance(dtype)


@settings(max_examples=_n(60), **_SETTINGS)
@given(arch=architectures, dtype=dtypes, eps=st.sampled_from([1e-6, 1e-4]))
def test_same_region_same_map(arch, dtype, eps):
    """Two inputs with equal codes at every layer have equal (A, B): the map is constant on a region."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 2, seed, dtype)
    y = x + eps * input_for(net, 2, seed + 7, dtype)
    cx, cy = partition_codes(net, x), partition_codes(net, y)
    assume(all(torch.equal(cx[k].data, cy[k].data) for k in cx))
    ax, bx = affine_map(net, x)
    ay, by = affine_map(net, y)
    tol = default_tolerance(dtype)
    assert float((ax - ay).abs().max()) <= tol * float(ax.abs().max().clamp_min(1))
    assert float((bx - by).abs().max()) <= 10 * tol * float(bx.abs().max().clamp_min(1))


@settings(max_examples=_n(60), **_SETTINGS)
@given(arch=architectures, dtype=dtypes, zeros=st.booleans())
def test_fast_codes_equal_recorded_pre_activation_signs(arch, dtype, zeros):
    """partition_codes reads ReLU codes off the model's own outputs (out != 0); they equal the codes computed from
    the recorded pre-activations (u > 0), also on inputs with exact zeros (ties) and with in-place activations."""
    from cnnlens.spline._codes import _record

    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 3, seed, dtype)
    if zeros:
        x = torch.where(x.abs() < 0.5, torch.zeros((), dtype=dtype), x)
    codes = partition_codes(net, x)
    recorded = _record(net, x, probe=True).entries
    assert list(codes) == [e.name for e in recorded]
    for entry in recorded:
        assert torch.equal(codes[entry.name].states(), entry.states.reshape(3, -1).long()), entry.name


@settings(max_examples=_n(15), **_SETTINGS)
@given(arch=architectures)
def test_regions_on_segment_match_dense_sampling(arch):
    """Between consecutive breakpoints the codes of dense samples are constant; across one breakpoint they change."""
    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, torch.float64)
    x = input_for(net, 2, seed, torch.float64)
    x[1] = x[0] + 0.3 * (x[1] - x[0])
    seg = regions_on_segment(net, x[0], x[1])
    assert seg.num_regions == len(seg.breakpoints) + 1
    assert all(0 < t < 1 for t in seg.breakpoints.tolist())
    assert torch.all(seg.breakpoints[1:] > seg.breakpoints[:-1])
    grid = torch.linspace(0, 1, 801, dtype=torch.float64)
    pts = x[0][None] + grid.view(-1, *[1] * (x.dim() - 1)) * (x[1] - x[0])[None]
    codes = partition_codes(net, pts)
    flat = torch.cat([codes[k].states().reshape(len(grid), -1) for k in codes], dim=1)
    changed = (flat[1:] != flat[:-1]).any(dim=1)
    bins = torch.bucketize(seg.breakpoints, grid)  # breakpoint in (grid[i-1], grid[i]] -> i
    counts = torch.bincount(bins - 1, minlength=len(grid) - 1)
    assert torch.all(counts[changed] > 0), "a code change between samples with no breakpoint in between"
    assert torch.all(changed[counts == 1]), "a single breakpoint between samples with equal codes"


@settings(max_examples=_n(40), **_SETTINGS)
@given(arch=architectures, dtype=dtypes)
def test_transposed_sweep_equals_batched_autograd(arch, dtype):
    """The fast transposed sweep runs on every random architecture (every part has an exact transpose rule) and gives
    the same A as the batched-autograd fallback (two independent paths)."""
    from cnnlens.spline._affine import _chunk_map

    blocks, dims, seed = arch
    net = random_net(blocks, dims, seed, dtype)
    x = input_for(net, 3, seed, dtype)
    fast = affine_map(net, x)
    assert fast.path == "transposed" and fast.fallback_reason is None, fast.fallback_reason
    slow = _chunk_map(net, x, None, True)  # approximate=True always takes the autograd path
    assert slow.path == "autograd"
    assert float((fast.A - slow.a).abs().max()) <= default_tolerance(dtype) * float(slow.a.abs().max().clamp_min(1))
