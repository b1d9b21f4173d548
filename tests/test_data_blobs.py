"""The textured-blob boundary data of 001 sec. 4.4.2 (Fig. 10): deterministic, thin boundaries, the three cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlens.data import BOUNDARY_CASES, boundary_blobs


@pytest.mark.parametrize("case", list(BOUNDARY_CASES))
def test_blobs_are_deterministic_prefix_stable_and_in_range(case):
    a, b = boundary_blobs(6, case, size=48, seed=3), boundary_blobs(3, case, size=48, seed=3)
    assert a.images.shape == a.masks.shape == a.boundaries.shape == (6, 1, 48, 48)
    assert a.images.dtype == torch.float32 and a.masks.dtype == a.boundaries.dtype == torch.bool
    assert torch.equal(a.images[:3], b.images) and torch.equal(a.boundaries[:3], b.boundaries)
    assert not torch.equal(a.images, boundary_blobs(6, case, size=48, seed=4).images)
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0


@pytest.mark.parametrize("case", list(BOUNDARY_CASES))
def test_boundary_is_the_blob_pixels_next_to_the_outside(case):
    data = boundary_blobs(5, case, size=64, seed=0)
    for mask, bound in zip(data.masks[:, 0].numpy(), data.boundaries[:, 0].numpy(), strict=True):
        assert bound.any() and mask.sum() > 100 and (~mask).sum() > 100
        assert not (bound & ~mask).any()
        ys, xs = np.nonzero(bound)
        for y, x in zip(ys, xs, strict=True):  # every boundary pixel has a 4-neighbour outside the blob
            neighbours = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
            assert any(0 <= v < 64 and 0 <= u < 64 and not mask[v, u] for v, u in neighbours)
        interior = mask & ~bound  # and no other blob pixel has one
        ys, xs = np.nonzero(interior)
        assert all(mask[y - 1, x] and mask[y + 1, x] and mask[y, x - 1] and mask[y, x + 1]
                   for y, x in zip(ys, xs, strict=True) if 0 < y < 63 and 0 < x < 63)


def test_case_one_is_binary_and_the_texture_cases_are_not():
    binary = boundary_blobs(4, "I", seed=1)
    assert torch.equal(binary.images.bool(), binary.masks)
    textured = boundary_blobs(4, "II", seed=1)
    assert torch.equal(textured.masks, binary.masks)  # the same blobs, other fillings
    assert len(torch.unique(textured.images)) > 100


def test_case_three_textures_share_mean_and_spread():
    """Case III is hard for a gradient rule: inside and outside have the same grey-level statistics."""
    data = boundary_blobs(40, "III", size=64, seed=0)
    inside, outside = data.images[data.masks], data.images[~data.masks]
    assert abs(float(inside.mean() - outside.mean())) < 0.02
    assert abs(float(inside.std() - outside.std())) < 0.02


def test_blobs_bad_input():
    with pytest.raises(ValueError, match="case must be one of I, II, III"):
        boundary_blobs(2, "IV")
    with pytest.raises(ValueError, match="size an int in 16..256"):
        boundary_blobs(2, "I", size=8)
    with pytest.raises(ValueError, match="n must be a positive int"):
        boundary_blobs(0)
