"""Frames (sec. 4.3 and Fig. 9 of 001), their bounds (eq. 7), FrameConv2d (eq. 24) and steering (eq. 22).

The references are independent: rotated filters are the analytic Hermite-Gaussians (scipy's Hermite polynomials)
evaluated at rotated coordinates; frame bounds come from closed forms (the framelets' 1-D frame operator
diag(1/4, 1/2, 1/4) and the unitary extension principle; the naive frame's 1-D eigenvalues 2 and (5 +- sqrt 17) / 2,
and its 1-D symbol 5 + 4 cos w + 4 cos^2 w); layer responses to rotated images are compared with the original
layer's response sampled at rotated positions of an analytic image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import eval_hermite

from cnnlens.nn import (
    FRAMES,
    Frame,
    FrameConv2d,
    RFConv2d,
    export,
    frame,
    frame_bounds,
    frame_schedule,
    gaussian_derivative_basis,
    steer,
    steer_filter,
)
from cnnlens.nn.bases import derivative_orders
from conftest import factorised_forward

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _rotated_derivative(m: tuple[int, int], sigma: float, size: int, theta: float) -> np.ndarray:
    """G_m (the basis' normalisation: unit-sum sampled Gaussian, times sigma^|m|) rotated by theta, evaluated
    analytically at R^-1 p: x' = cos x - sin y, y' = sin x + cos y (counter-clockwise as displayed, y down)."""
    grid = np.arange(size) - size // 2
    y, x = np.meshgrid(grid, grid, indexing="ij")
    xr = math.cos(theta) * x - math.sin(theta) * y
    yr = math.sin(theta) * x + math.cos(theta) * y
    z = np.exp(-0.5 * (grid / sigma) ** 2).sum()

    def factor(order: int, u: np.ndarray) -> np.ndarray:
        s2 = sigma * math.sqrt(2.0)
        return sigma**order * (-1.0 / s2) ** order * eval_hermite(order, u / s2) * np.exp(-0.5 * (u / sigma) ** 2) / z

    return factor(m[0], yr) * factor(m[1], xr)


@settings(max_examples=60, deadline=None)
@given(order=st.integers(0, 4), theta=st.floats(-2 * math.pi, 2 * math.pi), sigma=st.floats(0.8, 2.0),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000))
def test_steer_gives_the_analytically_rotated_filter(order, theta, sigma, dtype, seed):
    """Eq. 22 of 001 generalised to orders <= 4: the steered coefficients combine the sampled basis into the
    rotated filter sampled on the grid, pointwise (steering is exact for sampled Gaussian derivatives)."""
    basis = gaussian_derivative_basis(order, sigma, dtype=dtype)
    size = basis.filters.shape[-1]
    coef = torch.randn(len(basis), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    steered = steer_filter(coef.to(dtype), theta)
    got = torch.einsum("f,fyx->yx", steered, basis.filters).double().numpy()
    expected = sum(c * _rotated_derivative(m, sigma, size, theta) for c, m in zip(coef.tolist(), basis.orders,
                                                                                   strict=True))
    assert np.abs(got - expected).max() <= 10 * TOL[dtype] * np.abs(expected).max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quarter", [1, 2, 3, -1])
def test_steer_by_quarter_turns_is_rot90(dtype, quarter):
    basis = gaussian_derivative_basis(4, 1.3, dtype=dtype)
    coef = torch.randn(len(basis), generator=torch.Generator().manual_seed(quarter), dtype=dtype)
    filt = torch.einsum("f,fyx->yx", coef, basis.filters)
    steered = torch.einsum("f,fyx->yx", steer_filter(coef, quarter * math.pi / 2), basis.filters)
    assert (steered - torch.rot90(filt, quarter, (-2, -1))).abs().max() <= TOL[dtype] * filt.abs().max()
    # a signed permutation, up to cos(pi / 2) rounding
    matrix = steer(4, quarter * math.pi / 2, dtype=dtype)
    assert (matrix.abs().round() - matrix.abs()).abs().max() <= 10 * TOL[dtype]


def test_steer_is_eq22_and_block_diagonal():
    theta = 0.7
    c, s = math.cos(theta), math.sin(theta)
    matrix = steer(3, theta)
    index = {m: f for f, m in enumerate(derivative_orders(3, 2))}
    gx, gxx, gxxx = index[(0, 1)], index[(0, 2)], index[(0, 3)]
    assert matrix[[index[(0, 1)], index[(1, 0)]], gx].tolist() == pytest.approx([c, -s], abs=1e-15)
    assert matrix[[index[(0, 2)], index[(1, 1)], index[(2, 0)]], gxx].tolist() == pytest.approx(
        [c**2, -2 * c * s, s**2], abs=1e-15)
    assert matrix[[index[(0, 3)], index[(1, 2)], index[(2, 1)], index[(3, 0)]], gxxx].tolist() == pytest.approx(
        [c**3, -3 * c**2 * s, 3 * c * s**2, -(s**3)], abs=1e-15)
    total = torch.tensor([sum(m) for m in derivative_orders(3, 2)])
    assert (matrix[total[:, None] != total[None, :]] == 0).all()
    assert torch.equal(steer(3, 0.0), torch.eye(10, dtype=torch.float64))
    assert steer(2, 0.3, dtype=torch.float32).dtype == torch.float32


@settings(max_examples=40, deadline=None)
@given(a=st.floats(-4.0, 4.0), b=st.floats(-4.0, 4.0), order=st.integers(0, 4), dtype=st.sampled_from(DTYPES))
def test_steer_is_a_group_homomorphism(a, b, order, dtype):
    lhs = steer(order, a, dtype=dtype) @ steer(order, b, dtype=dtype)
    assert (lhs - steer(order, a + b, dtype=dtype)).abs().max() <= 100 * TOL[dtype]


def test_steer_broadcasts_over_poses_and_differentiates():
    theta = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64, requires_grad=True)
    coef = torch.randn(5, 15, dtype=torch.float64)
    out = steer_filter(coef, theta)
    assert out.shape == (5, 15) and steer(4, theta).shape == (5, 15, 15)
    for i in range(5):
        assert torch.allclose(out[i], steer(4, float(theta[i].detach())) @ coef[i], atol=1e-14)
    # d/dtheta of the first-order block at theta = 0 is the generator [[0, 1], [-1, 0]]
    zero = torch.zeros((), dtype=torch.float64, requires_grad=True)
    gen = torch.autograd.functional.jacobian(lambda t: steer(1, t), zero)
    assert torch.allclose(gen[1:, 1:], torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64))


def _layer(dtype: torch.dtype, **kwargs) -> RFConv2d:
    layer = RFConv2d(2, 3, dtype=dtype, **kwargs)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_steered_layer_is_equivariant_under_rot90(dtype, quarter):
    """A steered layer on the rotated image is the rotated response (eq. 25 of 001), exactly for quarter turns,
    over a multi-scale, unit-norm basis with a single order-0 function."""
    torch.manual_seed(quarter)
    layer = _layer(dtype, order=3, sigmas=(1.0, 1.5), zeroth_order="smallest")
    x = torch.randn(2, 2, 19, 16, dtype=dtype)
    steered = steer_filter(layer, quarter * math.pi / 2)
    assert isinstance(steered, RFConv2d) and steered is not layer
    assert torch.equal(steered.basis, layer.basis)
    expected = torch.rot90(layer(x), quarter, (-2, -1))
    got = steered(torch.rot90(x, quarter, (-2, -1)))
    assert (got - expected).abs().max() <= 10 * TOL[dtype] * expected.abs().max()


def _blobs(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A smooth analytic image: six Gaussian blobs of width 2.5-4 pixels."""
    gen = torch.Generator().manual_seed(1)
    centers = torch.rand(6, 2, generator=gen, dtype=torch.float64) * 16 + 12
    widths = torch.rand(6, generator=gen, dtype=torch.float64) * 1.5 + 2.5
    amps = torch.randn(6, generator=gen, dtype=torch.float64)
    out = torch.zeros_like(y)
    for (cy, cx), w, a in zip(centers, widths, amps, strict=True):
        out = out + a * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * w * w))
    return out


# (order, sigma, truncation k, tolerance): measured relative errors 2e-4 .. 1e-3; the truncation window of the
# rotated filter (a rotated square) is the main error at k = 3
EQUIVARIANCE = [(1, 1.0, 3.0, 1e-3), (2, 1.5, 3.0, 2e-3), (3, 1.5, 4.0, 1e-3), (4, 2.0, 4.0, 2e-3)]


@pytest.mark.parametrize(("order", "sigma", "k", "tolerance"), EQUIVARIANCE)
@pytest.mark.parametrize("theta", [0.3, math.pi / 4, 2.0])
def test_steered_layer_is_equivariant_at_other_angles(order, sigma, k, tolerance, theta):
    """L_theta(T_theta y) = T_theta L(y) for an analytic image y: the left side is the steered layer on the sampled
    rotated image, the right side the original filter summed against the image sampled around the rotated
    positions; they differ by the sampling of the rotated grid and the truncation window, away from the border."""
    torch.manual_seed(order)
    size, centre = 41, 20.0
    layer = RFConv2d(1, 3, order, sigma, k=k, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    yy, xx = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 2, indexing="ij")
    cos, sin = math.cos(theta), math.sin(theta)
    ry = sin * (xx - centre) + cos * (yy - centre) + centre
    rx = cos * (xx - centre) - sin * (yy - centre) + centre
    got = steer_filter(layer, theta)(_blobs(ry, rx)[None, None])[0].detach()
    filt = torch.einsum("of,fyx->oyx", layer.alpha.detach()[:, 0], layer.basis)  # the layer convolves with filt
    r = filt.shape[-1] // 2
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    inner = slice(r + 4, size - r - 4)
    py, px = ry[inner, inner], rx[inner, inner]
    samples = _blobs(py[..., None, None] - offsets[:, None], px[..., None, None] - offsets[None, :])
    expected = torch.einsum("oyx,...yx->o...", filt, samples) + layer.bias.detach()[:, None, None]
    assert (got[:, inner, inner] - expected).abs().max() <= tolerance * expected.abs().max()


def test_frame_bounds_pixel_and_framelets():
    pixel = frame_bounds(frame("pixel", 5))
    assert pixel.vector == pytest.approx((1.0, 1.0), abs=1e-14) and pixel.vector.tight and pixel.spans
    # as a filter bank the k*k impulses are k*k shifts: tight with A = B = k^2
    assert pixel.filter_bank == pytest.approx((25.0, 25.0), rel=1e-12) and pixel.filter_bank.tight
    framelet = frame_bounds(frame("framelet"))
    # the 1-D frame operator is diag(1/4, 1/2, 1/4); the 2-D one its Kronecker square: eigenvalues 1/16 .. 1/4
    assert framelet.vector == pytest.approx((1 / 16, 1 / 4), abs=1e-15) and not framelet.vector.tight
    # unitary extension principle: |H0|^2 + |H1|^2 + |H2|^2 = cos^4 + 2 cos^2 sin^2 + sin^4 (w / 2) = 1
    assert framelet.filter_bank == pytest.approx((1.0, 1.0), abs=1e-14) and framelet.filter_bank.tight


def test_frame_bounds_naive_are_computed_and_not_tight():
    naive = frame_bounds(frame("naive", 3))
    # 1-D frame operator [[3, 1, 1], [1, 1, 1], [1, 1, 3]]: eigenvalues 2 and (5 +- sqrt 17) / 2
    low, high = (5 - math.sqrt(17)) / 2, (5 + math.sqrt(17)) / 2
    assert naive.vector == pytest.approx((low**2, high**2), rel=1e-12) and naive.spans
    # 1-D symbol 5 + 4 cos w + 4 cos^2 w: minimum 4 at cos w = -1/2 (between grid points), maximum 13 at w = 0
    assert naive.filter_bank.upper == pytest.approx(169.0, rel=1e-12)
    assert 16.0 <= naive.filter_bank.lower <= 16.0 * (1 + 1e-3)
    assert not naive.vector.tight and not naive.filter_bank.tight
    assert frame_bounds(frame("naive", 3).filters).vector == naive.vector  # a bare stack works too


def test_gaussian_frame_spans_and_the_literal_first_nine_atoms_do_not():
    gauss = frame("gaussian", 3)
    assert gauss.labels == ("G(1)", "G_x(1)", "G_y(1)", "G_xx(1)", "G_xy(1)", "G_yy(1)", "G_xxy(1)", "G_xyy(1)",
                            "G_xxyy(1)")
    assert frame_bounds(gauss).spans and not frame_bounds(gauss).vector.tight
    njet = frame("gaussian", 3, order=3)
    first_nine = Frame("first nine", njet.filters[:9], njet.labels[:9])
    assert "G_xxx(1)" in first_nine.labels and not frame_bounds(first_nine).spans
    assert torch.linalg.matrix_rank(first_nine.filters.flatten(1)) == 8  # sampled on 3 points, g_3 is a multiple of g_1
    with pytest.raises(ValueError, match="spans only 8 of the 9 dimensions"):
        FrameConv2d(1, 1, first_nine)
    assert frame_bounds(frame("gaussian", 3, order=4)).spans  # the full 4-jet: overcomplete (15 atoms)


@pytest.mark.parametrize("name", FRAMES)
def test_frames_shape_and_labels(name):
    for size in (3, 5) if name != "framelet" else (3,):
        built = frame(name, size, dtype=torch.float32)
        assert built.filters.shape == (size * size, size, size) and built.filters.dtype == torch.float32
        assert len(built.labels) == len(set(built.labels)) == len(built) and built.size == size
        assert frame_bounds(built).spans


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(FRAMES), groups=st.sampled_from([1, 2]), stride=st.integers(1, 2), bias=st.booleans(),
       normalize=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000))
def test_frameconv_to_conv_equals_layer_and_factorised_forward(name, groups, stride, bias, normalize, dtype, seed):
    torch.manual_seed(seed)
    layer = FrameConv2d(2 * groups, 2 * groups, name, stride=stride, groups=groups, bias=bias, normalize=normalize,
                        dtype=dtype)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(2, 2 * groups, 9, 9, dtype=dtype)
    reference = factorised_forward(layer, x)
    plain = layer.to_conv()
    assert type(plain) is torch.nn.Conv2d and plain.weight.dtype == dtype
    scale = reference.abs().max()
    assert (layer(x) - reference).abs().max() <= 10 * TOL[dtype] * scale
    assert (plain(x) - reference).abs().max() <= 10 * TOL[dtype] * scale
    assert (export(torch.nn.Sequential(layer))(x) - reference).abs().max() <= 10 * TOL[dtype] * scale


def test_frameconv_uses_the_frame_as_defined():
    layer = FrameConv2d(3, 4, "framelet")
    assert torch.equal(layer.basis, frame("framelet", dtype=torch.float32).filters)
    assert [n for n, _ in layer.named_parameters()] == ["alpha", "bias"] and "basis" in layer.state_dict()
    assert "basis_scale" not in layer.state_dict()
    unit = FrameConv2d(3, 4, "naive", normalize=True)
    assert torch.allclose(unit.basis.flatten(1).norm(dim=1), torch.ones(9))


def test_steer_filter_on_a_gaussian_frame_layer():
    """The full 4-jet is an overcomplete, steerable frame of 3x3 filters (15 atoms spanning R^9; on 5x5 it spans
    only 15 of 25 dimensions): a FrameConv2d over it steers by quarter turns exactly."""
    torch.manual_seed(0)
    assert not frame_bounds(frame("gaussian", 5, order=4)).spans
    layer = FrameConv2d(2, 2, frame("gaussian", 3, order=4), dtype=torch.float64, normalize=True)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    steered = steer_filter(layer, math.pi / 2)
    expected = torch.rot90(layer(x), 1, (-2, -1))
    assert (steered(torch.rot90(x, 1, (-2, -1))) - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_frame_schedule_alternates_for_the_image_frame():
    assert frame_schedule("image", 5) == ("gaussian", "framelet", "gaussian", "framelet", "gaussian")
    assert frame_schedule("pixel", 2) == ("pixel", "pixel") and frame_schedule("naive", 1) == ("naive",)
    layers = [FrameConv2d(2, 2, name) for name in frame_schedule("image", 3)]
    assert [layer.frame_name for layer in layers] == ["gaussian", "framelet", "gaussian"]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown frame 'haar'; the known frames are 'pixel', 'gaussian', "
                                         "'framelet', 'naive'"):
        frame("haar")
    with pytest.raises(ValueError, match="unknown frame 'wavelet'"):
        FrameConv2d(1, 1, "wavelet")
    with pytest.raises(ValueError, match="framelet frame .* is 3x3: a kernel of size 1 is too small"):
        FrameConv2d(1, 1, "framelet", size=1)
    with pytest.raises(ValueError, match="odd kernel size"):
        frame("pixel", 4)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        frame("gaussian", 3, sigma=0.0)
    with pytest.raises(ValueError, match=r"order must be an integer in 0\.\.4"):
        steer(5, 0.1)
    with pytest.raises(ValueError, match=r"order must be an integer in 0\.\.4"):
        frame("gaussian", 3, order=5)
    with pytest.raises(ValueError, match=r"F in \[1, 3, 6, 10, 15\]"):
        steer_filter(torch.zeros(4, 21), 0.1)
    with pytest.raises(ValueError, match="unknown frame schedule 'mixed'"):
        frame_schedule("mixed", 3)
    with pytest.raises(ValueError, match="not closed under rotation: order 3 at sigma 1 lacks G_xxx"):
        steer_filter(FrameConv2d(1, 1, "gaussian"), 0.1)
    with pytest.raises(ValueError, match="steering is defined for orders up to 4"):
        steer_filter(FrameConv2d(1, 1, "gaussian", size=5), 0.1)
    with pytest.raises(ValueError, match="fixed Gaussian-derivative basis"):
        steer_filter(FrameConv2d(1, 1, "framelet"), 0.1)
    with pytest.raises(ValueError, match="fixed Gaussian-derivative basis"):
        steer_filter(RFConv2d(1, 1, basis="free"), 0.1)
    with pytest.raises(TypeError, match="got Linear"):
        steer_filter(torch.nn.Linear(2, 2), 0.1)


def test_spline_engine_reads_a_frame_network_exactly():
    """FrameConv2d builds its filter from parameters only: the spline engine's A equals jacrev in float64."""
    from cnnlens.spline import affine_map

    torch.manual_seed(0)
    first, second = frame_schedule("image", 2)
    layers = [FrameConv2d(1, 2, first, dtype=torch.float64), FrameConv2d(2, 2, second, dtype=torch.float64)]
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 8 * 8, 3, dtype=torch.float64))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x).flatten(2)
    assert (affine_map(model, x).A - jac).abs().max() <= 1e-10 * jac.abs().max()


def test_scale_steering_follows_the_heat_equation_near_scale_one():
    """G(s sigma) = G + (s^2 - 1) / 2 (G_xx + G_yy) + O((s - 1)^2) for scale-normalised derivatives (the diffusion
    equation of scale space): the least-squares map's column for G has those coefficients at s = 1.05."""
    from cnnlens.nn import steer_scale
    from cnnlens.nn.bases import derivative_orders

    s = 1.05
    steering = steer_scale(2, s, sigma=2.0)
    position = {m: f for f, m in enumerate(derivative_orders(2, 2))}
    column = steering.matrix[:, position[(0, 0)]]
    expected = (s**2 - 1) / 2
    assert float(column[position[(0, 0)]]) == pytest.approx(1.0, abs=0.01)
    assert float(column[position[(0, 2)]]) == pytest.approx(expected, rel=0.1)
    assert float(column[position[(2, 0)]]) == pytest.approx(expected, rel=0.1)
    assert float(column[position[(1, 1)]]) == pytest.approx(0.0, abs=1e-3)


def test_scale_steering_is_exact_at_one_and_degrades_with_the_scale():
    from cnnlens.nn import steer_scale

    identity = steer_scale(3, 1.0, sigma=1.5)
    assert torch.allclose(identity.matrix, torch.eye(10, dtype=identity.matrix.dtype), atol=1e-10)
    assert float(identity.residual.max()) < 1e-12
    zero_order = [float(steer_scale(4, s, sigma=1.5).residual[0]) for s in (1.2, 1.5, 2.0)]
    assert zero_order[0] < 0.02 < zero_order[1] < zero_order[2]  # the text's range 0.8-1.5 is where it holds
    assert float(steer_scale(4, 0.8, sigma=1.5).residual[0]) < 0.02
    with pytest.raises(ValueError, match="positive finite factor"):
        steer_scale(2, 0.0)
