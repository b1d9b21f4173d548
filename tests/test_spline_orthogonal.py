"""orthogonal_penalty equals eq. 13 of 000 exactly, vanishes on orthogonal rows and has the right gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.spline._orthogonal import orthogonal_penalty

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _double_loop(weight: torch.Tensor) -> torch.Tensor:
    """Eq. 13 of 000 literally: sum over ordered pairs c1 != c2 of <W_c1, W_c2>^2, in float64."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    total = torch.zeros((), dtype=torch.float64)
    for c1 in range(rows.shape[0]):
        for c2 in range(rows.shape[0]):
            if c1 != c2:
                total = total + torch.dot(rows[c1], rows[c2]) ** 2
    return total


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(1, 12),
    dim=st.integers(1, 40),
    scale=st.floats(1e-2, 1e2),
    seed=st.integers(0, 2**31 - 1),
)
def test_equals_double_loop(dtype: torch.dtype, num_classes: int, dim: int, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, dim, generator=gen, dtype=torch.float64) * scale).to(dtype)
    got = orthogonal_penalty(weight)
    expected = _double_loop(weight)
    assert got.dtype == dtype
    assert got.shape == ()
    assert torch.allclose(got.double(), expected, rtol=TOL[dtype], atol=TOL[dtype] * scale**4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_and_conv_weight_accepted(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(7, 5).to(dtype)
    assert torch.equal(orthogonal_penalty(linear), orthogonal_penalty(linear.weight))
    conv = nn.Conv2d(3, 4, 3).to(dtype)
    expected = _double_loop(conv.weight)
    assert torch.allclose(orthogonal_penalty(conv).double(), expected, rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes,dim", [(1, 3), (4, 4), (10, 84), (3, 50)])
def test_zero_for_orthogonal_rows(dtype: torch.dtype, num_classes: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(num_classes * dim)
    q, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=gen, dtype=torch.float64))
    scales = torch.linspace(0.5, 30.0, num_classes, dtype=torch.float64)
    weight = (q.T * scales[:, None]).to(dtype)  # orthogonal rows of very different norms
    penalty = orthogonal_penalty(weight)
    assert penalty.item() <= TOL[dtype] * float(scales.max()) ** 4
    # and it is strictly positive as soon as two rows are not orthogonal
    if num_classes > 1:
        skewed = weight.clone()
        skewed[1] = skewed[1] + 0.1 * skewed[0]
        assert orthogonal_penalty(skewed).item() > 1e-3


def test_gradient_matches_gradcheck() -> None:
    weight = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(orthogonal_penalty, (weight,))
    assert torch.autograd.gradgradcheck(orthogonal_penalty, (weight,))


def test_gradient_closed_form() -> None:
    # d/dW sum_{c1!=c2} <W_c1,W_c2>^2 = 4 (G - diag(G)) W with G = W W^T
    weight = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    orthogonal_penalty(weight).backward()
    gram = weight.detach() @ weight.detach().T
    expected = 4 * (gram - torch.diag(torch.diagonal(gram))) @ weight.detach()
    assert torch.allclose(weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_gradient_flows_through_module_parameters() -> None:
    linear = nn.Linear(4, 3)
    orthogonal_penalty(linear).backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    assert linear.bias.grad is None


def test_not_a_weight_errors() -> None:
    with pytest.raises(TypeError, match="expects a weight Tensor of shape \\(C, D\\).*received list"):
        orthogonal_penalty([[1.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="received a ReLU without a tensor `.weight`"):
        orthogonal_penalty(nn.ReLU())
    with pytest.raises(TypeError, match="floating-point weight; received dtype torch.int64"):
        orthogonal_penalty(torch.ones(3, 2, dtype=torch.int64))


def test_bad_shapes_error() -> None:
    with pytest.raises(ValueError, match="shape \\(C, D\\).*received a tensor of shape \\(5,\\)"):
        orthogonal_penalty(torch.ones(5))
    with pytest.raises(ValueError, match="no rows \\(shape \\(0, 4\\)\\)"):
        orthogonal_penalty(torch.ones(0, 4))


def test_penalty_in_the_training_loop_orthogonalises_the_classifier() -> None:
    # eq. 13 through cnnlens.train.fit's extra-loss hook: the same model, data and seed with and without the
    # penalty; only the penalised run ends with (nearly) orthogonal last-layer rows.
    from cnnlens.data import ArrayDataset
    from cnnlens.train import Penalty, fit

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 4, 4, generator=gen)
    labels = torch.arange(96) % 4
    images[torch.arange(96), 0, labels, labels] += 2.0  # a learnable class signal
    data = ArrayDataset(images, labels, num_classes=4, name="toy", split="train")
    energies = {}
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        extra = {"orthogonal": Penalty(lambda m: orthogonal_penalty(m[-1]), weight=lam)} if lam else None
        result = fit(model, data, epochs=15, lr=0.05, seed=0, extra_losses=extra, progress=False)
        energies[lam] = orthogonal_penalty(model[-1]).item()
        if lam:
            assert "orthogonal" in result.history[-1]
    assert energies[1.0] < 0.1 * energies[0.0]


def test_metric_suffixes_name_lambda() -> None:
    from cnnlens.experiments.spline_orthogonal import _suffix

    assert [_suffix(lam) for lam in (0.0, 0.01, 0.1, 1.0)] == ["l0", "l0_01", "l0_1", "l1"]
