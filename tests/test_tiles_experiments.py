"""The tiles experiments (002 sec. 6) at full scale: slow, run with ``pytest -m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

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
