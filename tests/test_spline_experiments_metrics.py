"""The metrics the spline experiments compute in helper functions, checked where the answer is known.

Prop. 5's coefficients on linear models built to sit at the optimum of eq. 12 (and on arbitrary ones, against a
hand computation), its delta-method spread against a finite difference of the ratio, sec. 7.2's "alone in its
region" share on hand-made codes, eq. 15 without tied units against the engine and a brute force, and the fixed
rule that picks Fig. 1's digit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlens.experiments.spline_bimodality import bootstrap_overlap_sd, prop5_statistics
from cnnlens.experiments.spline_partition_knn import _ties, alone_share, untied_neighbours
from cnnlens.experiments.spline_regions import _pairs
from cnnlens.experiments.spline_templates import figure_digit_index
from cnnlens.spline import LayerCode, nearest_neighbors, templates
from conftest import tol


def _optimum_model(u: torch.Tensor, label: int, num_classes: int, alpha: float) -> nn.Linear:
    """A bias-free linear model whose templates are eq. 12's optimum for inputs on the line of the unit vector u."""
    rows = torch.full((num_classes,), -math.sqrt(alpha / (num_classes * (num_classes - 1))), dtype=u.dtype)
    rows[label] = math.sqrt((num_classes - 1) * alpha / num_classes)
    model = nn.Linear(u.numel(), num_classes, bias=False).to(u.dtype)
    with torch.no_grad():
        model.weight.copy_(rows[:, None] * u.flatten()[None, :])
    return model.eval()


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_prop5_statistics_at_the_optimum_of_eq12(dtype: torch.dtype, num_classes: int) -> None:
    torch.manual_seed(0)
    u = torch.randn(12, dtype=dtype)
    u /= u.norm()
    alpha, label = 2.5, num_classes - 1
    model = _optimum_model(u, label, num_classes, alpha)
    scales = torch.tensor([1.0, 0.5, 3.0, 2.0], dtype=dtype)
    x = scales[:, None] * u[None, :]  # ||x|| = 1 for the first input, as in Prop. 5; the others on the same line
    labels = torch.full((len(x),), label)
    stats = prop5_statistics(templates(model, x).templates, x, labels)
    expected_correct = math.sqrt((num_classes - 1) * alpha / num_classes) / scales.double()
    expected_other = -math.sqrt(alpha / (num_classes * (num_classes - 1))) / scales.double()
    assert torch.allclose(stats.correct, expected_correct, rtol=tol(dtype))
    assert torch.allclose(stats.other_mean, expected_other, rtol=tol(dtype))
    assert stats.ratio == pytest.approx(-(num_classes - 1), rel=tol(dtype))
    assert float(stats.sum_ratio.max()) <= tol(dtype)
    assert stats.ratio_sd == pytest.approx(0.0, abs=10 * tol(dtype))  # every input gives the same ratio


def test_prop5_statistics_of_an_arbitrary_linear_model_match_a_hand_computation() -> None:
    torch.manual_seed(1)
    weight = torch.randn(4, 6, dtype=torch.float64)
    model = nn.Linear(6, 4, bias=True).double().eval()
    with torch.no_grad():
        model.weight.copy_(weight)
    x = torch.randn(5, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1])
    stats = prop5_statistics(templates(model, x).templates, x, labels)
    kappa = (x @ weight.T) / (x * x).sum(dim=1, keepdim=True)  # A[x] = W for a linear model, whatever the bias
    assert torch.allclose(stats.coefficients, kappa, rtol=1e-12)
    correct = kappa[torch.arange(5), labels]
    other = (kappa.sum(dim=1) - correct) / 3
    assert torch.allclose(stats.correct, correct) and torch.allclose(stats.other_mean, other)
    assert stats.ratio == pytest.approx(float(correct.mean() / other.mean()), rel=1e-12)
    expected_sum = float(weight.sum(dim=0).norm() / weight.norm(dim=1).sum())
    assert torch.allclose(stats.sum_ratio, torch.full((5,), expected_sum, dtype=torch.float64))


def test_prop5_sum_ratio_spans_zero_to_one() -> None:
    x = torch.randn(1, 8, dtype=torch.float64)
    orthonormal = torch.eye(8, dtype=torch.float64)[None]  # 8 orthonormal templates: 1 / sqrt(C)
    equal = torch.ones(1, 5, 8, dtype=torch.float64)  # equal templates: 1
    assert float(prop5_statistics(orthonormal, x, torch.tensor([0])).sum_ratio) == pytest.approx(1 / math.sqrt(8))
    assert float(prop5_statistics(equal, x, torch.tensor([0])).sum_ratio) == pytest.approx(1.0)


def test_prop5_ratio_spread_is_the_delta_method_of_the_ratio_of_means() -> None:
    # ratio_sd must equal the spread over inputs of the influence dR/dw_i of the weighted ratio
    # R(w) = sum w_i a_i / sum w_i b_i at equal weights w_i = 1 / n: checked against a finite difference of R
    torch.manual_seed(2)
    n, c, d = 30, 4, 5
    rows = torch.randn(n, c, d, dtype=torch.float64)
    x = torch.randn(n, d, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    rows[torch.arange(n), labels] += 2 * x  # correct templates lean towards x, so mean(b) stays away from 0
    stats = prop5_statistics(rows, x, labels)
    a, b = stats.correct, stats.other_mean

    def ratio(weights: torch.Tensor) -> float:
        return float((weights * a).sum() / (weights * b).sum())

    eps = 1e-6
    equal = torch.ones(n, dtype=torch.float64) / n
    influence = torch.tensor([(ratio(equal + eps * torch.eye(n, dtype=torch.float64)[i]) - stats.ratio) / eps
                              for i in range(n)], dtype=torch.float64)
    assert stats.ratio == pytest.approx(ratio(torch.ones(n, dtype=torch.float64)), rel=1e-12)
    assert stats.ratio_sd == pytest.approx(float(influence.std()), rel=1e-4)


def test_prop5_statistics_rejects_bad_input() -> None:
    rows, x = torch.randn(3, 4, 6), torch.randn(3, 6)
    with pytest.raises(ValueError, match="shape"):
        prop5_statistics(rows[:2], x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="class indices"):
        prop5_statistics(rows, x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="all zeros"):
        prop5_statistics(rows, torch.zeros(3, 6), torch.tensor([0, 1, 2]))


def test_bootstrap_overlap_sd_resamples_inputs_reproducibly() -> None:
    torch.manual_seed(3)
    correct, other = torch.randn(200) + 2, torch.randn(200, 9)
    first = bootstrap_overlap_sd(correct, other, bins=30, resamples=50, seed=0)
    assert first == bootstrap_overlap_sd(correct, other, bins=30, resamples=50, seed=0) and 0 < first < 0.2
    constant = bootstrap_overlap_sd(torch.zeros(50), torch.ones(50, 9), bins=30, resamples=20, seed=0)
    assert constant == 0.0  # two disjoint point masses: every resample has overlap 0
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_overlap_sd(correct, other, bins=30, resamples=1, seed=0)


def test_alone_share_groups_identical_codes() -> None:
    layer = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 0], [2, 0], [3, 3]], dtype=torch.uint8)
    assert alone_share([layer]) == (pytest.approx(2 / 6), 4)
    # a second layer that separates samples 0 and 1: the whole code of the two layers puts them apart
    second = torch.tensor([[0], [1], [0], [0], [0], [0]], dtype=torch.uint8)
    assert alone_share([second]) == (pytest.approx(1 / 6), 2)
    assert alone_share([layer, second]) == (pytest.approx(4 / 6), 5)
    assert alone_share([layer[:1]]) == (1.0, 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([2, 4]), st.integers(1, 9))
def test_untied_neighbours_without_ties_equal_eq15_of_the_engine(seed: int, num_states: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    units, nq, nd = 13, 6, 25
    q = torch.randint(0, num_states, (nq, units), generator=g)
    db = torch.randint(0, num_states, (nd, units), generator=g)
    db[3] = db[7]  # equal distances: the lower index comes first in both
    kind = "binary" if num_states == 2 else "argmax"

    def code(states: torch.Tensor) -> LayerCode:
        if kind == "binary":
            data = torch.from_numpy(np.packbits(states.numpy().astype(np.uint8), axis=1))
        else:
            data = states.to(torch.uint8)
        return LayerCode("layer", kind, (units,), num_states, data)

    expected = nearest_neighbors(code(q), code(db), k)
    found = untied_neighbours(q, torch.zeros_like(q, dtype=torch.bool), db, torch.zeros_like(db, dtype=torch.bool),
                              num_states, k, chunk_size=4)
    assert torch.equal(found[0], expected[0])
    assert torch.allclose(found[1], expected[1], rtol=0, atol=1e-15)


def test_untied_neighbours_leave_out_units_tied_in_either_code() -> None:
    g = torch.Generator().manual_seed(5)
    units, nq, nd, states = 10, 4, 12, 4
    q, db = torch.randint(0, states, (nq, units), generator=g), torch.randint(0, states, (nd, units), generator=g)
    q_tied, db_tied = torch.rand(nq, units, generator=g) < 0.3, torch.rand(nd, units, generator=g) < 0.3
    db_tied[0] = True  # no unit kept with any query: distance 1
    brute = torch.ones(nq, nd, dtype=torch.float64)
    for i in range(nq):
        for j in range(nd):
            kept = ~q_tied[i] & ~db_tied[j]
            if kept.any():
                brute[i, j] = 1 - float((q[i][kept] == db[j][kept]).sum()) / float(kept.sum())
    order = torch.sort(brute, dim=1, stable=True)
    indices, distances = untied_neighbours(q, q_tied, db, db_tied, states, 5)
    assert torch.equal(indices, order.indices[:, :5])
    assert torch.allclose(distances, order.values[:, :5], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="k must"):
        untied_neighbours(q, q_tied, db, db_tied, states, nd + 1)
    with pytest.raises(ValueError, match="same U"):
        untied_neighbours(q[:, :5], q_tied, db, db_tied, states, 3)


def test_figure_digit_is_the_first_of_its_class_in_file_order() -> None:
    labels = torch.tensor([3, 1, 0, 0, 7, 0])
    assert figure_digit_index(labels, 0) == 2 and figure_digit_index(labels, 7) == 4
    with pytest.raises(ValueError, match="no digit '5'"):
        figure_digit_index(labels, 5)


def test_region_pairs_need_enough_digits_of_every_class() -> None:
    labels = torch.arange(30) % 10  # three digits per class
    assert len(_pairs(labels, 20)["same"]) == 20
    with pytest.raises(ValueError, match="at least 4 digits of every class"):
        _pairs(labels, 21)
    with pytest.raises(ValueError, match="positive"):
        _pairs(labels, 0)


def test_ties_mark_pooling_windows_with_a_repeated_maximum_and_constant_ones() -> None:
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.tensor([[[[0.0, 0.0, 1.0, 1.0],     # window (0, 0): constant 0, a tie on a blank window
                        [0.0, 0.0, 0.0, 0.0],     # window (0, 1): maximum 1 twice, a tie on a non-constant window
                        [2.0, 0.0, 3.0, 3.0],     # window (1, 0): one maximum, no tie
                        [0.0, 1.0, 3.0, 3.0]]]])  # window (1, 1): constant 3
    tied, flat = _ties(model, x, chunk_size=1)
    relu, pool = list(tied)
    assert tied[pool].tolist() == [[True, True, False, True]]
    assert flat[pool].tolist() == [[True, False, False, True]]
    assert torch.equal(tied[relu], (x == 0).flatten(1))  # ReLU units with input exactly 0 sit on a boundary too
    assert relu not in flat
