"""The tiles experiments (002 sec. 6): the paper's printed network, the seed statistics, the data sources.

The claims a quick run decides (zero-error constructions, the printed network, invariance) are asserted on every
quick run by tests/test_experiments.py; these tests pin down what the claims rest on, in seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlens.data import ArrayDataset
from cnnlens.experiments import RunContext, get_experiment, tiles_digits
from cnnlens.experiments.tiles_digits import _nearest_other_match, _source, digit_class
from cnnlens.experiments.tiles_squares import (
    PRINTED_CONV_BIAS,
    PRINTED_CONV_WEIGHT,
    PRINTED_FC_BIAS,
    PRINTED_FC_WEIGHT,
    _filter_alive,
    printed_network,
    squares_class,
)
from cnnlens.tiles import FeatureTile, Image, ImageClass, distance_map, sample, single_conv_net
from cnnlens.train import evaluate

# ----------------------------------------------------------------------------------------------------------------
# tiles-squares (sec. 6.1)


def test_squares_follow_the_papers_grey_levels_and_label_order():
    image_class = squares_class(0.5)
    assert image_class.names == ("black", "white")
    (_, black), (_, white) = image_class.tiles
    assert torch.equal(black.t, torch.ones(2, 2)) and torch.equal(white.t, torch.zeros(2, 2))
    assert bool(white.mask.all()) and bool(black.mask.all())


def test_printed_network_holds_the_printed_weights_and_reads_black_as_the_first_logit():
    net = printed_network()
    assert torch.equal(net.conv.weight[0, 0], torch.tensor(PRINTED_CONV_WEIGHT))
    assert float(net.conv.bias.detach()) == pytest.approx(PRINTED_CONV_BIAS)
    assert torch.equal(net.fc.weight, torch.tensor(PRINTED_FC_WEIGHT))
    assert torch.equal(net.fc.bias, torch.tensor(PRINTED_FC_BIAS))
    # by hand: a black square in the middle of a mid-grey image fires the centre neuron (4.14 + bias -1.65 = 2.49)
    x = torch.full((1, 1, 4, 4), 0.3)
    x[0, 0, 1:3, 1:3] = 1.0
    with torch.no_grad():
        centre = float(net.conv(x)[0, 0, 1, 1])
        first_black, first_white = float(net(x)[0, 0]), float(net(torch.zeros(1, 1, 4, 4))[0, 0])
    assert centre == pytest.approx(sum(map(sum, PRINTED_CONV_WEIGHT)) + PRINTED_CONV_BIAS)
    assert first_black > 0 > first_white
    # on sampled squares the paper's convention (white = 0, black = label 0) fits and the inverted one does not
    data = sample(squares_class(0.5), 2000, 4, perturbation=0.0, seed=3)
    inverted = replace(data, images=1.0 - data.images)
    assert evaluate(net, data).accuracy > 0.9 > 0.1 > evaluate(net, inverted).accuracy


def test_a_filter_silent_on_every_input_is_dead():
    net = single_conv_net(4, 1, 2, 2)
    data = sample(squares_class(0.5), 50, 4, perturbation=0.0, seed=0)
    with torch.no_grad():
        net.conv.weight.fill_(-1.0)
        net.conv.bias.fill_(-0.1)
    assert not _filter_alive(net, data)
    with torch.no_grad():
        net.conv.bias.fill_(3.0)
    assert _filter_alive(net, data)


def test_squares_median_counts_every_seed_and_settings_name_the_seeds(tmp_path: Path):
    exp = get_experiment("tiles-squares")
    cfg = replace(exp.quick, epochs=2, seeds=3, widths=(2,), wide_seeds=1, n_test=400)
    result = exp.fn(cfg, RunContext(out_dir=tmp_path, seed=4, progress=False))
    m = result.metrics
    seeds = [m[f"acc_trained_seed{s}"] for s in range(3)]
    assert m["acc_trained"] == float(np.median(seeds))
    assert 0 <= m["dead_seeds"] <= 3 and m["n_test"] == 400 and m["wide_filters"] == 2
    assert m["error_shallow"] == 0 and m["error_deep"] == 0
    assert m["n_black"] + m["n_white"] == 400
    assert set(result.settings) <= {c.id for c in exp.claims}
    assert "seeds 4-6" in result.settings["one-filter-95"] and "2 filters" in result.settings["more-filters-99"]


# ----------------------------------------------------------------------------------------------------------------
# tiles-digits (sec. 6.2)


def test_digit_tiles_fall_back_to_mnist5k(tmp_path: Path):
    ctx = RunContext(out_dir=tmp_path, data_dir=tmp_path)
    source, fashion = _source(ctx)
    assert source.name == "mnist5k" and not fashion and "no Fashion-MNIST" in ctx.log_lines[0]
    assert _source(RunContext(out_dir=tmp_path))[1] is False


def test_digit_class_draws_a_stratified_sample_as_loaded_or_quantised():
    source = tiles_digits.load("mnist5k", "train")
    raw = digit_class(source, 2, None, 4.0, seed=0)
    assert raw.names == tuple(str(d) for d in range(10)) and len(raw.tiles) == 20
    assert [j for j, _ in raw.tiles] == [d for d in range(10) for _ in range(2)]
    items = {tuple(source.images[i, 0].flatten().tolist()): int(source.labels[i]) for i in range(len(source))}
    for j, tile in raw.tiles:  # each tile is an item of its class, unchanged
        assert tile.shape == (28, 28) and items[tuple(tile.t.float().flatten().tolist())] == j
    quantised = digit_class(source, 2, 8, 4.0, seed=0)
    for (_, a), (_, b) in zip(raw.tiles, quantised.tiles, strict=True):
        assert torch.equal(b.t * 8, torch.round(b.t * 8)) and torch.equal(b.t, torch.round(a.t * 8) / 8)
    again = digit_class(source, 2, None, 4.0, seed=0)
    assert all(torch.equal(a.t, b.t) for (_, a), (_, b) in zip(raw.tiles, again.tiles, strict=True))
    with pytest.raises(ValueError, match="at least one tile"):
        digit_class(source, 0, None, 4.0, seed=0)


def _fake_fashion(seed: int = 0) -> ArrayDataset:
    """Ten classes of 3 random sparse 28 x 28 items with grey levels in {0.5, 1} (cheap constructions)."""
    gen = torch.Generator().manual_seed(seed)
    images = (torch.rand(30, 1, 28, 28, generator=gen) < 0.2).float()
    images *= torch.where(torch.rand(30, 1, 28, 28, generator=gen) < 0.5, 0.5, 1.0)
    return ArrayDataset(images, torch.arange(30) % 10, 10, "fashion-mnist", "train")


def test_fashion_mnist_tiles_are_used_and_said_when_data_dir_holds_them(tmp_path: Path, monkeypatch):
    real_load = tiles_digits.load
    monkeypatch.setattr(tiles_digits, "load",
                        lambda name, *args, **kw: _fake_fashion() if name == "fashion-mnist" else
                        real_load(name, *args, **kw))
    exp = get_experiment("tiles-digits")
    cfg = replace(exp.quick, n_train=60, n_test=20, n_deep=2, probe_inputs=4, epochs=1)
    result = exp.fn(cfg, RunContext(out_dir=tmp_path, data_dir=tmp_path, progress=False))
    assert set(result.settings) == {c.id for c in exp.claims}
    assert all(s.startswith("Fashion-MNIST training items as tiles, as in the paper") for s in
               result.settings.values())
    assert result.metrics["tile_grey_levels"] == 2 and result.metrics["error_shallow"] == 0
    assert result.metrics["n_deep"] == 2 and "fashion-mnist" in result.notes


def test_nearest_other_match_is_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    tiles = [FeatureTile(np.round(rng.random((3, 3)) * 4) / 4, 0.2, mask=rng.random((3, 3)) < 0.8) for _ in range(2)]
    image_class = ImageClass([Image([tiles[0]]), Image([tiles[1]])])
    data = sample(image_class, 12, 7, perturbation=0.0, seed=1)
    best = np.inf
    for n in range(len(data)):
        for a, (_, tile) in enumerate(image_class.tiles):
            d = distance_map(data.images[n, 0], tile)
            for i in range(d.shape[0]):
                for j in range(d.shape[1]):
                    planted = a == int(data.tile_ids[n]) and (i, j) == tuple(data.positions[n].tolist())
                    if not planted:
                        best = min(best, float(d[i, j]))
    assert _nearest_other_match(data, image_class) == best
