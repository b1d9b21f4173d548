"""What the receptive-field experiments of 001 ch. 3 share: one training budget, one "train and test" step, seed
statistics, and the scattering baseline (kymatio's Scattering2D fed to a linear SVM, as the text does, sec. 3.2.3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..data import ArrayDataset, stratified_indices
from ..train import evaluate, seed_everything
from ._registry import RunContext

__all__ = ["RFBudget", "ScatteringSVM", "held_out", "mean_sd", "train_error", "tune_lr"]


@dataclass(frozen=True)
class RFBudget:
    """Adam with a cosine decay. The number of epochs follows the training-set size: about ``images`` training images
    seen in all, between ``min_epochs`` and ``max_epochs`` (the authors' code trains longer on smaller sets too).
    ``lr`` is the default learning rate; :func:`tune_lr` picks one per network from ``lr_grid`` on held-out digits
    (001 sec. 3.4.2: "determined on a validation set")."""

    images: int = 16_000
    min_epochs: int = 8
    max_epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_grid: tuple[float, ...] = (2e-3, 5e-3, 1e-2)

    def epochs(self, size: int) -> int:
        """Epochs for a training set of ``size`` images."""
        return int(min(self.max_epochs, max(self.min_epochs, math.ceil(self.images / max(size, 1)))))


def train_error(ctx: RunContext, name: str, build: Callable[[], nn.Module], train: ArrayDataset,
                test: ArrayDataset, budget: RFBudget, seed: int) -> tuple[float, nn.Module, float]:
    """Build a model from ``seed``, train it on ``train`` within ``budget`` and return (test error, model,
    training images per second)."""
    seed_everything(seed)
    model = build()
    epochs = budget.epochs(len(train))
    start = time.perf_counter()
    ctx.fit(name, model, train, epochs=epochs, batch_size=budget.batch_size, lr=budget.lr, optimizer="adam",
            weight_decay=budget.weight_decay, lr_schedule="cosine", seed=seed)
    speed = epochs * len(train) / max(time.perf_counter() - start, 1e-9)
    model.eval()
    return 1.0 - evaluate(model, test).accuracy, model, speed


def held_out(pool: ArrayDataset, used: torch.Tensor, size: int, seed: int) -> ArrayDataset:
    """A class-stratified validation set of ``size`` items of ``pool`` outside the indices ``used``."""
    rest = torch.ones(len(pool), dtype=torch.bool)
    rest[used] = False
    candidates = torch.nonzero(rest).flatten()
    return pool.subset(candidates[stratified_indices(pool.labels[candidates], min(size, len(candidates)), seed)])


def tune_lr(ctx: RunContext, name: str, build: Callable[[], nn.Module], train: ArrayDataset, val: ArrayDataset,
            budget: RFBudget, seed: int) -> tuple[RFBudget, dict[float, float]]:
    """The budget with the learning rate of ``budget.lr_grid`` that gives the lowest validation error (ties: the
    smaller rate), and the validation error of each rate. A grid of one rate is returned without training."""
    if len(budget.lr_grid) == 1:
        return replace(budget, lr=budget.lr_grid[0]), {}
    errors = {lr: train_error(ctx, f"{name}-lr{lr:g}", build, train, val, replace(budget, lr=lr), seed)[0]
              for lr in budget.lr_grid}
    best = min(errors, key=lambda lr: (errors[lr], lr))
    ctx.log(f"{name}: validation error per learning rate {errors}; chose {best:g}")
    return replace(budget, lr=best), errors


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


class ScatteringSVM:
    """The scattering baseline of Fig. 6: kymatio's 2-D scattering (J = 2, L = 8 orientations, order 2) of each
    image, standardised, fed to a linear SVM (libsvm's linear kernel through scikit-learn's SVC: on these few
    thousand 3,969-dimensional points it fits in seconds, where LinearSVC's solver takes minutes to converge).

    The torch frontend is imported from its module: ``kymatio.torch`` also imports the 3-D scattering, which needs
    ``scipy.special.sph_harm`` (removed in scipy 1.17).
    """

    def __init__(self, shape: tuple[int, int], J: int = 2, L: int = 8, C: float = 1.0) -> None:  # noqa: N803
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        self.transform = ScatteringTorch2D(J=J, shape=shape, L=L)
        self.J, self.L, self.C = J, L, C
        self.images_per_s = math.nan

    def features(self, data: ArrayDataset, batch: int = 500) -> np.ndarray:
        """Scattering coefficients of every image, flattened: (N, channels x (H / 2^J) x (W / 2^J))."""
        start = time.perf_counter()
        with torch.no_grad():
            out = [self.transform(data.images[i:i + batch]).flatten(1) for i in range(0, len(data), batch)]
        self.images_per_s = len(data) / max(time.perf_counter() - start, 1e-9)
        return torch.cat(out).numpy()

    def svm_error(self, features: np.ndarray, labels: np.ndarray, test_features: np.ndarray,
                  test_labels: np.ndarray) -> float:
        """Fit the standardised linear SVM on ``features`` and return its error rate on the test features."""
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        svm = make_pipeline(StandardScaler(), SVC(kernel="linear", C=self.C)).fit(features, labels)
        return float(np.mean(svm.predict(test_features) != test_labels))

    def errors(self, pool: ArrayDataset, subsets: Sequence[torch.Tensor], test: ArrayDataset) -> list[float]:
        """Test error of an SVM trained on each subset (indices into ``pool``; the features of every image some
        subset uses are computed once)."""
        needed = torch.unique(torch.cat(list(subsets)))  # sorted: a subset's rows are found by searchsorted
        pool_features, test_features = self.features(pool.subset(needed)), self.features(test)
        return [self.svm_error(pool_features[torch.searchsorted(needed, rows).numpy()], pool.labels[rows].numpy(),
                               test_features, test.labels.numpy()) for rows in subsets]
