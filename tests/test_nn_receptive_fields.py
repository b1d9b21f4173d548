"""The Gaussian-derivative basis, RFConv layers and receptive-field networks (001, ch. 3).

Every exact claim is checked against an independent computation: the basis against scipy.ndimage's Gaussian
derivatives of an impulse, the layer's N-jet against scipy's filtered image, ``to_conv()`` against the paper's
factorised "basis convolution + 1x1 recombination" (Fig. 4), the semigroup of eq. 21 against scipy's blur.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch.nn import functional as F

from cnnlens.nn import (
    RFConv2d,
    RFConv3d,
    basis_count,
    cnn_b,
    gaussian_derivative_basis,
    get_model,
    kernel_size,
    num_2d_filters,
    rfnin,
    rfnn,
    scale_schedule,
)
from cnnlens.nn.bases import derivative_orders
from conftest import factorised_forward

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _impulse_response(shape: tuple[int, ...], sigma: float, order: tuple[int, ...]) -> np.ndarray:
    """scipy's Gaussian derivative of a centred impulse, truncated at the same radius as the basis."""
    impulse = np.zeros(shape)
    impulse[tuple(s // 2 for s in shape)] = 1.0
    return ndimage.gaussian_filter(impulse, sigma, order=order, truncate=(shape[0] // 2) / sigma, mode="constant")


@settings(max_examples=60, deadline=None)
@given(order=st.integers(0, 4), sigmas=st.lists(st.floats(0.6, 3.0), min_size=1, max_size=3, unique=True),
       dim=st.sampled_from([2, 3]), dtype=st.sampled_from(DTYPES), normalized=st.booleans())
def test_basis_equals_scipy_gaussian_derivatives(order, sigmas, dim, dtype, normalized):
    if dim == 3:
        sigmas = sigmas[:1]
    basis = gaussian_derivative_basis(order, sigmas, dim=dim, dtype=dtype, scale_normalized=normalized)
    assert basis.filters.dtype == dtype and basis.dim == dim
    assert len(basis) == basis_count(order, len(sigmas), dim) == basis.filters.shape[0]
    size = kernel_size(max(sigmas))
    assert basis.filters.shape[1:] == (size,) * dim
    for f, (m, s) in enumerate(zip(basis.orders, basis.sigmas, strict=True)):
        expected = _impulse_response((size,) * dim, s, m) * (s ** sum(m) if normalized else 1.0)
        got = basis.filters[f].double().numpy()
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 10 * TOL[dtype] * scale, (m, s)


def test_basis_metadata_and_ordering():
    basis = gaussian_derivative_basis(2, (2.0, 1.0))
    assert basis.sigmas == (1.0,) * 6 + (2.0,) * 6  # sorted by scale
    assert basis.orders[:6] == ((0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0))
    assert basis.labels[:6] == ("G(1)", "G_x(1)", "G_y(1)", "G_xx(1)", "G_xy(1)", "G_yy(1)")
    assert basis.total_orders[:6] == (0, 1, 1, 2, 2, 2)
    # the zero-order filter keeps the mean; odd derivatives are antisymmetric along their axis
    assert float(basis.filters[0].sum()) == pytest.approx(1.0, abs=1e-14)
    gx = basis.filters[1]
    assert torch.allclose(gx, -gx.flip(1), atol=1e-15)
    assert torch.allclose(gx, gx.flip(0), atol=1e-15)
    smallest = gaussian_derivative_basis(2, (1.0, 2.0, 4.0), zeroth_order="smallest")
    assert len(smallest) == basis_count(2, 3, zeroth_order="smallest") == 18 - 2
    assert [o for o, s in zip(smallest.total_orders, smallest.sigmas, strict=True) if o == 0] == [0]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_derivative_orders_are_every_partial_derivative(dim):
    for order in range(5):
        orders = derivative_orders(order, dim)
        assert len(orders) == len(set(orders)) == math.comb(order + dim, dim)
        assert all(sum(m) <= order and len(m) == dim for m in orders)


@settings(max_examples=30, deadline=None)
@given(s1=st.floats(1.5, 2.5), s2=st.floats(1.5, 2.5), order=st.integers(0, 4), dtype=st.sampled_from(DTYPES))
def test_semigroup_eq21(s1, s2, order, dtype):
    """G_m(sigma_1) blurred by G(sigma_2) is G_m(sqrt(sigma_1^2 + sigma_2^2)) (eq. 21 of 001), unnormalised; the
    blur is a separable convolution in the basis' own dtype."""
    s3 = math.hypot(s1, s2)
    b1 = gaussian_derivative_basis(order, s1, size=61, scale_normalized=False, dtype=dtype).filters
    b3 = gaussian_derivative_basis(order, s3, size=61, scale_normalized=False, dtype=dtype).filters
    blur = gaussian_derivative_basis(0, s2, size=61, scale_normalized=False, dtype=dtype).filters[0]
    blurred = F.conv2d(b1[:, None], blur[None, None], padding=30)[:, 0]
    inner = slice(15, 46)
    err = (blurred - b3)[:, inner, inner].abs().amax((1, 2)) / b3.abs().amax((1, 2))
    assert float(err.max()) < (1e-6 if dtype == torch.float64 else 2e-5), err


def test_semigroup_is_approximate_at_sigma_one():
    """At sigma = 1 the sampled Gaussian aliases: the semigroup holds to about 1e-3 only (documented limit)."""
    b1 = gaussian_derivative_basis(1, 1.0, size=41, scale_normalized=False).filters.numpy()
    b3 = gaussian_derivative_basis(1, math.sqrt(2.0), size=41, scale_normalized=False).filters.numpy()
    blurred = ndimage.gaussian_filter(b1[0], 1.0, mode="constant", truncate=10.0)
    err = np.abs(blurred - b3[0]).max() / np.abs(b3[0]).max()
    assert 1e-6 < err < 5e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_rfconv_responses_are_the_scale_space_n_jet(dtype):
    """One-hot alpha gives the image's Gaussian derivative (eq. 19), as scipy computes it, in the interior."""
    torch.manual_seed(0)
    layer = RFConv2d(1, 10, order=3, sigmas=1.5, bias=False, dtype=dtype, normalize=False)
    with torch.no_grad():
        layer.alpha.zero_()
        layer.alpha[torch.arange(10), 0, torch.arange(10)] = 1.0
    image = torch.rand(1, 1, 40, 40, dtype=dtype)
    out = layer(image)[0].detach().double().numpy()
    r = layer.kernel_size[0] // 2
    inner = (slice(r, 40 - r),) * 2
    for f, m in enumerate(layer.orders):
        expected = ndimage.gaussian_filter(image[0, 0].double().numpy(), 1.5, order=m, truncate=r / 1.5)
        expected *= 1.5 ** sum(m)
        assert np.abs(out[f][inner] - expected[inner]).max() <= 10 * TOL[dtype] * np.abs(expected).max()


@settings(max_examples=40, deadline=None)
@given(dim=st.sampled_from([2, 3]), groups=st.sampled_from([1, 2]), stride=st.integers(1, 2),
       order=st.integers(0, 3), sigma=st.sampled_from([0.7, 1.0, 1.3]), bias=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000), free=st.booleans())
def test_to_conv_equals_layer_and_factorised_forward(dim, groups, stride, order, sigma, bias, dtype, seed, free):
    torch.manual_seed(seed)
    cls = RFConv2d if dim == 2 else RFConv3d
    layer = cls(2 * groups, 2 * groups, order, sigma, stride=stride, groups=groups, bias=bias, dtype=dtype,
                basis="free" if free else "gauss")
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(2, 2 * groups, *([9] * dim), dtype=dtype)
    out = layer(x)
    reference = factorised_forward(layer, x)
    exported = layer.to_conv()(x)
    assert type(layer.to_conv()) is (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)
    scale = reference.abs().max()
    assert (out - reference).abs().max() <= TOL[dtype] * 10 * scale
    assert (exported - reference).abs().max() <= TOL[dtype] * 10 * scale


def test_gauss_basis_is_fixed_free_basis_learns():
    gauss, free = RFConv2d(3, 4, 2, 1.0), RFConv2d(3, 4, 2, 1.0, basis="free")
    assert "basis" in dict(gauss.named_buffers()) and "basis" in gauss.state_dict()
    assert [n for n, _ in gauss.named_parameters()] == ["alpha", "bias"]
    assert "basis" in dict(free.named_parameters())
    # the free basis starts with the Gaussian filters' norms
    assert torch.allclose(free.basis.flatten(1).norm(dim=1), gauss.basis.flatten(1).norm(dim=1))
    free(torch.randn(2, 3, 8, 8)).sum().backward()
    assert free.basis.grad is not None and free.basis.grad.abs().sum() > 0


def test_rfconv_initial_variance_matches_kaiming():
    torch.manual_seed(0)
    layer = RFConv2d(64, 64, 3, 1.0)
    plain = torch.nn.Conv2d(64, 64, layer.kernel_size)
    torch.nn.init.kaiming_normal_(plain.weight)
    ratio = layer.effective_weight().pow(2).sum((2, 3)).mean() / plain.weight.pow(2).sum((2, 3)).mean()
    assert 0.8 < float(ratio.detach()) < 1.25


def test_table1_filter_counts():
    """Table 1 of 001: 12, 24, 40, 60 single-scale and 24, 54, 94, 144 with the scale schedule, 4 basis layers."""
    single = [num_2d_filters(rfnin(order=m, in_channels=3, num_classes=100, sigmas=((1,),) * 4)) for m in (1, 2, 3, 4)]
    multi = [num_2d_filters(rfnin(order=m, in_channels=3, num_classes=100, sigmas=scale_schedule((1, 2, 4, 8))))
             for m in (1, 2, 3, 4)]
    assert single == [12, 24, 40, 60]
    assert multi == [24, 54, 94, 144]
    assert [sum(basis_count(m, len(s), zeroth_order="smallest") for s in scale_schedule((1, 2, 4, 8)))
            for m in (1, 2, 3, 4)] == multi
    # the plain twin counts its free 2-D kernels
    assert num_2d_filters(cnn_b(width=8)) == 1 * 8 + 8 * 8 + 8 * 8


def test_scale_schedule():
    assert scale_schedule((8, 1, 4, 2)) == ((1, 2, 4, 8), (1, 2, 4), (1, 2), (1,))
    assert scale_schedule((1, 2, 4), layers=2) == ((1, 2, 4), (1, 2))
    with pytest.raises(ValueError, match="layers must be between 1 and"):
        scale_schedule((1, 2), layers=3)


@pytest.mark.parametrize("name", ["rfnn", "cnn-b", "rfnin"])
def test_models_build_and_run(name):
    model = get_model(name, num_classes=7)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)
    assert get_model(name, num_classes=5, in_channels=3)(torch.randn(1, 3, 28, 28)).shape == (1, 5)


def test_rfnn_basis_switch():
    assert isinstance(rfnn().features[0], RFConv2d) and rfnn().features[0].basis_kind == "gauss"
    assert rfnn(basis="free").features[0].basis_kind == "free"
    plain = cnn_b().features[0]
    assert type(plain) is torch.nn.Conv2d and plain.kernel_size == rfnn().features[0].kernel_size == (11, 11)


def test_spline_engine_reads_an_rfnn_exactly():
    """RFConv builds its filter from parameters only, so the network stays piecewise affine: the spline engine's A
    equals jacrev in float64."""
    from cnnlens.spline import affine_map

    torch.manual_seed(0)
    model = rfnn(width=4).double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    amap = affine_map(model, x)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x).flatten(2)
    assert (amap.A - jac).abs().max() <= 1e-10 * jac.abs().max()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": 5, "sigmas": 1.0}, r"order must be an integer in 0\.\.4"),
        ({"order": -1, "sigmas": 1.0}, r"order must be an integer in 0\.\.4"),
        ({"order": 1.5, "sigmas": 1.0}, r"order must be an integer in 0\.\.4"),
        ({"order": 2, "sigmas": 0.0}, "positive finite"),
        ({"order": 2, "sigmas": -1.0}, "positive finite"),
        ({"order": 2, "sigmas": float("nan")}, "positive finite"),
        ({"order": 2, "sigmas": ()}, "at least one scale"),
        ({"order": 2, "sigmas": (1.0, 1.0)}, "distinct"),
        ({"order": 2, "sigmas": 2.0, "size": 5}, "at least 13"),
        ({"order": 2, "sigmas": 1.0, "size": 8}, "odd integer"),
        ({"order": 2, "sigmas": 1.0, "dim": 4}, "dim must be 1, 2 or 3"),
        ({"order": 2, "sigmas": 1.0, "zeroth_order": "none"}, "zeroth_order"),
    ],
)
def test_basis_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gaussian_derivative_basis(**kwargs)


def test_rfconv_bad_input():
    layer = RFConv2d(3, 4, 2, 1.0)
    with pytest.raises(ValueError, match=r"input of shape \(N, C, H, W\)"):
        layer(torch.randn(2, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        layer(torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups"):
        RFConv2d(3, 4, groups=2)
    with pytest.raises(ValueError, match="basis must be 'gauss'"):
        RFConv2d(3, 4, basis="hermite")
    with pytest.raises(ValueError, match=r"input of shape \(N, C, D, H, W\)"):
        RFConv3d(1, 2, 1, 1.0)(torch.randn(1, 8, 8))
    with pytest.raises(ValueError, match="scales of each basis layer"):
        rfnin(sigmas=())


def test_scattering_baseline_imports_without_kymatio_torch_and_measures():
    """kymatio's ``kymatio.torch`` pulls in the 3-D scattering (broken with scipy >= 1.17); the baseline imports the
    2-D torch frontend only, on a fresh install, and its features have the J = 2 shape."""
    import subprocess
    import sys

    code = ("from cnnlens.experiments._receptive import ScatteringSVM; import torch; "
            "s = ScatteringSVM((28, 28)); "
            "from cnnlens.data import ArrayDataset; "
            "d = ArrayDataset(torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 0]), 2, 'x', 'train'); "
            "print(s.features(d).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["(3,", "3969)"]


def test_scattering_svm_separates_two_shifted_classes():
    from cnnlens.data import ArrayDataset
    from cnnlens.experiments._receptive import ScatteringSVM

    torch.manual_seed(0)
    bars = torch.zeros(40, 1, 28, 28)
    labels = torch.arange(40) % 2
    for i in range(40):
        offset = int(torch.randint(4, 24, ()))
        if labels[i]:
            bars[i, 0, :, offset] = 1.0  # vertical bar
        else:
            bars[i, 0, offset, :] = 1.0  # horizontal bar
    pool = ArrayDataset(bars[:30], labels[:30], 2, "bars", "train")
    test = ArrayDataset(bars[30:], labels[30:], 2, "bars", "test")
    errors = ScatteringSVM((28, 28)).errors(pool, [torch.arange(0, 30), torch.arange(0, 10)], test)
    assert errors == [0.0, 0.0]


def test_budget_epochs_follow_the_training_size():
    from cnnlens.experiments._receptive import RFBudget

    budget = RFBudget(images=8000, min_epochs=5, max_epochs=40)
    assert [budget.epochs(n) for n in (100, 300, 1000, 4000)] == [40, 27, 8, 5]


def test_alpha_statistics_read_fig5():
    """A network whose high-order coefficients are small and whose last layer leans on the zero-order function."""
    from cnnlens.experiments.basis_orders import _alpha_statistics

    orders = (0, 1, 1, 2, 2, 2)
    rng = np.random.default_rng(0)
    first = rng.uniform(0.5, 1.0, (50, 6)) * np.array([0.2, 1, 1, 0.3, 0.3, 0.3])
    last = rng.uniform(0.5, 1.0, (50, 6)) * np.array([3.0, 1, 1, 0.3, 0.3, 0.3])
    stats = _alpha_statistics([(first, orders), (last, orders)], resamples=100, seed=0)
    assert stats["alpha_ratio_high_low"] == pytest.approx(0.3, rel=0.1)
    assert stats["alpha_zero_share_top"] > 2 > 0.5 > stats["alpha_zero_share_first"]
    assert 0 < stats["alpha_ratio_high_low_se"] < 0.05


def test_normalized_layer_basis_has_unit_norm_and_same_span():
    raw = RFConv2d(2, 3, 3, (1.0, 2.0), normalize=False)
    unit = RFConv2d(2, 3, 3, (1.0, 2.0))
    norms = raw.basis.flatten(1).norm(dim=1)
    assert torch.allclose(unit.basis.flatten(1).norm(dim=1), torch.ones(len(norms)), atol=1e-6)
    assert torch.allclose(unit.basis * norms.view(-1, 1, 1), raw.basis, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_export_replaces_every_rfconv_by_an_equal_conv(dtype):
    from cnnlens.nn import RFConv2d as RF
    from cnnlens.nn import export

    torch.manual_seed(0)
    model = rfnin(order=2, sigmas=scale_schedule((1, 2, 4)), width=6).to(dtype).eval()
    plain = export(model)
    assert not any(isinstance(m, RF) for m in plain.modules())
    assert any(isinstance(m, RF) for m in model.modules())  # the original is untouched
    x = torch.rand(3, 1, 28, 28, dtype=dtype)
    reference = model(x)
    assert (plain(x) - reference).abs().max() <= 10 * TOL[dtype] * reference.abs().max()
