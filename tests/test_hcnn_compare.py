"""The ``hcnn`` experiment's comparison: the parameters a plain CNN needs to reach the HCNN's accuracy (interpolated
in log-parameters along the CNN family), checked against numpy's interpolation; the CIFAR-100 arm's networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.experiments._hcnn import HCNNArch, HCNNData
from cnnlens.experiments.hcnn import _plain_cnn, _to_match


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 0.95), min_size=2, max_size=6, unique=True), st.floats(0.0, 1.0),
       st.integers(100, 10_000), st.data())
def test_to_match_is_the_log_parameter_interpolation(accs: list[float], where: float, n: int,
                                                     data: st.DataObject) -> None:
    """On an increasing curve, a target inside its accuracy range gives 10 ** np.interp(target, acc, log10 p)."""
    accs = sorted(accs)
    params = sorted(data.draw(st.lists(st.integers(100, 10**6), min_size=len(accs), max_size=len(accs),
                                       unique=True)))
    target = min(accs[0] + where * (accs[-1] - accs[0]), accs[-1])  # (where = 1 can round one ulp past the curve)
    if target <= accs[0]:
        target = math.nextafter(accs[0], 1.0)
    curve = list(zip(map(float, params), accs, strict=True))[::-1]  # any order
    found, se, bracket = _to_match(curve, target, n)
    expected = 10 ** np.interp(target, accs, np.log10(params))
    assert bracket == 0 and found == pytest.approx(expected, rel=1e-9)
    i = int(np.searchsorted(accs, target))  # the first width reaching the target
    slope = (math.log10(params[i]) - math.log10(params[i - 1])) / (accs[i] - accs[i - 1])
    p = (target * n + 1) / (n + 2)
    assert se == pytest.approx(slope * math.sqrt(2 * p * (1 - p) / n), rel=1e-9)


def test_to_match_outside_the_curve_is_a_bound() -> None:
    curve = [(700.0, 0.80), (2500.0, 0.90), (9700.0, 0.95)]
    assert _to_match(curve, 0.70, 1000)[::2] == (pytest.approx(700.0), -1)    # narrowest already better: upper bound
    assert _to_match(curve, 0.99, 1000)[::2] == (pytest.approx(9700.0), 1)    # none reaches it: lower bound
    assert _to_match(curve, 0.90, 1000)[::2] == (pytest.approx(2500.0), 0)    # reached exactly at a width
    assert _to_match([(1.0, 0.9), (10.0, 0.8)], 0.95, 1000)[1] is None       # a falling segment has no slope


def test_cifar100_arm_networks_give_100_logits() -> None:
    """The CPU-sized HCNN and the plain CNN, built for CIFAR-100's 3 channels and 100 classes, read 32 x 32."""
    images = torch.zeros(2, 3, 32, 32)
    data = HCNNData(None, None, 3, 100, "CIFAR-100")  # type: ignore[arg-type]
    hcnn, cnn = HCNNArch().build(data), _plain_cnn(8, data)
    assert hcnn.eval()(images).shape == (2, 100) and cnn.eval()(images).shape == (2, 100)
