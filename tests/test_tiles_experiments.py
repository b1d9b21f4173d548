"""The tiles experiments (002 sec. 6) at full scale: slow, run with ``pytest -m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlens.experiments import RunContext, get_experiment


@pytest.mark.slow
def test_tiles_squares_full_reproduces_sec_6_1(tmp_path: Path):
    exp = get_experiment("tiles-squares")
    result = exp.fn(exp.full, RunContext(out_dir=tmp_path, progress=False))
    assert result.metrics["acc_shallow"] == 1.0 and result.metrics["acc_deep"] == 1.0
    assert result.metrics["acc_trained"] >= 0.9  # paper: about 95%
    assert result.metrics["acc_trained_wide"] >= result.metrics["acc_trained"]
    assert "conv1.weight" in result.notes


@pytest.mark.slow
def test_tiles_digits_full_reproduces_sec_6_2(tmp_path: Path):
    exp = get_experiment("tiles-digits")
    metrics = exp.fn(exp.full, RunContext(out_dir=tmp_path, progress=False)).metrics
    assert metrics["acc_shallow"] == 1.0 and metrics["acc_deep"] == 1.0
    assert metrics["acc_trained"] >= 0.95  # paper: over 99%
    assert metrics["logit_std_translation_trained"] > metrics["logit_std_background_trained"]
    assert metrics["logit_std_background_shallow"] <= 1e-5 and metrics["logit_std_translation_shallow"] <= 1e-5
    assert metrics["selectivity_shallow"] == 1.0 and metrics["selectivity_trained"] < 0.5


def test_digit_tiles_fall_back_to_mnist5k_and_are_quantised(tmp_path: Path):
    from cnnlens.experiments.tiles_digits import _source, digit_class

    ctx = RunContext(out_dir=tmp_path, data_dir=tmp_path / "no-data")
    source = _source(ctx)
    assert source.name == "mnist5k" and "no Fashion-MNIST" in ctx.log_lines[0]
    image_class = digit_class(source, 2, 8, 4.0, seed=0)
    assert image_class.names == tuple(str(d) for d in range(10)) and len(image_class.tiles) == 20
    for _, tile in image_class.tiles:
        assert tile.shape == (28, 28)
        assert torch.equal(tile.t * 8, torch.round(tile.t * 8))  # 8 grey levels
    again = digit_class(source, 2, 8, 4.0, seed=0)
    assert all(torch.equal(a.t, b.t) for (_, a), (_, b) in zip(image_class.tiles, again.tiles, strict=True))
