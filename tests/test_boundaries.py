"""Boundary read-outs of 001 ch. 4: the gradient-magnitude rule and the ODS / OIS boundary F-score."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlens.data import boundary_blobs
from cnnlens.experiments._boundaries import boundary_f_score, gradient_magnitude


def _targets() -> torch.Tensor:
    return boundary_blobs(6, "I", size=48, seed=0).boundaries


def test_perfect_prediction_scores_one_and_empty_scores_zero():
    target = _targets()
    assert boundary_f_score(target.float(), target).ods == pytest.approx(1.0)
    assert boundary_f_score(target.float(), target).ois == pytest.approx(1.0)
    assert boundary_f_score(torch.zeros(target.shape), target).ods == 0.0


def test_tolerance_forgives_a_one_pixel_shift_only():
    target = _targets()
    shifted = torch.roll(target, 1, dims=3).float()
    assert boundary_f_score(shifted, target, tolerance=1).ods == pytest.approx(1.0)
    assert boundary_f_score(shifted, target, tolerance=0).ods < 0.7


def test_ods_is_a_harmonic_mean_of_its_precision_and_recall():
    torch.manual_seed(0)
    target = _targets()
    score = boundary_f_score(target.float() + 0.6 * torch.rand(target.shape), target)
    assert score.ods == pytest.approx(2 * score.precision * score.recall / (score.precision + score.recall))
    assert score.ois >= score.ods - 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_magnitude_is_the_max_over_steered_first_derivatives(dtype):
    """sqrt(Gx^2 + Gy^2) equals max over theta of |cos Gx + sin Gy| (eq. 22 at first order), sampled finely."""
    from cnnlens.nn import gaussian_derivative_basis

    images = boundary_blobs(2, "II", size=32, seed=0).images.to(dtype)
    basis = gaussian_derivative_basis(1, 1.0, dtype=dtype).filters[1:3].flip((1, 2)).unsqueeze(1)
    gx, gy = torch.nn.functional.conv2d(images, basis, padding=basis.shape[-1] // 2).unbind(1)
    thetas = torch.linspace(0, 2 * math.pi, 3601, dtype=dtype)
    steered = (torch.cos(thetas)[:, None, None, None] * gx + torch.sin(thetas)[:, None, None, None] * gy).abs()
    magnitude = gradient_magnitude(images)[:, 0]
    assert (steered.amax(0) - magnitude).abs().max() <= 2e-6 * magnitude.max()
    assert (steered.amax(0) <= magnitude * (1 + 1e-6) + 1e-12).all()


def test_gradient_rule_finds_binary_boundaries():
    data = boundary_blobs(10, "I", size=64, seed=0)
    assert boundary_f_score(gradient_magnitude(data.images), data.boundaries).ods > 0.8


def test_f_score_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, 1, H, W\)"):
        boundary_f_score(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        boundary_f_score(torch.full((1, 1, 8, 8), float("nan")), torch.zeros(1, 1, 8, 8, dtype=torch.bool))


def test_bootstrap_se_of_the_ods_shrinks_with_more_images():
    torch.manual_seed(0)
    small, large = (boundary_blobs(n, "I", size=32, seed=0) for n in (8, 64))
    se = [boundary_f_score(d.boundaries.float() + 1.5 * torch.rand(d.boundaries.shape), d.boundaries,
                           resamples=200).ods_se for d in (small, large)]
    assert 0 < se[1] < se[0]


def test_static_baseline_has_about_the_dynamic_blocks_parameter_count():
    from cnnlens.experiments._boundaries import num_parameters as _parameters
    from cnnlens.experiments.steerable_blobs import dynamic_block, static_network

    for width in (8, 16, 32):
        dynamic = _parameters(dynamic_block(width))
        static = _parameters(static_network(dynamic))
        assert abs(static - dynamic) / dynamic < 0.15, (width, dynamic, static)
