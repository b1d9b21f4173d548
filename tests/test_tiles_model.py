"""The tile model of 002 (Defs. 3.1-3.6), its detectors (Defs. 5.1-5.3), Lemma 5.1 and sampling of X^Ibar."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.tiles import (
    FeatureTile,
    Image,
    ImageClass,
    class_labels,
    contains,
    contains_image,
    distance_map,
    in_class,
    membership,
    phi_class,
    phi_image,
    phi_tile,
    plant,
    sample,
    tile_distance,
)


def random_tile(rng: np.random.Generator, k: int, l: int, eps: float) -> FeatureTile:
    """A tile with a random non-rectangular support and arbitrary values outside it (they must be ignored)."""
    mask = rng.random((k, l)) < 0.6
    mask[rng.integers(k), rng.integers(l)] = True
    return FeatureTile(rng.random((k, l)), eps, mask=mask)


def brute_distance_map(x: np.ndarray, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """D_t(x) of Def. 5.3 by explicit loops over windows and support pixels."""
    (m, n), (k, l) = x.shape, t.shape
    out = np.zeros((m - k + 1, n - l + 1))
    for i, j in itertools.product(range(m - k + 1), range(n - l + 1)):
        out[i, j] = sum(abs(x[i + a, j + b] - t[a, b]) for a, b in zip(*np.nonzero(mask), strict=True))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Defs. 3.1-3.3


def test_support_is_nonzero_entries_by_default_and_mask_overrides_it():
    tile = FeatureTile([[0.0, 0.5], [0.25, 0.0]], eps=0.1)
    assert tile.mask.tolist() == [[False, True], [True, False]]
    rows, cols = tile.support
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert tile.support_values.tolist() == [0.5, 0.25]
    white = FeatureTile(np.zeros((2, 2)), eps=0.5, mask=np.ones((2, 2), bool))
    assert white.mask.all() and white.shape == (2, 2)
    # tile distance (Def. 3.3): only the support counts
    x = torch.tensor([[0.9, 0.5], [0.5, 0.7]], dtype=torch.float64)
    assert float(tile_distance(x, tile)) == 0.25
    assert float(tile_distance(x, white)) == pytest.approx(2.6)


@pytest.mark.parametrize(
    ("t", "eps", "mask", "error", "match"),
    [
        ([[0.5, 1.5]], 0.1, None, ValueError, r"tile values must lie in \[0, 1\].*received values in \[0.5, 1.5\]"),
        ([[-0.1, 0.5]], 0.1, None, ValueError, r"tile values must lie in \[0, 1\]"),
        ([[np.nan, 0.5]], 0.1, None, ValueError, r"tile values must lie in \[0, 1\]"),
        ([[0.5]], 0.0, None, ValueError, r"eps must be a finite number > 0.*received eps=0.0"),
        ([[0.5]], -1.0, None, ValueError, r"eps must be a finite number > 0"),
        ([[0.5]], float("inf"), None, ValueError, r"eps must be a finite number > 0"),
        ([[0.5]], "1", None, TypeError, r"eps must be a real number"),
        ([0.5, 0.5], 0.1, None, ValueError, r"non-empty 2-D matrix t.*received shape \(2,\)"),
        ([[0.0, 0.0]], 0.1, None, ValueError, r"support is empty.*mask=np.ones"),
        ([[0.5, 0.0]], 0.1, np.zeros((1, 2), bool), ValueError, r"support is empty"),
        ([[0.5, 0.0]], 0.1, np.ones((2, 2), bool), ValueError, r"mask must have the tile's shape \(1, 2\)"),
        ([[0.5, 0.0]], 0.1, np.ones((1, 2)), TypeError, r"mask must be a boolean matrix"),
    ],
)
def test_bad_tiles_are_rejected_with_a_clear_message(t, eps, mask, error, match):
    with pytest.raises(error, match=match):
        FeatureTile(t, eps, mask=mask)


def test_bad_images_and_classes_are_rejected():
    tile = FeatureTile([[1.0]], 0.5)
    with pytest.raises(ValueError, match="at least one feature tile"):
        Image([])
    with pytest.raises(TypeError, match="must be a FeatureTile"):
        Image([np.ones((2, 2))])
    with pytest.raises(ValueError, match="at least one image"):
        ImageClass([])
    with pytest.raises(ValueError, match="distinct names"):
        ImageClass([Image([tile], "a"), Image([FeatureTile([[0.2]], 0.1)], "a")])


def test_images_that_cannot_be_told_apart_are_rejected():
    """Identical tiles, and a tile that always contains another image's tile (Def. 3.6 would be empty)."""
    t = np.array([[0.2, 0.8], [0.6, 0.4]])
    same = r"images '(cat|dog)' and '(dog|cat)' cannot be told apart.*distance 0 <= eps=0.1"
    with pytest.raises(ValueError, match=same):
        ImageClass([Image([FeatureTile(t, 0.1)], "cat"), Image([FeatureTile(t, 0.1)], "dog")])
    small = FeatureTile([[0.55]], 0.1)  # within 0.1 of the 0.6 pixel of t
    with pytest.raises(ValueError, match=r"images 'big' and 'small' cannot be told apart.*offset \(1, 0\)"):
        ImageClass([Image([FeatureTile(t, 0.1)], "big"), Image([small], "small")])
    # far enough apart: accepted
    ImageClass([Image([FeatureTile(t, 0.1)], "big"), Image([FeatureTile([[0.55]], 0.01)], "small")])


def test_sampling_rejects_classes_whose_inputs_always_hold_two_images():
    """A 1x1 tile 0.5 with eps 0.45 is in almost every uniform background: 'ones' can never be alone."""
    ones = Image([FeatureTile(np.ones((2, 2)), 0.2)], "ones")
    grey = Image([FeatureTile([[0.5]], 0.45)], "grey")
    image_class = ImageClass([ones, grey])  # exact plantings are fine (|1 - 0.5| > 0.45) ...
    with pytest.raises(ValueError, match=r"images '(ones|grey)' and '(grey|ones)' cannot be told apart on 4x4 inputs"):
        sample(image_class, 20, 4, seed=0, max_tries=30)  # ... but not on random backgrounds


# ----------------------------------------------------------------------------------------------------------------
# Defs. 5.1-5.3 against brute force


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), k=st.integers(1, 4), l=st.integers(1, 4), extra=st.integers(0, 4))
def test_distance_map_equals_the_definition(seed, k, l, extra):
    rng = np.random.default_rng(seed)
    tile = random_tile(rng, k, l, 0.5)
    x = rng.random((3, k + extra, l + rng.integers(0, 4)))
    expected = np.stack([brute_distance_map(xi, tile.t.numpy(), tile.mask.numpy()) for xi in x])
    np.testing.assert_allclose(distance_map(x, tile).numpy(), expected, rtol=0, atol=1e-12)
    # the single window of a k x l input is the tile distance of Def. 3.3
    window = torch.from_numpy(x[:, :k, :l])
    np.testing.assert_allclose(tile_distance(window, tile), distance_map(window, tile)[:, 0, 0], atol=1e-12)
    # phi_T (Def. 5.1) from the brute-force distances
    phi = np.maximum(0.0, tile.eps - expected).sum((1, 2))
    np.testing.assert_allclose(phi_tile(x, tile).numpy(), phi, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), k=st.integers(1, 6), l=st.integers(1, 6), extra=st.integers(0, 5),
       levels=st.sampled_from([1, 2, 8, None]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_distance_map_paths_give_identical_numbers(seed, k, l, extra, levels, dtype):
    """|x - c| once per grey level (quantised tiles) or once per support pixel (8-bit tiles): bit-identical maps,
    both equal to Def. 5.3 computed by brute force, for float32 and float64 inputs."""
    from cnnlens.tiles._detectors import _add_slices

    rng = np.random.default_rng(seed)
    values = rng.random((k, l))
    if levels is not None:
        values = np.round(values * levels) / levels
    mask = rng.random((k, l)) < 0.7
    mask[rng.integers(k), rng.integers(l)] = True
    tile = FeatureTile(values, 1.0, mask=mask)
    x = torch.from_numpy(rng.random((3, k + extra, l + int(rng.integers(0, 5))))).to(dtype)
    chunk = x.double().permute(1, 2, 0).contiguous()
    grey, which = torch.unique(tile.support_values, return_inverse=True)
    pixels = torch.nonzero(tile.mask).tolist()
    shape = (x.shape[1] - k + 1, x.shape[2] - l + 1, x.shape[0])
    by_value, by_pixel = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    _add_slices(by_value, chunk, grey, which.tolist(), pixels, per_value=True)
    _add_slices(by_pixel, chunk, grey, which.tolist(), pixels, per_value=False)
    assert torch.equal(by_value, by_pixel)
    assert torch.equal(distance_map(x, tile), by_value.permute(2, 0, 1))
    expected = np.stack([brute_distance_map(xi, tile.t.numpy(), tile.mask.numpy()) for xi in x.double().numpy()])
    np.testing.assert_allclose(by_value.permute(2, 0, 1).numpy(), expected, rtol=0, atol=1e-12)


def test_distance_map_of_8_bit_digit_tiles_equals_the_definition():
    """A 28 x 28 tile with ~200 grey levels takes the per-pixel path; the map matches the definition."""
    rng = np.random.default_rng(3)
    values = np.round(rng.random((28, 28)) * 255) / 255
    values[rng.random((28, 28)) < 0.7] = 0.0
    tile = FeatureTile(values, 4.0)
    assert torch.unique(tile.support_values).numel() > 100
    x = rng.random((2, 31, 30))
    expected = np.stack([brute_distance_map(xi, values, values != 0) for xi in x])
    np.testing.assert_allclose(distance_map(x, tile).numpy(), expected, rtol=0, atol=1e-10)


def test_detectors_accept_every_input_layout_and_float32():
    rng = np.random.default_rng(1)
    tile = random_tile(rng, 2, 3, 0.7)
    x = torch.from_numpy(rng.random((4, 5, 6)))
    ref = distance_map(x, tile)
    assert ref.shape == (4, 4, 4) and ref.dtype == torch.float64
    assert torch.equal(distance_map(x.unsqueeze(1), tile), ref)
    assert torch.equal(distance_map(x[2], tile), ref[2])
    assert torch.equal(distance_map(x.numpy(), tile), ref)
    assert phi_tile(x[0], tile).shape == ()
    x32 = x.float()
    torch.testing.assert_close(distance_map(x32, tile), distance_map(x32.double(), tile), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(N, 1, m, n\) \(greyscale.*received shape \(4, 3, 5, 6\)"):
        distance_map(torch.rand(4, 3, 5, 6), tile)
    with pytest.raises(TypeError, match="real tensor or array"):
        distance_map("image", tile)


def test_tile_larger_than_the_input_is_an_error():
    tile = FeatureTile(np.ones((3, 5)), 0.5)
    with pytest.raises(ValueError, match=r"a 3x5 tile is larger than the 4x4 input"):
        distance_map(torch.rand(4, 4), tile)
    with pytest.raises(ValueError, match=r"windows of size \(4, 4\)"):
        tile_distance(torch.rand(4, 4), tile)
    image_class = ImageClass([Image([tile], "wide"), Image([FeatureTile(np.zeros((1, 1)) + 0.5, 0.1)])])
    with pytest.raises(ValueError, match=r"a 3x5 tile of image 'wide' does not fit in a 4x4 input.*at least 3x5"):
        sample(image_class, 2, 4)


def test_distance_map_of_a_bare_matrix_may_have_an_empty_support():
    x = torch.rand(5, 5, dtype=torch.float64)
    zero = distance_map(x, np.zeros((2, 2)))
    assert zero.shape == (4, 4) and not zero.any()
    with pytest.raises(ValueError, match="a FeatureTile carries its own support"):
        distance_map(x, FeatureTile([[1.0]], 0.1), mask=np.ones((1, 1), bool))


# ----------------------------------------------------------------------------------------------------------------
# Lemma 5.1 and Defs. 3.4-3.6


def _with_window_at_distance(tile: FeatureTile, distance: float, size: int, at: tuple[int, int]) -> torch.Tensor:
    """A constant-0.5 input holding a window at exactly ``distance`` from ``tile`` (dyadic numbers, exact)."""
    x = torch.full((size, size), 0.5, dtype=torch.float64)
    k, l = tile.shape
    window = tile.t.clone()
    window[~tile.mask] = 0.5
    window[0, 0] = window[0, 0] - distance if window[0, 0] >= 0.5 else window[0, 0] + distance
    x[at[0] : at[0] + k, at[1] : at[1] + l] = window
    return x


@pytest.mark.parametrize("delta", [2.0**-20, 2.0**-8, 0.0])
def test_lemma_5_1_on_the_boundary(delta):
    """phi_T(x) > 0 <=> x in X^T holds just inside and just outside eps; at distance exactly eps x is in X^T
    (Def. 3.4 uses <=) but phi_T(x) = 0: the lemma's true form is phi_T(x) > 0 <=> min D_t(x) < eps."""
    tile = FeatureTile([[0.0, 0.75], [0.25, 0.0]], eps=0.375, mask=np.array([[True, True], [True, False]]))
    inside = _with_window_at_distance(tile, tile.eps - delta, 6, (2, 3))
    outside = _with_window_at_distance(tile, tile.eps + delta, 6, (2, 3))
    assert float(distance_map(inside, tile).min()) == tile.eps - delta
    assert float(distance_map(outside, tile).min()) == tile.eps + delta
    assert bool(contains(inside, tile))
    assert float(phi_tile(inside, tile)) == delta
    if delta > 0:
        assert bool(phi_tile(inside, tile) > 0) == bool(contains(inside, tile)) is True
        assert bool(phi_tile(outside, tile) > 0) == bool(contains(outside, tile)) is False
    else:  # the boundary: in X^T, yet phi_T = 0
        assert bool(contains(inside, tile)) and float(phi_tile(inside, tile)) == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_phi_is_positive_exactly_when_some_window_is_strictly_within_eps(seed):
    rng = np.random.default_rng(seed)
    tile = random_tile(rng, int(rng.integers(1, 4)), int(rng.integers(1, 4)), float(rng.uniform(0.05, 1.5)))
    x = torch.from_numpy(rng.random((50, 6, 7)))
    x[:25, 1 : 1 + tile.shape[0], 2 : 2 + tile.shape[1]] = plant(
        x[:25], tile, (1, 2), perturbation=1.0, generator=torch.Generator().manual_seed(seed)
    )[:, 1 : 1 + tile.shape[0], 2 : 2 + tile.shape[1]]
    strict = distance_map(x, tile).flatten(1).amin(1) < tile.eps
    assert torch.equal(phi_tile(x, tile) > 0, strict)
    assert bool(contains(x, tile)[:25].all())  # planted within eps
    assert torch.equal(contains(x, tile) & ~strict, distance_map(x, tile).flatten(1).amin(1) == tile.eps)


def test_image_and_class_membership():
    a1, a2 = FeatureTile(np.ones((2, 2)), 0.5), FeatureTile([[1.0, 0.0, 1.0]], 0.25)
    b = FeatureTile(np.zeros((2, 2)), 0.5, mask=np.ones((2, 2), bool))
    image_class = ImageClass([Image([a1, a2], "A"), Image([b], "B")])
    grey = torch.full((3, 6, 6), 0.5, dtype=torch.float64)
    only_a2 = grey[0].clone()
    only_a2[0, 0:3] = torch.tensor([1.0, 0.3, 1.0])  # a2's support is the two ones
    both = grey[1].clone()
    both[0:2, 0:2], both[4:6, 4:6] = 1.0, 0.0
    x = torch.stack([grey[2], only_a2, both])
    assert contains_image(x, image_class.images[0]).tolist() == [False, True, True]
    assert membership(x, image_class).tolist() == [[False, False], [True, False], [True, True]]
    assert class_labels(x, image_class).tolist() == [-1, 0, -1]
    assert in_class(x, image_class).tolist() == [False, True, False]
    expected = torch.stack([phi_image(x, image_class.images[0]), phi_image(x, image_class.images[1])], 1)
    assert torch.equal(phi_class(x, image_class), expected)
    assert torch.equal(phi_image(x, image_class.images[0]), phi_tile(x, a1) + phi_tile(x, a2))


# ----------------------------------------------------------------------------------------------------------------
# sampling


def _two_shapes() -> ImageClass:
    rng = np.random.default_rng(7)
    return ImageClass([
        Image([random_tile(rng, 2, 3, 0.1), random_tile(rng, 3, 3, 0.15)], "a"),
        Image([random_tile(rng, 4, 2, 0.1)], "b"),
        Image([random_tile(rng, 1, 3, 0.05)], "c"),
    ])


def test_sample_is_deterministic_balanced_and_exactly_labelled():
    image_class = _two_shapes()
    data = sample(image_class, 300, (7, 9), seed=3)
    again = sample(image_class, 300, (7, 9), seed=3)
    other = sample(image_class, 300, (7, 9), seed=4)
    assert torch.equal(data.images, again.images) and torch.equal(data.labels, again.labels)
    assert not torch.equal(data.images, other.images)
    assert data.images.shape == (300, 1, 7, 9) and data.images.dtype == torch.float32
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1
    assert torch.bincount(data.labels).tolist() == [100, 100, 100]
    assert torch.equal(class_labels(data.images, image_class), data.labels)
    assert data.class_names == ("a", "b", "c") and data.num_classes == 3
    for i in range(0, 300, 7):  # the planted tile is where the data set says, within perturbation * eps
        j_img, tile = image_class.tiles[int(data.tile_ids[i])]
        assert j_img == int(data.labels[i])
        (r, c), (k, l) = data.positions[i].tolist(), tile.shape
        assert float(tile_distance(data.images[i, 0, r : r + k, c : c + l], tile)) <= 0.5 * tile.eps + 1e-6


def test_sample_backgrounds_and_exact_plantings():
    image_class = _two_shapes()
    data = sample(image_class, 60, 8, background=0.5, perturbation=0.0, seed=0)
    for i in range(60):
        _, tile = image_class.tiles[int(data.tile_ids[i])]
        (r, c), (k, l) = data.positions[i].tolist(), tile.shape
        window = data.images[i, 0, r : r + k, c : c + l].double()
        assert float(tile_distance(window, tile)) < 1e-6  # exact up to float32 storage
        outside = data.images[i, 0].clone()
        outside[r : r + k, c : c + l][tile.mask] = 0.5
        assert torch.equal(outside, torch.full((8, 8), 0.5))  # everything else is the background
    fixed = torch.rand(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = sample(image_class, 30, 8, background=fixed, seed=1)
    assert torch.equal(class_labels(data.images, image_class), data.labels)
    for bad, match in [("gaussian", "background must be 'uniform'"), (1.5, "background must be 'uniform'"),
                       (torch.rand(7, 8), r"must have shape \(8, 8\)")]:
        with pytest.raises(ValueError, match=match):
            sample(image_class, 3, 8, background=bad)
    with pytest.raises(ValueError, match="perturbation must lie in"):
        sample(image_class, 3, 8, perturbation=1.5)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        sample(image_class, -1, 8)
    with pytest.raises(ValueError, match="size must be a positive int"):
        sample(image_class, 3, (8, 0))
    with pytest.raises(TypeError, match="needs an ImageClass"):
        sample([image_class], 3, 8)
    assert len(sample(image_class, 0, 8)) == 0


def test_plant_validates_positions_and_randomness():
    tile = FeatureTile(np.ones((2, 2)), 0.5)
    x = torch.zeros(2, 4, 4, dtype=torch.float64)
    out = plant(x, tile, torch.tensor([[0, 0], [2, 2]]))
    assert out[0, :2, :2].eq(1).all() and out[1, 2:, 2:].eq(1).all() and out.sum() == 8 and x.sum() == 0
    with pytest.raises(ValueError, match=r"top-left positions in \[0, 2\] x \[0, 2\]"):
        plant(x, tile, (3, 0))
    with pytest.raises(ValueError, match="pass a seeded torch.Generator"):
        plant(x, tile, (0, 0), perturbation=0.5)


def test_plant_can_replace_the_whole_window():
    """fill='window' writes the full k x l matrix (sec. 6.2 of 002), fill='support' only the support (Fig. 1)."""
    tile = FeatureTile([[0.0, 1.0], [1.0, 0.0]], 0.5)
    x = torch.full((1, 3, 3), 0.5, dtype=torch.float64)
    support_only = plant(x, tile, (1, 1))
    window = plant(x, tile, (1, 1), fill="window")
    assert support_only[0].tolist() == [[0.5, 0.5, 0.5], [0.5, 0.5, 1.0], [0.5, 1.0, 0.5]]
    assert window[0].tolist() == [[0.5, 0.5, 0.5], [0.5, 0.0, 1.0], [0.5, 1.0, 0.0]]
    with pytest.raises(ValueError, match="fill must be 'support' or 'window'"):
        plant(x, tile, (0, 0), fill="all")
    image_class = _two_shapes()
    data = sample(image_class, 40, 8, seed=2, fill="window", perturbation=0.0)
    assert torch.equal(class_labels(data.images, image_class), data.labels)
    for i in range(40):
        _, tile = image_class.tiles[int(data.tile_ids[i])]
        (r, c), (k, l) = data.positions[i].tolist(), tile.shape
        torch.testing.assert_close(data.images[i, 0, r : r + k, c : c + l].double(), tile.t, rtol=0, atol=1e-7)
