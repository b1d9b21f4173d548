"""Fig. 9(b) of 003: output vectors of each class against the Output layer's coordinate unit vectors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.recos._clusters import unit_vector_alignment
from conftest import tol


def _by_projection(z: torch.Tensor) -> torch.Tensor:
    """cos(P z, P e_j) with the explicit projection P = I - 1 1^T / C onto the plane orthogonal to 1."""
    c = z.shape[1]
    p = torch.eye(c, dtype=z.dtype) - torch.full((c, c), 1.0 / c, dtype=z.dtype)
    pz, pe = z @ p, p  # rows of p are the projected unit vectors (p is symmetric)
    num = pz @ pe.T
    return num / (pz.norm(dim=1, keepdim=True) * pe.norm(dim=1).unsqueeze(0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), c=st.integers(2, 12), seed=st.integers(0, 2**16), wide=st.booleans())
def test_cosines_equal_the_explicit_projection(n, c, seed, wide):
    dtype = torch.float64 if wide else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z = 5 * torch.randn(n, c, generator=gen, dtype=dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    al = unit_vector_alignment(z, labels)
    assert torch.allclose(al.cosines, _by_projection(z), rtol=0, atol=tol(dtype) * 10)
    shifted = unit_vector_alignment(z + 3 * torch.randn(n, 1, generator=gen, dtype=dtype), labels)
    assert torch.allclose(shifted.cosines, al.cosines, rtol=0, atol=tol(dtype) * 10)  # the softmax's invariance
    assert torch.equal(al.own, al.cosines[torch.arange(n), labels])
    for k in range(c):  # centroid rows: the cosines of each class's mean output vector
        members = z[labels == k]
        if len(members):
            expected = _by_projection(members.mean(dim=0, keepdim=True))[0]
            assert torch.allclose(al.centroid_cosines[k], expected, rtol=0, atol=tol(dtype) * 10)
        else:
            assert bool(al.centroid_cosines[k].isnan().all())


def test_perfect_alignment_and_pairing(dtype):
    c = 10
    labels = torch.arange(c).repeat(3)
    z = 7.0 * torch.eye(c, dtype=dtype)[labels] - 2.0  # a multiple of e_y plus a constant vector
    al = unit_vector_alignment(z, labels, num_classes=c)
    assert torch.allclose(al.own, torch.ones(len(labels), dtype=dtype), atol=tol(dtype))
    assert torch.allclose(al.nearest_other, torch.full((len(labels),), -1.0 / (c - 1), dtype=dtype),
                          atol=tol(dtype))
    assert al.pairing_errors == 0
    swapped = labels.clone()
    swapped[labels == 3], swapped[labels == 4] = 4, 3  # classes 3 and 4 land on each other's unit vector
    assert unit_vector_alignment(z, swapped).pairing_errors == 2


def test_empty_class_and_zero_vector():
    z = torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])
    al = unit_vector_alignment(z, torch.tensor([0, 0]))
    assert float(al.own[0]) == 0.0  # constant logits: no direction
    assert math.isclose(float(al.own[1]), 1.0, rel_tol=1e-6)
    assert bool(al.centroid_cosines[1:].isnan().all()) and al.pairing_errors == 0


def test_alignment_errors():
    with pytest.raises(ValueError, match=r"shape \(N, C\) with C >= 2"):
        unit_vector_alignment(torch.zeros(4), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_classes=5 but outputs has 3 columns"):
        unit_vector_alignment(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), num_classes=5)
    with pytest.raises(ValueError, match=r"int64 tensor of shape \(2,\)"):
        unit_vector_alignment(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        unit_vector_alignment(torch.zeros(2, 3), torch.tensor([0, 3]))
