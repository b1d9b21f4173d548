"""mnist5k-scenes: digits on background scenes (003 sec. 3, Fig. 8), deterministic and aligned with the
clean digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from cnnlens.data import SCENE_NAMES, SCENE_SIDE, SceneDataset, clear_cache, composite, load, scene_images


def test_scenes_share_mnist5k_split_and_keep_clean_digits() -> None:
    for split, size in (("train", 4000), ("test", 1000)):
        scenes, digits = load("mnist5k-scenes", split), load("mnist5k", split)
        assert isinstance(scenes, SceneDataset) and len(scenes) == size
        assert scenes.images.shape == (size, 1, 28, 28) and scenes.images.dtype == torch.float32
        assert torch.equal(scenes.labels, digits.labels)
        assert torch.equal(scenes.clean_images, digits.images)
        assert float(scenes.images.min()) >= 0.0 and float(scenes.images.max()) <= 1.0
        assert scenes.scene_index.tolist() == [i % 10 for i in range(size)]
        assert scenes.scene_names == SCENE_NAMES and len(set(SCENE_NAMES)) == 10
        # the background really changes the input: the mean absolute change is large
        assert float((scenes.images - scenes.clean_images).abs().mean()) > 0.2


def test_background_is_a_crop_of_the_named_scene_under_the_compositing_rule() -> None:
    scenes = load("mnist5k-scenes", "test")
    library = scene_images()
    assert all(min(s.shape) == SCENE_SIDE and 0 <= s.min() and s.max() <= 1 for s in library)
    for i in (0, 3, 17, 456, 999):
        clean = scenes.clean_images[i, 0].double().numpy()
        mixed = scenes.images[i, 0].double().numpy()
        empty = clean == 0  # there the composite shows the scene itself
        windows = sliding_window_view(library[int(scenes.scene_index[i])], (28, 28))
        error = np.abs(windows - mixed)[..., empty].max(axis=-1)
        row, col = np.unravel_index(np.argmin(error), error.shape)
        assert error[row, col] < 1e-6
        background = windows[row, col]
        np.testing.assert_allclose(mixed, clean + (1 - clean) * background, atol=1e-6)


def test_scenes_are_deterministic_and_splits_use_different_crops() -> None:
    first = load("mnist5k-scenes", "train")
    clear_cache()
    scene_images.cache_clear()
    again = load("mnist5k-scenes", "train")
    assert again is not first and torch.equal(again.images, first.images)
    test = load("mnist5k-scenes", "test")
    background_train = first.images[:10] - first.clean_images[:10]
    background_test = test.images[:10] - test.clean_images[:10]
    assert not torch.equal(background_train, background_test)


def test_transforms_and_subsets_keep_scenes_aligned_with_clean_digits() -> None:
    padded = load("mnist5k-scenes", "test", transforms=["pad32", "reverse-polarity"])
    raw = load("mnist5k-scenes", "test")
    assert padded.clean_images.shape == padded.images.shape == (1000, 1, 32, 32)
    assert torch.equal(padded.clean_images[:, :, 2:30, 2:30], 1 - raw.clean_images)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], 1 - raw.images)
    part = raw.subset([7, 2])
    assert isinstance(part, SceneDataset)
    assert torch.equal(part.clean_images, raw.clean_images[[7, 2]])
    assert part.scene_index.tolist() == [7, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_composite_rule(dtype: torch.dtype, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    digit = torch.rand(4, 1, 5, 5, generator=generator, dtype=dtype)
    digit[0] = 0.0
    digit[1] = 1.0
    background = torch.rand(4, 1, 5, 5, generator=generator, dtype=dtype)
    mixed = composite(digit, background)
    assert mixed.dtype == dtype
    assert torch.equal(mixed[0], background[0])  # no ink: the scene
    assert torch.equal(mixed[1], torch.ones_like(mixed[1]))  # full ink: the white digit
    assert bool((mixed >= torch.maximum(digit, background) - 1e-7).all()) and bool((mixed <= 1).all())
    # opacity blend: x = alpha * 1 + (1 - alpha) * b with alpha = d
    torch.testing.assert_close(mixed, digit * 1 + (1 - digit) * background)


def test_composite_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"same shape; received \(2, 1, 28, 28\) and \(2, 1, 32, 32\)"):
        composite(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 32, 32))
