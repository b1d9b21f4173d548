"""The exact polarity identity (003 sec. 2, Fig. 5): the transformed LeNet-5 on reversed inputs gives the original's
logits on the original inputs; the paper's weights-only negation does not; doubled anchors are tied [W; -W]."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.experiments.recos_polarity import _swap, centre
from cnnlens.nn.models import lenet5
from cnnlens.recos import ReversedInputConv2d, double_anchors, negate_first_layer, polarity_transform
from conftest import tol


def _random_lenet(dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = lenet5().to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # random, non-trivial biases too
    return model


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = max(float(b.abs().max()), 1.0)
    return torch.allclose(a, b, rtol=tol(dtype), atol=tol(dtype) * scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_polarity_identity_lenet5(dtype, seed):
    model = _random_lenet(dtype, seed)
    x = torch.rand(16, 1, 32, 32, dtype=dtype)
    transformed = polarity_transform(model, layer="c1", offset=1.0)
    assert type(transformed.c1) is nn.Conv2d  # constant offset, no padding: a plain conv, b' = b + sum(W)
    with torch.no_grad():
        original = model(x)
        swapped = transformed(1.0 - x)
        assert torch.allclose(transformed.c1.bias, model.c1.bias + model.c1.weight.sum(dim=(1, 2, 3)))
    assert _close(swapped, original, dtype)
    assert torch.equal(swapped.argmax(1), original.argmax(1))
    assert torch.equal(model.c1.weight, -transformed.c1.weight)  # the input model is untouched


def test_exact_polarity_identity_reverse_before_pad(dtype):
    """Digits reversed before zero-padding to 32x32: c = interior mask, the bias becomes a map."""
    model = _random_lenet(dtype, 3)
    digits = torch.rand(8, 1, 28, 28, dtype=dtype)
    x = F.pad(digits, (2, 2, 2, 2))
    reversed_then_padded = F.pad(1.0 - digits, (2, 2, 2, 2))
    mask = F.pad(torch.ones(1, 28, 28, dtype=dtype), (2, 2, 2, 2))
    transformed = polarity_transform(model, offset=mask)
    assert isinstance(transformed.c1, ReversedInputConv2d)
    with torch.no_grad():
        assert _close(transformed(reversed_then_padded), model(x), dtype)
    with pytest.raises(ValueError, match=r"built for inputs of shape \(B, 1, 32, 32\)"):
        transformed.c1(torch.zeros(1, 1, 30, 30, dtype=dtype))


def test_exact_polarity_identity_with_padding_and_normalisation(dtype):
    """A padded first conv (border windows not full) and a normalisation (v - m) / s after the reversal."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    model = model.to(dtype)
    v = torch.rand(5, 1, 8, 8, dtype=dtype)
    m, s = 0.13, 0.31
    x = (v - m) / s
    x_reversed = ((1.0 - v) - m) / s
    transformed = polarity_transform(model, layer="0", offset=(1.0 - 2 * m) / s)
    assert isinstance(transformed[0], ReversedInputConv2d)
    with torch.no_grad():
        assert _close(transformed(x_reversed), model(x), dtype)
        naive_bias_only = polarity_transform(nn.Sequential(nn.Conv2d(1, 4, 3)).to(dtype), layer="0", offset=0.5)
        assert type(naive_bias_only[0]) is nn.Conv2d


def test_exact_polarity_identity_linear_first_layer(dtype):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2)).to(dtype)
    c = torch.rand(10, dtype=dtype)
    x = torch.randn(7, 10, dtype=dtype)
    with torch.no_grad():
        assert _close(polarity_transform(model, layer="0", offset=c)(c - x), model(x), dtype)
        assert _close(polarity_transform(model, layer="0", offset=2.0)(2.0 - x), model(x), dtype)


def test_naive_negation_is_off_by_the_filter_sums(dtype):
    """Weights-only negation: C1 on reversed inputs = original C1 pre-activation - sum(W_k) per channel."""
    model = _random_lenet(dtype, 6)
    x = torch.rand(4, 1, 32, 32, dtype=dtype)
    naive = negate_first_layer(model)
    assert torch.equal(naive.c1.weight, -model.c1.weight) and torch.equal(naive.c1.bias, model.c1.bias)
    with torch.no_grad():
        shift = naive.c1(1.0 - x) - model.c1(x)
        expected = -model.c1.weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1).expand_as(shift)
        assert _close(shift, expected, dtype)
        assert not torch.allclose(naive(1.0 - x), model(x))


def test_double_anchors_ties_weights_and_starts_equal(dtype):
    model = _random_lenet(dtype, 7)
    doubled = double_anchors(model)
    assert isinstance(doubled.c1, nn.Conv2d) and doubled.c1.out_channels == 12 and doubled.c3.in_channels == 12
    w = doubled.c1.weight
    assert torch.equal(w[:6], model.c1.weight) and torch.equal(w[6:], -model.c1.weight)
    x = torch.rand(5, 1, 32, 32, dtype=dtype)
    with torch.no_grad():
        assert _close(doubled(x), model(x), dtype)
    free = [n for n, _ in doubled.c1.named_parameters()]
    assert sorted(free) == ["bias", "parametrizations.weight.original"]
    doubled(x).sum().backward()
    assert doubled.c1.parametrizations.weight.original.grad is not None
    with torch.no_grad():
        doubled.c1.parametrizations.weight.original.add_(1.0)
    assert torch.equal(doubled.c1.weight[6:], -doubled.c1.weight[:6])  # still tied after an update


def test_polarity_errors():
    model = lenet5()
    with pytest.raises(ValueError, match=r"no submodule 'conv1'.*\['c1', 'c3', 'c5', 'f6', 'output'\]"):
        polarity_transform(model, layer="conv1")
    with pytest.raises(TypeError, match="received MaxPool2d"):
        negate_first_layer(model, layer="s2")
    with pytest.raises(ValueError, match=r"shape \(1, H, W\), received shape \(3, 32, 32\)"):
        polarity_transform(model, offset=torch.ones(3, 32, 32))
    with pytest.raises(TypeError, match="offset must be a number or a tensor"):
        polarity_transform(model, offset="white")
    with pytest.raises(ValueError, match="'c5' reads 16 channels but 'c1' produces 6"):
        double_anchors(model, next_layer="c5")
    with pytest.raises(TypeError, match="expects an nn.Module model"):
        polarity_transform("lenet5")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=st.integers(0, 2**16), wide=st.booleans())
def test_centring_turns_reversal_into_negation(n, c, h, w, seed, wide):
    """Per-image mean removal: centre(1 - v) = -centre(v), and every centred image has mean 0 (float32, float64)."""
    dtype = torch.float64 if wide else torch.float32
    v = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x = centre(v)
    assert torch.allclose(centre(1.0 - v), -x, rtol=0, atol=tol(dtype))
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(n, dtype=dtype), rtol=0, atol=tol(dtype))
    assert torch.allclose(x + v.mean(dim=(1, 2, 3), keepdim=True), v, rtol=0, atol=tol(dtype))


@pytest.mark.parametrize("seed", [0, 1])
def test_negation_is_exact_on_centred_inputs(dtype, seed):
    """The centred arm: with reversal x -> -x the paper's negation C1 -> -W (bias kept) is the exact transform
    (polarity_transform with offset 0), so the negated net on reversed digits has the original's logits on the
    originals, and on the originals the original's logits on the reversed digits: the accuracies swap exactly."""
    model = _random_lenet(dtype, seed)
    v = torch.rand(12, 1, 32, 32, dtype=dtype)
    x, x_reversed = centre(v), centre(1.0 - v)
    naive = negate_first_layer(model)
    exact = polarity_transform(model, offset=0.0)
    assert torch.equal(naive.c1.weight, exact.c1.weight) and torch.equal(naive.c1.bias, exact.c1.bias)
    with torch.no_grad():
        assert _close(naive(x_reversed), model(x), dtype)
        assert _close(naive(x), model(x_reversed), dtype)
        assert torch.equal(naive(-x).argmax(1), model(x).argmax(1))


def test_swap_measures_of_the_experiment(dtype):
    """_swap: zero gaps for the exact transform, and a non-zero logit gap for the weights-only negation on [0, 1]."""
    model = _random_lenet(dtype, 8)
    v = torch.rand(30, 1, 32, 32, dtype=dtype)
    labels = model(v).argmax(1).detach()  # the original network is right on every original digit
    exact = _swap(model, polarity_transform(model, offset=1.0), v, 1.0 - v, labels, dtype)
    assert exact["swap_gap"] == 0.0 and exact["agreement"] == 1.0
    assert exact["max_logit_gap"] <= tol(dtype) * 100
    naive = _swap(model, negate_first_layer(model), v, 1.0 - v, labels, dtype)
    assert naive["max_logit_gap"] > 1e-3
    centred = _swap(model, negate_first_layer(model), centre(v), centre(1.0 - v), labels, dtype)
    assert centred["swap_gap"] == 0.0 and centred["max_logit_gap"] <= tol(dtype) * 100
