"""Thms. 1-2 of 002 made constructive: the hand-built networks compute phi_I exactly and never err on X^Ibar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.spline import affine_map
from cnnlens.tiles import (
    DeepTileNet,
    FeatureTile,
    Image,
    ImageClass,
    ShallowTileNet,
    class_labels,
    deep_construction,
    describe_unit,
    distance_map,
    hidden_units,
    neuron_selectivity,
    phi_class,
    sample,
    shallow_construction,
    single_conv_net,
)
from conftest import tol

BUILDERS = {
    "shallow-linear": lambda ic, size, dtype: shallow_construction(ic, size, hidden="linear", dtype=dtype),
    "shallow-conv": lambda ic, size, dtype: shallow_construction(ic, size, hidden="conv", dtype=dtype),
    "deep": lambda ic, size, dtype: deep_construction(ic, size, dtype=dtype),
}


def random_tile(rng: np.random.Generator, max_side: int) -> FeatureTile:
    """A random tile: random size, non-rectangular support of >= 3 pixels, small eps, junk outside the support."""
    while True:
        k, l = (int(v) for v in rng.integers(1, max_side + 1, size=2))
        if k * l >= 3:
            break
    mask = rng.random((k, l)) < 0.7
    mask.flat[rng.choice(k * l, 3, replace=False)] = True
    eps = float(rng.uniform(0.03, 0.08)) * int(mask.sum())
    return FeatureTile(rng.random((k, l)), eps, mask=mask)


def random_class(seed: int, max_side: int = 5) -> tuple[ImageClass, tuple[int, int]]:
    """A random image class of 2-3 images with 1-2 tiles each, and an input size that fits every tile."""
    rng = np.random.default_rng(seed)
    while True:
        images = [Image([random_tile(rng, max_side) for _ in range(int(rng.integers(1, 3)))])
                  for _ in range(int(rng.integers(2, 4)))]
        try:
            image_class = ImageClass(images)
        except ValueError:  # two images that cannot be told apart: draw again
            continue
        big_h, big_w = image_class.max_shape
        return image_class, (big_h + int(rng.integers(0, 5)), big_w + int(rng.integers(0, 5)))


def _window_at_distance(tile: FeatureTile, distance: float) -> torch.Tensor:
    """The tile's template moved by exactly ``distance`` in L1 on its support (staying in [0, 1])."""
    window = tile.t.clone()
    left = distance
    for r, c in zip(*tile.support, strict=True):
        value = float(window[r, c])
        step = min(left, max(value, 1.0 - value))
        window[r, c] = value + step if value + step <= 1.0 else value - step
        left -= step
        if left <= 0:
            break
    return window


# ----------------------------------------------------------------------------------------------------------------
# the key identity and the exact logits


@settings(max_examples=200, deadline=None)
@given(y=st.floats(0, 1), c=st.floats(0, 1))
def test_abs_identity_of_sec_5_2(y, c):
    """|y - c| = relu(2y - 2c) - relu(y) + c for y, c in [0, 1] (exact in float64 up to one rounding)."""
    yt, ct = torch.tensor(y, dtype=torch.float64), torch.tensor(c, dtype=torch.float64)
    value = torch.relu(2 * yt - 2 * ct) - torch.relu(yt) + ct
    assert abs(float(value) - abs(y - c)) <= 4e-16


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_logits_equal_phi_on_random_classes(seed):
    """Both constructions compute phi_{I_j}(x) exactly on any input in [0, 1]^{m x n} (Prop. 1, Lemmas 5.2-5.3)
    and classify every sampled input of X^Ibar correctly (Thms. 1-2), in float64 and float32."""
    image_class, size = random_class(seed)
    data = sample(image_class, 150, size, seed=seed)
    noise = torch.rand(50, 1, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = torch.cat([data.images.double(), noise])
    reference = phi_class(x, image_class)
    assert bool((reference[: len(data)].argmax(1) == data.labels).all())
    for name, build in BUILDERS.items():
        with torch.no_grad():
            logits64 = build(image_class, size, torch.float64)(x)
            logits32 = build(image_class, size, torch.float32)(x.float())
        torch.testing.assert_close(logits64, reference, rtol=0, atol=1e-9, msg=name)
        torch.testing.assert_close(logits32.double(), reference, rtol=0, atol=1e-4 * (1 + float(reference.max())),
                                   msg=name)
        assert torch.equal(logits64[: len(data)].argmax(1), data.labels), name
        assert torch.equal(logits32[: len(data)].argmax(1), data.labels), name


@pytest.mark.parametrize("name", list(BUILDERS))
def test_zero_error_on_thousands_of_inputs(name, dtype):
    image_class, size = random_class(2024, max_side=4)
    data = sample(image_class, 2000, size, seed=5, perturbation=0.9)
    net = BUILDERS[name](image_class, size, dtype)
    with torch.no_grad():
        logits = net(data.images.to(dtype))
    assert torch.equal(logits.argmax(1), data.labels)
    reference = phi_class(data.images, image_class)
    torch.testing.assert_close(logits.double(), reference, rtol=0, atol=tol(dtype) * (1 + float(reference.max())))
    # the other logits are exactly zero (monosemantic outputs: phi_{I_j'} = 0 for j' != j)
    others = logits.clone()
    others[torch.arange(len(data)), data.labels] = 0
    assert float(others.abs().max()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tiles_just_inside_and_just_outside_eps(seed, dtype):
    """Inputs whose own tile is at distance eps - delta and which hold another image's tile at eps + delta: the
    label is the first image and every construction predicts it, with the other logit exactly 0."""
    image_class, _ = random_class(seed)
    size = (2 * image_class.max_shape[0] + 1, 2 * image_class.max_shape[1] + 1)  # room for two tiles
    delta = 1e-6 if dtype == torch.float64 else 1e-2
    rng = np.random.default_rng(seed)
    base = sample(image_class, 120, size, seed=seed, perturbation=0.0)
    x = base.images.double().clone()
    flat = image_class.tiles
    kept = []
    for i in range(len(base)):
        own_image, own = flat[int(base.tile_ids[i])]
        r, c = base.positions[i].tolist()
        k, l = own.shape
        window = _window_at_distance(own, own.eps - delta * own.eps)
        x[i, 0, r : r + k, c : c + l][own.mask] = window[own.mask]
        others = [tile for j, tile in flat if j != own_image]
        tile = others[int(rng.integers(0, len(others)))]
        free = [(u, v) for u in range(size[0] - tile.shape[0] + 1) for v in range(size[1] - tile.shape[1] + 1)
                if u + tile.shape[0] <= r or u >= r + k or v + tile.shape[1] <= c or v >= c + l]
        p = free[int(rng.integers(0, len(free)))]  # a window that does not overlap the own tile
        trial = x[i, 0].clone()
        near = _window_at_distance(tile, tile.eps + delta * tile.eps)
        trial[p[0] : p[0] + tile.shape[0], p[1] : p[1] + tile.shape[1]][tile.mask] = near[tile.mask]
        if int(class_labels(trial, image_class)) == own_image:
            d_other = distance_map(trial, tile)[p[0], p[1]]
            assert tile.eps < float(d_other) <= tile.eps * (1 + 2 * delta)  # just outside
            x[i, 0] = trial
            kept.append(i)
    assert len(kept) >= 30
    x, labels = x[kept], base.labels[kept]
    assert torch.equal(class_labels(x, image_class), labels)
    for name, build in BUILDERS.items():
        with torch.no_grad():
            logits = build(image_class, size, dtype)(x.to(dtype))
        assert torch.equal(logits.argmax(1), labels), name
        others = logits.clone()
        others[torch.arange(len(kept)), labels] = 0
        assert float(others.abs().max()) == 0.0, name


# ----------------------------------------------------------------------------------------------------------------
# hierarchical compositionality: what the deep layers compute


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_deep_levels_compute_sub_patch_distances(seed, dtype):
    """Level s (1 <= s < r) channel (tile a, patch P) equals D_{t_P}(x) on the zero-padded input (Def. 5.3);
    the last level equals relu(eps_a - D_{t_a}(x))."""
    image_class, size = random_class(seed, max_side=7)
    net = deep_construction(image_class, size, dtype=dtype)
    assert net.depth == 3
    x = torch.rand(6, 1, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    padded = nn.functional.pad(x, (net.padding[1],) * 2 + (net.padding[0],) * 2)
    with torch.no_grad():
        levels = net.levels_output(x.to(dtype))
    assert len(levels) == net.depth + 1
    for s in range(1, net.depth + 1):
        for g in range(levels[s].shape[1]):
            a, (row, col), side = net.patch(s, g)
            _, tile = image_class.tiles[a]
            block = torch.zeros(2**net.depth, 2**net.depth, dtype=torch.float64)
            support = torch.zeros_like(block, dtype=torch.bool)
            block[: tile.shape[0], : tile.shape[1]], support[: tile.shape[0], : tile.shape[1]] = tile.t, tile.mask
            sub_t, sub_mask = block[row : row + side, col : col + side], support[row : row + side, col : col + side]
            expected = distance_map(padded, sub_t, mask=sub_mask)
            if s == net.depth:
                expected = torch.relu(tile.eps - expected)
            torch.testing.assert_close(levels[s][:, g].double(), expected, rtol=0, atol=tol(dtype) * 30)


def test_deep_network_structure_matches_lemma_5_3():
    image_class, size = random_class(3, max_side=7)
    net = deep_construction(image_class, size)
    convs = [m for m in net.children() if isinstance(m, nn.Conv2d)]
    assert len(convs) == net.depth + 1  # r + 1 convolutional layers
    receptive = 1
    for s, conv in enumerate(convs):
        receptive += (conv.kernel_size[0] - 1) * conv.dilation[0]
        assert receptive == 2**s  # layer s sees 2^s x 2^s pixels
    linear = [m for m in net.children() if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and set(linear[0].weight.unique().tolist()) <= {0.0, 1.0}


def test_shallow_network_structure_matches_theorem_1():
    image_class, size = random_class(3)
    for hidden in ("linear", "conv"):
        net = shallow_construction(image_class, size, hidden=hidden)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].kernel_size == (2, 2) and convs[0] is net.pixels
        assert (net.pixels.weight != 0).sum() == net.pixels.out_channels  # one non-zero entry per kernel
        # every hidden unit feeds exactly one logit with weight 1 (the 0/1 sparsity of sec. 7)
        assert set(net.output.weight.unique().tolist()) <= {0.0, 1.0}
        assert int(net.output.weight.sum(0).max()) == 1
    assert len([m for m in shallow_construction(image_class, size).modules() if isinstance(m, nn.Conv2d)]) == 1


def test_affine_map_of_the_spline_engine_reproduces_the_logits(dtype):
    """The constructions are ordinary piecewise-affine networks: cnnlens.spline reads them exactly."""
    image_class, size = random_class(8)
    data = sample(image_class, 30, size, seed=1)
    x = data.images.to(dtype)
    for name, build in BUILDERS.items():
        net = build(image_class, size, dtype)
        amap = affine_map(net, x)
        with torch.no_grad():
            logits = net(x)
        rebuilt = torch.einsum("ncd,nd->nc", amap[0], x.flatten(1)) + amap[1]
        torch.testing.assert_close(rebuilt, logits, rtol=tol(dtype), atol=tol(dtype) * 10, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# naming units, selectivity, errors


def test_describe_unit_names_what_hidden_units_detect():
    tile_a = FeatureTile(np.ones((2, 2)), 0.5)
    tile_b = FeatureTile(np.array([[0.0, 0.5, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 0.0]]), 0.3)
    image_class = ImageClass([Image([tile_a], "block"), Image([tile_b], "cross")])
    shallow = shallow_construction(image_class, 5)
    assert describe_unit(shallow, "windows", 0) == (
        "relu(eps - t(x[0:2, 0:2])): tile 0 (2x2, eps=0.5; tile 0 of image 'block') in the window with top-left "
        "pixel (0, 0)"
    )
    assert "tile 1 (3x3, eps=0.3; tile 0 of image 'cross') in the window with top-left pixel (2, 2)" in (
        describe_unit(shallow, "windows", 16 + 8)
    )
    assert describe_unit(shallow, "pixels", 2) == (
        "pixel channel 2: relu(2x - 2c) with grey level c = 1 (for |x - c| = this - x + c) at every pixel"
    )
    assert describe_unit(shallow, "output", 1) == "phi_I(x) of image 'cross' (Def. 5.2)"
    deep = deep_construction(image_class, 5)
    assert deep.depth == 2
    assert describe_unit(deep, "level1", 4 + 1) == (
        "D of the 2x2 sub-patch rows 0..1, cols 2..3 of tile 1 (3x3, eps=0.3; tile 0 of image 'cross') at every "
        "window"
    )
    assert describe_unit(deep, "level1", 1).endswith("(no support pixel: always 0)")
    assert describe_unit(deep, "relu2", 0).startswith("relu(eps - D_t(x)): detector of the whole tile 0")
    with pytest.raises(ValueError, match=r"layer 'level1' has 8 units; received unit index 8"):
        describe_unit(deep, "level1", 8)
    with pytest.raises(ValueError, match=r"unknown layer 'conv1'; the layers are \['level0'"):
        describe_unit(deep, "conv1", 0)
    with pytest.raises(TypeError, match="Trained networks have no such names"):
        describe_unit(single_conv_net(5, 2, 2, 2), "conv", 0)


def test_selectivity_of_constructed_units_is_exactly_one():
    image_class, size = random_class(4)
    data = sample(image_class, 200, size, seed=0)
    for hidden in ("linear", "conv"):
        net = shallow_construction(image_class, size, hidden=hidden, dtype=torch.float64)
        by_class = neuron_selectivity(net, data, "windows_relu")
        by_tile = neuron_selectivity(net, data, "windows_relu", groups=data.tile_ids)
        assert by_class.live_units > 0 and by_class.mean == 1.0 and by_tile.mean == 1.0
        live = ~torch.isnan(by_class.per_unit)
        assert bool((by_class.per_unit[live] == 1.0).all())
        # a tile detector's only group is its own image
        if hidden == "conv":
            owners = torch.tensor([j for j, _ in image_class.tiles])
            assert torch.equal(by_class.top_group[live], owners[live])
        batched = neuron_selectivity(net, data, "windows_relu", batch_size=7)
        torch.testing.assert_close(batched.mass, by_class.mass)


def test_selectivity_of_a_unit_firing_for_everything():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.ReLU())
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.fill_(1.0)
    x, y = torch.rand(40, 1, 2, 2), torch.arange(40) % 4
    result = neuron_selectivity(net, (x, y), "2")
    assert result.mean == pytest.approx(0.25) and result.mass.tolist() == [[10.0] * 4]
    with pytest.raises(ValueError, match=r"unknown layer '1'; the model's layers \(as named by partition_codes: its "
                                         r"ReLU-like, clamp and max-pool layers\) are \['2'\]"):
        neuron_selectivity(net, (x, y), "1")  # the Linear layer: not a nonlinearity
    pooled = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2), nn.Flatten())
    with torch.no_grad():
        pooled[0].weight.zero_()
        pooled[0].bias.fill_(-1.0)
    with pytest.raises(ValueError, match=r"layer '1' has negative outputs.*pass the name of a ReLU layer"):
        neuron_selectivity(pooled, (x, y), "1")
    assert all(not m._forward_hooks for m in net.modules())  # no hooks: the spline engine reads the layers
    with pytest.raises(TypeError, match="pair \\(images, labels\\)"):
        neuron_selectivity(net, x, "2")


class FunctionalNet(nn.Module):
    """F.relu (functional), LeakyReLU, max-pool: the layers a forward hook on nn.ReLU modules would miss."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.leaky = nn.LeakyReLU(0.2)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.max_pool2d(torch.nn.functional.relu(self.conv(x)), 2)
        return self.fc(self.leaky(h).flatten(1))


def test_hidden_units_count_functional_and_leaky_relus_not_max_pool():
    torch.manual_seed(0)
    net = FunctionalNet()
    x = torch.rand(5, 1, 6, 6)
    # F.relu on (3, 4, 4) and LeakyReLU on (3, 2, 2); the max-pool (3, 2, 2) is not a hidden unit
    assert hidden_units(net, x) == 3 * 4 * 4 + 3 * 2 * 2
    image_class, size = random_class(2)
    for build in BUILDERS.values():  # the constructions: exactly the outputs of their nn.ReLU modules
        model = build(image_class, size, torch.float64)
        counts: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out, counts=counts: counts.append(out[0].numel()))
                 for m in model.modules() if isinstance(m, nn.ReLU)]
        model(torch.rand(1, 1, *size, dtype=torch.float64))
        for hook in hooks:
            hook.remove()
        assert hidden_units(model, torch.rand(3, 1, *size)) == sum(counts) > 0


def test_selectivity_reads_functional_relu_and_leaky_layers():
    torch.manual_seed(0)
    net = FunctionalNet().double()
    x, y = torch.rand(30, 1, 6, 6, dtype=torch.float64), torch.arange(30) % 3
    with torch.no_grad():
        h = net.conv(x)
        p = torch.nn.functional.max_pool2d(torch.relu(h), 2)
    relu_mass = torch.relu(h).sum((2, 3)).T @ nn.functional.one_hot(y, 3).double()
    leaky_mass = torch.relu(p).sum((2, 3)).T @ nn.functional.one_hot(y, 3).double()  # positive part of the leaky
    by_relu = neuron_selectivity(net, (x, y), "relu_0", batch_size=7)
    torch.testing.assert_close(by_relu.mass, relu_mass, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(neuron_selectivity(net, (x, y), "leaky").mass, leaky_mass, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(neuron_selectivity(net, (x, y), "max_pool2d_0").mass, leaky_mass, rtol=1e-12,
                               atol=1e-12)


def test_constructions_reject_bad_arguments():
    image_class, size = random_class(1)
    with pytest.raises(ValueError, match=r"does not fit in a 2x2 input"):
        shallow_construction(image_class, 2)
    with pytest.raises(ValueError, match=r"does not fit in a 2x2 input"):
        deep_construction(image_class, 2)
    with pytest.raises(TypeError, match="needs an ImageClass"):
        deep_construction([image_class], size)
    with pytest.raises(ValueError, match="hidden must be 'linear'"):
        shallow_construction(image_class, size, hidden="sparse")
    net = shallow_construction(image_class, size)
    with pytest.raises(ValueError, match=rf"built for inputs of shape \(N, 1, {size[0]}, {size[1]}\); received an"):
        net(torch.rand(2, 1, size[0] + 1, size[1]))
    with pytest.raises(ValueError, match="received an object of type list"):
        net([[0.5]])
    assert isinstance(net, ShallowTileNet) and isinstance(deep_construction(image_class, size), DeepTileNet)
    tiny = ImageClass([Image([FeatureTile(np.ones((2, 2)), 0.5)]), Image([FeatureTile(np.full((2, 2), 0.25), 0.5)])])
    with pytest.raises(ValueError, match=r"would hold .* weights .* build the same network with hidden='conv'"):
        shallow_construction(tiny, 300)
    assert shallow_construction(tiny, 300, hidden="conv").windows.out_channels == 2
