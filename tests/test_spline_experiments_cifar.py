"""spline-bimodality's MNIST-vs-CIFAR-10 claim (Fig. 2's caption): measured when CIFAR-10 loads, inconclusive with
the reason when it does not. CIFAR-10 is replaced by random RGB images (the claim's code path, not its outcome)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlens import DataUnavailableError
from cnnlens.data import ArrayDataset
from cnnlens.experiments import _recipes, run_experiment

TINY = {"model": "lenet5", "epochs": 1, "train_size": 200, "batch_size": 50, "analysed": 40, "bootstrap": 10}


_REAL_LOAD = _recipes.load


def _fake_cifar(name: str, split: str, data_dir: object = None, **kwargs: object) -> ArrayDataset:
    if name != "cifar10":
        return _REAL_LOAD(name, split, data_dir, **kwargs)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 300 if split == "train" else 100
    return ArrayDataset(torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10, 10, "cifar10", split)


def _missing(name: str, split: str, data_dir: object = None, **kwargs: object) -> ArrayDataset:
    if name != "cifar10":
        return _REAL_LOAD(name, split, data_dir, **kwargs)
    raise DataUnavailableError("data set 'cifar10' needs files that are not in /nowhere/cifar10:\n  - data_batch_1")


@pytest.mark.parametrize("present", [True, False], ids=["cifar10-present", "cifar10-missing"])
def test_mnist_vs_cifar10_claim(present: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_recipes, "load", _fake_cifar if present else _missing)  # CIFAR-10 only; the rest is real
    run_dir = run_experiment("spline-bimodality", tmp_path, progress=False, overrides=TINY)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    claim = next(c for c in json.loads((run_dir / "claims.json").read_text()) if c["id"] == "mnist-more-bimodal")
    record = json.loads((run_dir / "result.json").read_text())
    if present:
        assert 0 <= metrics["bimodality_overlap_cifar10"] <= 1 and metrics["bimodality_overlap_boot_sd_cifar10"] > 0
        assert claim["measured"] == pytest.approx(metrics["bimodality_overlap_cifar10"]
                                                  - metrics["bimodality_overlap"])
        assert "not measured" not in claim["why"]
        assert record["training_sets"]["lenet5-cifar10"]["size"] == 200  # as many images as MNIST digits
        assert any("cifar10_train" in f for f in record["figures"])
    else:
        assert metrics.get("bimodality_overlap_cifar10") is None
        assert claim["verdict"] == "inconclusive" and "no CIFAR-10 files in the data folder" in claim["why"]
    assert "lenet5 for the paper's largeCNN" in claim["setting"]
