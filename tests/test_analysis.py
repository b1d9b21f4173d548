"""cnnlens.analysis against independent computations: the Jacobian spectrum against the SVD of
torch.autograd.functional.jacobian, contraction against a numpy evaluation of eqs. 16-17 of 001 over all pairs,
separability on toy sets whose answer is known, eps(X) and interpolation on an exactly invertible map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.analysis import (
    Features,
    contraction,
    energy_count,
    interpolate,
    jacobian_spectrum,
    layerwise_separability,
    pca_separability,
    reconstruction_error,
    spatial_features,
)
from cnnlens.nn import IRevNet
from cnnlens.spline._capture import module_outputs

DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def _conv_net(seed: int, dtype: torch.dtype, channels: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(3, 2, 1))
    return net.to(dtype).eval()


# --- Jacobian spectrum ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(3, 6), layer=st.sampled_from([None, "1", "3"]))
def test_jacobian_spectrum_equals_svd_of_full_jacobian(dtype: torch.dtype, seed: int, size: int,
                                                         layer: str | None) -> None:
    net = _conv_net(seed, dtype)
    x = torch.randn(2, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    upto = len(net) if layer is None else int(layer) + 1
    reference = torch.autograd.functional.jacobian(lambda v: net[:upto](v.reshape(1, *x.shape)).reshape(-1),
                                                   x.reshape(-1))
    expected = np.linalg.svd(reference.double().numpy(), compute_uv=False)
    spectrum = jacobian_spectrum(net, x, layer=layer, method="full")
    assert spectrum.method == "full" and spectrum.exact_energy
    assert spectrum.dim_in == x.numel() and spectrum.dim_out == reference.shape[0]
    np.testing.assert_allclose(spectrum.singular_values[:len(expected)], expected, rtol=TOL[dtype],
                               atol=TOL[dtype] * expected[0])
    total = float(np.sum(expected**2))
    for share, count in ((0.80, spectrum.k80), (0.97, spectrum.k97)):
        cumulated = np.cumsum(expected**2) / total
        assert count == int(np.argmax(cumulated >= share - 1e-9)) + 1


class _Decaying(nn.Module):
    """x -> W2 tanh(W1 x) with W1 of geometrically decaying singular values (a spectrum with gaps)."""

    def __init__(self, dim: int, seed: int, dtype: torch.dtype) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        s = 0.7 ** torch.arange(dim, dtype=torch.float64)
        self.first = nn.Linear(dim, dim, bias=False)
        self.second = nn.Linear(dim, dim)
        with torch.no_grad():
            self.first.weight.copy_(u @ torch.diag(s) @ v.T)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x.reshape(x.shape[0], -1))))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_randomized_spectrum_agrees_on_top_singular_values(dtype: torch.dtype, seed: int) -> None:
    net = _Decaying(48, seed, dtype).eval()
    x = torch.randn(1, 48, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    full = jacobian_spectrum(net, x[0], method="full")
    fast = jacobian_spectrum(net, x[0], 6, method="randomized", power_iters=6, seed=seed)
    assert fast.method == "randomized" and not fast.exact_energy and len(fast.singular_values) == 6
    np.testing.assert_allclose(fast.singular_values[:4], full.singular_values[:4], rtol=1e-3)
    # Hutchinson's estimate of ||J||_F^2 against the exact sum of squared singular values
    assert fast.total_energy == pytest.approx(full.total_energy, rel=0.5)


def test_energy_count_on_a_known_spectrum() -> None:
    values = np.array([3.0, 2.0, 1.0, 1.0, 1.0])  # energies 9, 4, 1, 1, 1 of 16
    assert energy_count(values, 16.0, 0.5) == 1
    assert energy_count(values, 16.0, 0.8) == 2  # 13 / 16 = 0.8125
    assert energy_count(values, 16.0, 0.97) == 5
    assert energy_count(values[:2], 16.0, 0.97) is None


# --- contraction (eqs. 16-17) ---------------------------------------------------------------------------------------


def _pairs_reference(phi: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Eqs. 16-17 of 001 by a plain double loop over the pairs i < k."""
    intra, inter, contracted = [], [], 0
    for i in range(len(y)):
        for k in range(i + 1, len(y)):
            d = float(np.sqrt(np.sum((phi[i] - phi[k]) ** 2)))
            if y[i] == y[k]:
                intra.append(d)
                contracted += d <= float(np.sqrt(np.sum((x[i] - x[k]) ** 2)))
            else:
                inter.append(d)
    return {"intra": np.mean(intra), "inter": np.mean(inter), "ratio": np.mean(intra) / np.mean(inter),
            "eq16": contracted / len(intra), "margin": min(inter), "n_intra": len(intra), "n_inter": len(inter)}


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 17), batch=st.integers(1, 8), average=st.booleans())
def test_contraction_matches_eqs_16_17_over_all_pairs(dtype: torch.dtype, seed: int, n: int, batch: int,
                                                       average: bool) -> None:
    net = _conv_net(seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=gen, dtype=dtype)
    y = torch.arange(n) % 3
    result = contraction(net, (x, y), ["1", "4"], batch_size=batch, spatial_average=average)
    flat_x = x.double().reshape(n, -1).numpy()
    with torch.no_grad():
        for j, upto in enumerate((2, 5)):
            out = net[:upto](x).double()
            phi = (out.mean((2, 3)) if average else out.reshape(n, -1)).numpy()
            ref = _pairs_reference(phi, flat_x, y.numpy())
            for key, value in (("intra", result.intra[j]), ("inter", result.inter[j]), ("ratio", result.ratio[j]),
                               ("margin", result.margin[j])):
                assert value == pytest.approx(ref[key], rel=TOL[dtype] * 10), key
            assert result.eq16_fraction[j] == pytest.approx(ref["eq16"], abs=1.5 / ref["n_intra"])
            assert (result.n_intra, result.n_inter) == (ref["n_intra"], ref["n_inter"])
    ref_input = _pairs_reference(flat_x, flat_x, y.numpy())
    assert result.input_ratio == pytest.approx(ref_input["ratio"], rel=1e-12)


# --- separability -----------------------------------------------------------------------------------------------


class _TwoViews(nn.Module):
    """Layer ``raw`` passes the XOR-labelled points through; layer ``product`` adds x1 * x2, which makes them
    linearly separable."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Identity()
        self.product = nn.Identity()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.raw(x)
        z = self.product(torch.cat([h, h[:, :1] * h[:, 1:2]], 1))
        return self.head(z.flatten(1))


def _xor(n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    points = points[(points.abs() > 0.1).all(1)]  # a margin around the axes
    labels = ((points[:, 0] > 0) ^ (points[:, 1] > 0)).long()
    return points.to(dtype).reshape(-1, 2, 1, 1), labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separability_known_answer_on_xor(dtype: torch.dtype, seed: int) -> None:
    x, y = _xor(600, seed, dtype)
    result = layerwise_separability(_TwoViews().to(dtype), (x, y), ["raw", "product"], seed=seed)
    assert result.layers == ("raw", "product") and result.dims == (2, 3)
    assert result.linear_acc[0] < 0.75  # XOR: no line separates the classes
    assert result.linear_acc[1] > 0.97  # the product coordinate separates them
    assert result.nn_acc[0] > 0.9  # but the classes are local: 1-NN works on the raw points
    assert result.n_train + result.n_test == len(y)


def _features(x: torch.Tensor, labels: torch.Tensor) -> Features:
    return Features("toy", x[:300].numpy(), labels[:300].numpy(), x[300:].numpy(), labels[300:].numpy())


def test_pca_separability_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    n, dim = 400, 20
    labels = torch.arange(n) % 2
    sign = 2.0 * labels.double() - 1
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    # the class moves every coordinate together: the first principal component (after standardisation) carries it
    shared = _features(noise + 3.0 * sign[:, None], labels)
    result = pca_separability(shared, [1, 5, 20])
    assert result.linear_acc[0] > 0.95 and result.nn_acc[0] > 0.95
    assert result.explained_variance[-1] == pytest.approx(1.0)
    assert list(result.explained_variance) == sorted(result.explained_variance)
    # a class-blind common factor dominates the variance and the class sits in one coordinate: d = 1 loses it
    factor = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    hidden = noise + 3.0 * factor
    hidden[:, 0] = 0.3 * noise[:, 0] + sign
    result = pca_separability(_features(hidden, labels), [1, 20])
    assert result.linear_acc[0] < 0.75 and result.linear_acc[1] > 0.95 and result.full_linear_acc > 0.95
    with pytest.raises(ValueError, match=r"\[1, 20\]"):
        pca_separability(shared, [0, 21])


# --- reconstruction and interpolation on an exactly invertible map ----------------------------------------------


class _Orthogonal(nn.Module):
    """Phi x = Q vec(x) for an orthogonal Q, with inverse Q^T (exactly invertible, not the identity)."""

    def __init__(self, shape: tuple[int, ...], seed: int, dtype: torch.dtype, broken: bool = False) -> None:
        super().__init__()
        dim = int(np.prod(shape))
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64))
        self.register_buffer("q", q.to(dtype))
        self.shape = shape
        self.broken = broken

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1) @ self.q.T

    def inverse(self, phi: torch.Tensor) -> torch.Tensor:
        back = phi @ (self.q if not self.broken else self.q.T)
        return back.reshape(len(phi), *self.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), side=st.integers(2, 6))
def test_reconstruction_error_of_an_orthogonal_map(dtype: torch.dtype, seed: int, n: int, side: int) -> None:
    shape = (1, side, side)
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) + 0.1
    result = reconstruction_error(_Orthogonal(shape, seed, dtype), x, batch_size=7)
    eps = torch.finfo(dtype).eps
    assert result.n == n and result.eps <= 20 * side * eps and result.max_error >= result.eps
    # a wrong inverse is detected: the relative errors computed directly
    broken = _Orthogonal(shape, seed, dtype, broken=True)
    direct = ((x - broken.inverse(broken(x))).reshape(n, -1).double().norm(dim=1)
              / x.reshape(n, -1).double().norm(dim=1))
    assert reconstruction_error(broken, x).eps == pytest.approx(float(direct.mean()), rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(2, 9))
def test_interpolation_of_a_linear_invertible_map_is_the_pixel_path(dtype: torch.dtype, seed: int,
                                                                    steps: int) -> None:
    shape = (2, 3, 3)
    gen = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(*shape, generator=gen, dtype=dtype), torch.randn(*shape, generator=gen, dtype=dtype)
    result = interpolate(_Orthogonal(shape, seed, dtype), x0, x1, steps)
    t = torch.linspace(1, 0, steps, dtype=torch.float64)
    expected = t.reshape(-1, 1, 1, 1) * x0.double() + (1 - t.reshape(-1, 1, 1, 1)) * x1.double()
    torch.testing.assert_close(result.images.double(), expected, rtol=0, atol=50 * torch.finfo(dtype).eps)
    torch.testing.assert_close(result.images[0], x0, rtol=0, atol=50 * torch.finfo(dtype).eps)
    assert result.images.shape == (steps, *shape) and result.t[0] == 1.0 and result.t[-1] == 0.0


# --- bad input --------------------------------------------------------------------------------------------------


def test_unknown_layer_lists_the_available_ones() -> None:
    net = _conv_net(0, torch.float64)
    x, y = torch.randn(8, 2, 4, 4, dtype=torch.float64), torch.arange(8) % 2
    for call in (lambda: layerwise_separability(net, (x, y), ["9"]), lambda: contraction(net, (x, y), ["nope"]),
                 lambda: spatial_features(net, (x, y), ["x"], test_data=(x, y)),
                 lambda: jacobian_spectrum(net, x[0], layer="nope")):
        with pytest.raises(ValueError, match=r"submodules are '0', '1', '2', '3', '4'"):
            call()


def test_model_without_inverse_is_refused() -> None:
    net = _conv_net(0, torch.float32)
    x = torch.randn(3, 2, 4, 4)
    with pytest.raises(TypeError, match="no inverse method"):
        reconstruction_error(net, x)
    with pytest.raises(TypeError, match="no inverse method"):
        interpolate(net, x[0], x[1], 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inputs_are_refused(dtype: torch.dtype) -> None:
    net = _conv_net(0, dtype)
    x, y = torch.randn(8, 2, 4, 4, dtype=dtype), torch.arange(8) % 2
    x[3, 0, 1, 1] = float("nan")
    ortho = _Orthogonal((2, 4, 4), 0, dtype)
    for call in (lambda: layerwise_separability(net, (x, y), ["1"], test_data=(x, y)),
                 lambda: contraction(net, (x, y), ["1"]), lambda: jacobian_spectrum(net, x[3]),
                 lambda: reconstruction_error(ortho, x), lambda: interpolate(ortho, x[3], x[0], 3)):
        with pytest.raises(ValueError, match="NaN"):
            call()


def test_other_bad_inputs() -> None:
    net = _conv_net(0, torch.float64)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="one input"):
        jacobian_spectrum(net, x)
    with pytest.raises(ValueError, match="needs k"):
        jacobian_spectrum(net, x[0], method="randomized")
    with pytest.raises(ValueError, match="method"):
        jacobian_spectrum(net, x[0], method="lanczos")
    with pytest.raises(ValueError, match="two classes"):
        contraction(net, (x, torch.zeros(4, dtype=torch.long)), ["1"])
    with pytest.raises(ValueError, match="steps"):
        interpolate(_Orthogonal((2, 4, 4), 0, torch.float64), x[0], x[1], 1)
    with pytest.raises(ValueError, match="batch_size"):
        contraction(net, (x, torch.arange(4) % 2), ["1"], batch_size=0)
    with pytest.raises(TypeError, match="data set"):
        layerwise_separability(net, [x], ["1"])


def test_module_outputs_hooks_are_removed_and_repeated_modules_refused() -> None:
    shared = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = shared

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))

    model = Twice()
    with pytest.raises(ValueError, match="more than once"), module_outputs(model, ["layer"]):
        model(torch.randn(2, 3))
    assert not shared._forward_hooks and not model._forward_pre_hooks
    net = _conv_net(0, torch.float32)
    with module_outputs(net, ["2"]) as outputs:
        out = net(torch.randn(1, 2, 4, 4))
    assert outputs["2"].shape == (1, 3, 4, 4) and out.shape == (1, 2, 4, 4)
    assert all(not m._forward_hooks for m in net.modules())


# --- on the i-RevNet ---------------------------------------------------------------------------------------------


def _irevnet(seed: int, dtype: torch.dtype, channels: int = 1, blocks: tuple[int, ...] = (1, 2),
             strides: tuple[int, ...] = (1, 2)) -> IRevNet:
    """An i-RevNet with random weights and batch-norm statistics moved away from their initial values."""
    torch.manual_seed(seed)
    model = IRevNet(channels, 5, blocks=blocks, strides=strides).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(3):
            model(3 * torch.randn(8, channels, 8, 8, dtype=dtype) + 1)
    return model.eval()


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.sampled_from([1, 3]))
def test_reconstruction_error_of_irevnet(dtype: torch.dtype, seed: int, channels: int) -> None:
    model = _irevnet(seed, dtype, channels)
    x = torch.rand(9, channels, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    result = reconstruction_error(model, (x, torch.zeros(9, dtype=torch.long)), batch_size=4)
    with torch.no_grad():
        direct = ((x - model.inverse(model.phi(x))).reshape(9, -1).double().norm(dim=1)
                  / x.reshape(9, -1).double().norm(dim=1))
    assert result.eps == pytest.approx(float(direct.mean()), rel=1e-6, abs=10 * torch.finfo(dtype).eps)
    assert result.eps <= (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(2, 6))
def test_interpolation_of_irevnet_is_linear_in_phi(dtype: torch.dtype, seed: int, steps: int) -> None:
    model = _irevnet(seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    x0, x1 = torch.rand(1, 8, 8, generator=gen, dtype=dtype), torch.rand(1, 8, 8, generator=gen, dtype=dtype)
    result = interpolate(model, x0, x1, steps)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    with torch.no_grad():
        phi = model.phi(result.images)
        ends = model.phi(torch.stack([x0, x1]))
    t = torch.as_tensor(result.t, dtype=dtype).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(phi, t * ends[:1] + (1 - t) * ends[1:], rtol=tol, atol=tol)
    torch.testing.assert_close(result.images[0], x0, rtol=tol, atol=tol)
    torch.testing.assert_close(result.images[-1], x1, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_spectrum_of_irevnet_equals_autograd(dtype: torch.dtype) -> None:
    model = _irevnet(0, dtype)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert model.memory_saving  # autograd runs through its memory-saving Function, torch.func around it
    reference = torch.autograd.functional.jacobian(lambda v: model.phi(v.reshape(1, 1, 8, 8)).reshape(-1),
                                                   x.reshape(-1))
    expected = np.linalg.svd(reference.double().numpy(), compute_uv=False)
    spectrum = jacobian_spectrum(model, x)
    np.testing.assert_allclose(spectrum.singular_values, expected, rtol=TOL[dtype], atol=TOL[dtype] * expected[0])
    assert model.memory_saving and spectrum.dim_in == spectrum.dim_out == 64


def test_irevnet_layers_are_block_pairs() -> None:
    model = _irevnet(0, torch.float64)
    x = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(20) % 2
    feats = spatial_features(model, (x, y), ["blocks.0", "blocks.2"], test_data=(x, y))
    with torch.no_grad():
        phi = model.phi(x).mean((2, 3))
    np.testing.assert_allclose(feats["blocks.2"].train, phi.numpy(), rtol=1e-12)  # Phi = (x_J, x~_J)
    assert feats["blocks.0"].dim == 4
