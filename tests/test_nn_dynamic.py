"""Dynamic steerable two-factor blocks (eq. 29 of 001) against their static counterparts and the steering map."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from cnnlens.nn import DynamicSteerableBlock, StaticResidualBlock, steer

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}


def _constant_pose(block: DynamicSteerableBlock, theta: float) -> None:
    last = block.pose_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(theta)


@settings(max_examples=30, deadline=None)
@given(order=st.integers(1, 3), first=st.integers(0, 1), residual=st.booleans(), seed=st.integers(0, 999),
       dtype=st.sampled_from(DTYPES), per_channel=st.booleans())
def test_zero_pose_is_the_static_counterpart(order, first, residual, seed, dtype, per_channel):
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        block = DynamicSteerableBlock(3, 3, order=order, first_order=first, residual=residual,
                                      pose="channel" if per_channel else "location")
    finally:
        torch.set_default_dtype(torch.float32)
    _constant_pose(block, 0.0)
    x = torch.randn(2, 3, 12, 12, dtype=dtype)
    out, pose = block(x, return_pose=True)
    expected = block.to_static()(x) + (x if residual else 0)
    assert pose.shape == (2, 3 if per_channel else 1, 12, 12) and float(pose.abs().max()) == 0.0
    assert (out - expected).abs().max() <= TOL[dtype] * expected.abs().max()


@settings(max_examples=30, deadline=None)
@given(order=st.integers(1, 3), theta=st.floats(-3.2, 3.2), seed=st.integers(0, 999), dtype=st.sampled_from(DTYPES))
def test_constant_pose_equals_the_layer_with_steered_filters(order, theta, seed, dtype):
    """Steering the frame responses (the block) equals convolving with the steered effective filters."""
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        block = DynamicSteerableBlock(2, 4, order=order, first_order=1)
    finally:
        torch.set_default_dtype(torch.float32)
    _constant_pose(block, theta)
    x = torch.randn(2, 2, 14, 14, dtype=dtype)
    keep = block._keep
    rotation = steer(order, torch.tensor(theta, dtype=dtype))[keep][:, keep]
    alpha = torch.einsum("ocg,gf->ocf", block.static.alpha, rotation)
    weight = torch.einsum("ocf,fyx->ocyx", alpha, block.static.basis.flip((1, 2)))
    expected = F.conv2d(x, weight, block.static.bias, padding=block.static.padding)
    out = block(x)
    assert (out - expected).abs().max() <= 10 * TOL[dtype] * expected.abs().max()


def test_pose_is_learned_through_the_steering_functions():
    torch.manual_seed(0)
    block = DynamicSteerableBlock(1, 2, order=1, first_order=1)
    block(torch.randn(2, 1, 10, 10)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.pose_net.parameters())


def test_static_residual_block_adds_its_input():
    block = StaticResidualBlock(4, hidden=6)
    with torch.no_grad():
        block.body[-1].weight.zero_()
        block.body[-1].bias.zero_()
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(block(x), x)


def test_dynamic_block_bad_input():
    with pytest.raises(ValueError, match="first_order must lie in 0..order"):
        DynamicSteerableBlock(1, 1, order=1, first_order=2)
    with pytest.raises(ValueError, match="pose must be 'location'"):
        DynamicSteerableBlock(1, 1, pose="scale")
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        DynamicSteerableBlock(1, 2, residual=True)
    with pytest.raises(ValueError, match=r"shape \(N, 2, H, W\)"):
        DynamicSteerableBlock(2, 2)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="order must be an integer in 0..4"):
        DynamicSteerableBlock(1, 1, order=5)


def test_dynresnet_and_its_static_twin():
    from cnnlens.nn import DynResNet

    dynamic, static = DynResNet(width=4), DynResNet(width=4, dynamic=False)
    x = torch.rand(2, 3, 20, 28)
    assert dynamic(x).shape == static(x).shape == (2, 2, 20, 28)
    assert sum(isinstance(m, DynamicSteerableBlock) for m in dynamic.modules()) == 2
    assert not any(isinstance(m, DynamicSteerableBlock) for m in static.modules())


def _explicit_frame_responses(block: DynamicSteerableBlock, x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by an explicit sum over each window (convolution: the frame filter flipped), (N, C, F, H, W)."""
    basis = block.static.basis.to(x.dtype)
    k, pad = basis.shape[-1], block.static.padding[0]
    n, c, h, w = x.shape
    patches = F.unfold(x.reshape(n * c, 1, h, w), k, padding=pad).reshape(n, c, k, k, h, w)
    return torch.einsum("ncuvyx,fuv->ncfyx", patches, basis.flip((1, 2)))


def _per_location_reference(block: DynamicSteerableBlock, x: torch.Tensor) -> torch.Tensor:
    """The block of eq. 29 location by location: every channel's frame coefficients steered by ``steer`` at the
    pose of that location (and channel), then the canonical 1x1 weights; a loop, no shared contraction code."""
    phi = _explicit_frame_responses(block, x)
    theta = block.pose_net(phi.flatten(1, 2))
    keep, alpha = block._keep, block.static.alpha
    n, c, _, h, w = phi.shape
    out = torch.zeros(n, alpha.shape[0], h, w, dtype=x.dtype)
    for i in range(n):
        for y in range(h):
            for z in range(w):
                for ch in range(c):
                    pose = theta[i, ch if theta.shape[1] > 1 else 0, y, z]
                    rotation = steer(block.order, pose)[keep][:, keep]
                    out[i, :, y, z] += alpha[:, ch] @ (rotation @ phi[i, ch, :, y, z])
    if block.static.bias is not None:
        out = out + block.static.bias.view(1, -1, 1, 1)
    return out + x if block.residual else out


@settings(max_examples=25, deadline=None)
@given(order=st.integers(1, 4), first=st.integers(0, 2), per_channel=st.booleans(), residual=st.booleans(),
       seed=st.integers(0, 999), dtype=st.sampled_from(DTYPES))
def test_forward_equals_per_location_steering(order, first, per_channel, residual, seed, dtype):
    """A random pose network (angles over several turns): the block equals steering each location by hand."""
    first = min(first, order)
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        block = DynamicSteerableBlock(2, 2, order=order, first_order=first, residual=residual, pose_width=4,
                                      pose="channel" if per_channel else "location")
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        block.pose_net[-1].weight.mul_(40.0)
        block.static.bias.normal_()
    x = torch.randn(2, 2, 5, 6, dtype=dtype)
    out, pose = block(x, return_pose=True)
    expected = _per_location_reference(block, x)
    assert float(pose.std()) > 1.0  # the poses really vary
    assert (out - expected).abs().max() <= 50 * TOL[dtype] * expected.abs().max()
