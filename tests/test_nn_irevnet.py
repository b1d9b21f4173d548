"""The i-RevNet of 001 (ch. 6): exact inverse (eq. 39), the down-sampling of Fig. 17 as a permutation, memory-saving
backward against plain autograd, Table 9's parameter counts from the construction, and the errors on bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.data import ArrayDataset
from cnnlens.nn import IRevNet, SplittingOperator, comparable_resnet, depth_to_space, get_model, space_to_depth
from cnnlens.nn.irevnet import Bottleneck
from cnnlens.train import evaluate, fit

_FAST = settings(max_examples=12, deadline=None)
_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights and batch-norm statistics (not the identity initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
    return model


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@_FAST
@given(channels=st.integers(1, 3), factor=st.sampled_from([1, 2, 3, 4]), cells=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_space_to_depth_is_the_documented_permutation(channels: int, factor: int, cells: int, seed: int) -> None:
    h, w = factor * cells, factor * (cells + 1)
    x = torch.randn(2, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = space_to_depth(x, factor)
    reference = torch.empty(2, channels * factor**2, cells, cells + 1, dtype=torch.float64)
    for c in range(channels):
        for i in range(factor):
            for j in range(factor):
                reference[:, c * factor**2 + i * factor + j] = x[:, c, i::factor, j::factor]
    assert torch.equal(y, reference)
    index = torch.arange(x.numel(), dtype=torch.float64).reshape(x.shape)
    assert torch.equal(space_to_depth(index, factor).flatten().sort().values, index.flatten())  # a permutation
    assert torch.equal(depth_to_space(y, factor), x)


@_FAST
@given(in_channels=st.sampled_from([1, 3]), factor=st.sampled_from([2, 4]), extra=st.sampled_from([0, 2, 8]),
       seed=st.integers(0, 2**16))
def test_splitting_operator_left_inverse_is_its_adjoint(in_channels: int, factor: int, extra: int, seed: int) -> None:
    split = SplittingOperator(in_channels, factor, in_channels * factor**2 + extra)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, in_channels, 4 * factor, 2 * factor, generator=g, dtype=torch.float64)
    y = torch.randn(split(x).shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(split.inverse(split(x)), x, rtol=0, atol=0)  # S~^+ S~ = I
    torch.testing.assert_close((split(x) * y).sum(), (x * split.inverse(y)).sum())  # S~^+ = S~^T
    assert split.bijective == (extra == 0)


_VARIANTS = {"bijective": None, "injective": 2}  # injective: S~ output padded by this factor of zero channels


@settings(max_examples=20, deadline=None)
@given(variant=st.sampled_from(sorted(_VARIANTS)), in_channels=st.sampled_from([1, 3]), size=st.sampled_from([28, 32]),
       blocks=st.sampled_from([(1,), (2, 1), (3, 2), (1, 1, 4)]), dtype=st.sampled_from([torch.float64, torch.float32]),
       seed=st.integers(0, 2**16))
def test_inverse_recovers_the_input(variant: str, in_channels: int, size: int, blocks: tuple[int, ...],
                                    dtype: torch.dtype, seed: int) -> None:
    pad = _VARIANTS[variant]
    strides = (1, 2, 2)[: len(blocks)] if size == 32 else (1, 2, 1)[: len(blocks)]
    init_channels = None if pad is None else pad * in_channels * 4
    torch.manual_seed(seed)
    model = _randomise(IRevNet(in_channels, 5, blocks=blocks, strides=strides, init_channels=init_channels,
                               mult=2), seed).to(dtype).eval()
    x = torch.rand(4, in_channels, size, size, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits, phi = model(x)
        recovered = model.inverse(phi)
    assert model.bijective == (pad is None)
    assert phi.numel() == x.numel() * (1 if pad is None else pad)
    assert logits.shape == (4, 5)
    assert _relative(recovered, x) <= _TOL[dtype]


def _step(model: IRevNet, x: torch.Tensor, memory_saving: bool, seed: int) -> tuple[list, list, torch.Tensor]:
    model.memory_saving = memory_saving
    torch.manual_seed(seed)
    logits, phi = model(x)
    loss = logits.square().sum() + (phi * torch.linspace(-1, 1, phi.shape[1], dtype=phi.dtype)[:, None, None]).sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return list(grads), [b.clone() for b in model.buffers()], torch.get_rng_state()


@_FAST
@given(in_channels=st.sampled_from([1, 3]), blocks=st.sampled_from([(2,), (1, 2), (2, 2)]),
       dropout=st.sampled_from([0.0, 0.3]), injective=st.booleans(), seed=st.integers(0, 2**16))
def test_memory_saving_backward_equals_autograd(in_channels: int, blocks: tuple[int, ...], dropout: float,
                                                injective: bool, seed: int) -> None:
    torch.manual_seed(seed)
    model = _randomise(IRevNet(in_channels, 4, blocks=blocks, strides=(2,) * len(blocks), dropout=dropout,
                               init_channels=8 * in_channels if injective else None), seed).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, in_channels, 16, 16, dtype=torch.float64, requires_grad=True)
    saving = _step(model, x, True, seed)
    model.load_state_dict(state)
    plain = _step(model, x, False, seed)
    scale = max(float(b.abs().max()) for b in plain[0])  # round-off of entries that are zero in exact arithmetic
    for a, b in zip(saving[0], plain[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11 * scale)
    for a, b in zip(saving[1], plain[1], strict=True):  # running statistics updated once, num_batches_tracked too
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(model.blocks[0].residual[0].num_batches_tracked) == 1
    assert torch.equal(saving[2], plain[2])  # the random state after the step is that of plain autograd


def test_memory_saving_trains_like_autograd_through_fit() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = ArrayDataset(images, labels, 3, "toy", "train")
    weights = []
    for saving in (True, False):
        torch.manual_seed(0)
        model = IRevNet(1, 3, blocks=(2, 2), strides=(1, 2), init_stride=2, mult=1, dropout=0.2,
                        memory_saving=saving, return_phi=False).double()
        fit(model, data, epochs=2, batch_size=16, lr=0.1, progress=False)
        weights.append(model.state_dict())
    for key, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][key], rtol=1e-9, atol=1e-12, msg=key)
    assert 0 <= evaluate(model, data).accuracy <= 1


def _saved_bytes(model: IRevNet, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # what the forward pass keeps for backward
        logits = model(x)[0]
    logits.sum().backward()
    return total


def test_memory_saving_keeps_stored_activations_flat_in_depth() -> None:
    x = torch.randn(8, 3, 16, 16)
    saved = {}
    for depth in (2, 8):
        for saving in (True, False):
            torch.manual_seed(0)
            saved[depth, saving] = _saved_bytes(IRevNet(3, 10, blocks=(depth,), strides=(1,),
                                                        memory_saving=saving), x)
    layer = x.numel() * x.element_size()  # every layer of the bijective net has the input's size
    assert saved[8, True] == saved[2, True] < 2.1 * layer  # the stack's input and Phi (+ the classifier's mean)
    assert saved[8, False] > 3 * saved[2, False] > 3 * 2 * layer


def _bottleneck_count(cin: int, cout: int, kernels: tuple[int, int, int], mult: int = 4) -> int:
    """Parameters of F written out by hand: three (BN affine + bias-free conv) with middle width cout // mult."""
    mid = max(1, cout // mult)
    widths = [cin, mid, mid, cout]
    return sum(2 * widths[i] + widths[i] * widths[i + 1] * k * k for i, k in enumerate(kernels))


def _table9_count(init: int, blocks: tuple[int, ...], strides: tuple[int, ...], kernels: tuple[int, int, int],
                  classes: int = 1000) -> int:
    total, half = 0, init // 2
    for count, stride in zip(blocks, strides, strict=True):
        for i in range(count):
            s = stride if i == 0 else 1
            total += _bottleneck_count(half, half * s * s, kernels)
            half *= s * s
    return total + 2 * half * classes + classes


@pytest.mark.parametrize("kernels", [(1, 3, 1), (3, 3, 3)])
def test_imagenet_configurations_have_the_counted_parameters(kernels: tuple[int, int, int]) -> None:
    with torch.device("meta"):
        a, b = IRevNet.imagenet_a(kernels=kernels), IRevNet.imagenet_b(kernels=kernels)
    count_a, count_b = (sum(p.numel() for p in m.parameters()) for m in (a, b))
    assert count_a == _table9_count(96, (4, 4, 6, 4), (1, 2, 2, 2), kernels)
    assert count_b == _table9_count(12, (6, 16, 72, 6), (2, 2, 2, 2), kernels)
    assert (len(a.blocks), len(b.blocks), a.bijective, b.bijective) == (18, 100, False, True)
    assert b.phi_channels * 7 * 7 == 3 * 224 * 224  # every layer of (b) keeps the size of the input
    if kernels == (1, 3, 1):  # sec. 6.3.2's kernels: (b) lands on Table 9's 29M
        assert abs(count_b / 29e6 - 1) < 0.02


def test_defaults_registry_and_comparable_resnet() -> None:
    for model in (IRevNet(), IRevNet(in_channels=1, num_classes=10)):
        logits, phi = model(torch.randn(2, model.in_channels, 32, 32))
        assert logits.shape == (2, 10) and phi.shape[1] == model.phi_channels
    model = get_model("irevnet", num_classes=7)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)
    resnet = comparable_resnet(IRevNet(in_channels=3, blocks=(4, 4), mult=1))
    ratio = sum(p.numel() for p in resnet.parameters()) / sum(
        p.numel() for p in IRevNet(in_channels=3, blocks=(4, 4), mult=1).parameters())
    assert 0.7 < ratio < 1.3
    assert isinstance(Bottleneck(8, 8)[2], nn.Conv2d)


def test_bad_input_names_the_sizes_that_work() -> None:
    model = IRevNet(in_channels=1)  # S~ by 2 and one S_j by 2: multiples of 4
    with pytest.raises(ValueError, match=r"multiples of 4 .*28, 32.*got 30x30"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="non-finite"):
        model(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="two equal halves.*even init_stride"):
        IRevNet(in_channels=3, init_stride=1)
    with pytest.raises(ValueError, match="init_channels=13 does not work.*12 \\(bijective\\)"):
        IRevNet(in_channels=3, init_channels=13)
    with pytest.raises(ValueError, match="init_channels=8 does not work"):
        IRevNet(in_channels=3, init_channels=8)
    with pytest.raises(ValueError, match=r"Phi of shape \(N, 16, H, W\)"):
        model.inverse(torch.randn(1, 4, 7, 7))
    with pytest.raises(ValueError, match="equal length"):
        IRevNet(blocks=(1, 2), strides=(2,))
    trained = IRevNet(in_channels=1, dropout=0.5).train()
    with pytest.raises(ValueError, match="needs eval mode.*model.eval"):
        trained.inverse(trained(torch.randn(2, 1, 28, 28))[1])
