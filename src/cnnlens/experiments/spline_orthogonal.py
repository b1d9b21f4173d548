"""``spline-orthogonal``: the orthogonal-template penalty of eq. 13 of 000 (Fig. 3), swept over lambda and seeds.

For every lambda in {0, 0.01, 0.1, 1} the same network is trained from the same seeds with the same data, optimiser
and budget; only the penalty ``lambda * sum_{c1 != c2} <W_c1, W_c2>^2`` on the last linear layer changes. Reported
per lambda: test accuracy mean and std over seeds, the train-test gap and the off-diagonal Gram energy of the
final classifier. Metric suffixes name lambda: ``l0`` (0), ``l0_01`` (0.01), ``l0_1`` (0.1), ``l1`` (1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..nn.models import get_model
from ..spline import orthogonal_penalty, plot_lambda_sweep
from ..train import Penalty, evaluate, seed_everything
from ._claims import Claim, Greater, MeanError
from ._recipes import load_digits, transforms_for
from ._registry import ExperimentResult, RunContext, register_experiment

LAMBDAS = (0.0, 0.01, 0.1, 1.0)


def _suffix(lam: float) -> str:
    """Metric suffix of a lambda: 0 -> 'l0', 0.01 -> 'l0_01', 0.1 -> 'l0_1', 1 -> 'l1'."""
    return "l" + f"{lam:g}".replace(".", "_")


def _output_penalty(model: nn.Module) -> torch.Tensor:
    """The penalty of eq. 13 on the model's last linear layer (``model.output``)."""
    return orthogonal_penalty(model.output)


def _arm(lam: float) -> MeanError:
    return MeanError(f"acc_std_{_suffix(lam)}", "seeds", "seeds")


@dataclass(frozen=True)
class OrthogonalConfig:
    """One training recipe shared by every lambda (Adam as in sec. 6 of 000; no learning-rate decay)."""

    model: str = "lenet5"
    epochs: int = 20
    seeds: int = 5
    train_size: int | None = None  # None: all 4,000 mnist5k training digits
    batch_size: int = 64
    lr: float = 2e-3
    lambdas: tuple[float, ...] = LAMBDAS


@register_experiment(
    "spline-orthogonal",
    title="The orthogonal-template penalty of eq. 13, swept over lambda and seeds (Fig. 3).",
    paper="000 sec. 6, eq. 13, Fig. 3",
    quick=OrthogonalConfig(epochs=2, seeds=3, train_size=1000),
    full=OrthogonalConfig(epochs=20, seeds=5),
    metrics=tuple(f"{key}_{_suffix(lam)}" for lam in LAMBDAS for key in ("acc_mean", "acc_std", "gap", "gram_offdiag",
                                                                          "gap_std")) + ("seeds",),
    claims=(
        Claim("penalty-improves-accuracy", "000 sec. 6, eq. 13, Fig. 3(a)",
              "Adding lambda * sum_{c1 != c2} <W_c1, W_c2>^2 to the cross-entropy significantly improves test "
              "accuracy with no change to the architecture (pre-registered comparison: lambda = 1 vs lambda = 0, "
              "mean over seeds).",
              Greater("acc_mean_l1", "acc_mean_l0", _arm(1.0), _arm(0.0),
                      label="mean test accuracy, lambda 1 - lambda 0"),
              setting="LeNet-5 on mnist5k, Adam at a constant learning rate, for the paper's largeCNN with "
                      "batch-norm on CIFAR-100 (15 runs per lambda)"),
        Claim("penalty-reduces-overfitting", "000 sec. 6, Fig. 3(b)",
              "Template orthogonality reduces overfitting (pre-registered: the train-test accuracy gap at "
              "lambda = 1 is smaller than at lambda = 0).",
              Greater("gap_l0", "gap_l1", MeanError("gap_std_l0", "seeds"), MeanError("gap_std_l1", "seeds"),
                      label="train-test gap, lambda 0 - lambda 1"),
              setting="LeNet-5 on mnist5k, Adam at a constant learning rate, for the paper's largeCNN with "
                      "batch-norm on CIFAR-100"),
    ),
)
def run(cfg: OrthogonalConfig, ctx: RunContext) -> ExperimentResult:
    """Train ``cfg.seeds`` networks per lambda and compare test accuracy, gap and Gram off-diagonal energy."""
    if len(cfg.lambdas) < 2 or cfg.lambdas[0] != 0 or cfg.seeds < 1:
        raise ValueError(
            f"spline-orthogonal needs lambdas starting with the unpenalised 0 followed by penalised values, and at "
            f"least one seed; received lambdas={cfg.lambdas}, seeds={cfg.seeds}."
        )
    digits = load_digits(ctx, train_size=cfg.train_size, transforms=transforms_for(cfg.model))
    train, test = digits.train, digits.test
    test_acc = np.zeros((len(cfg.lambdas), cfg.seeds))
    train_acc = np.zeros_like(test_acc)
    gram = np.zeros_like(test_acc)
    cosine = np.zeros_like(test_acc)
    curves: dict[str, list[float]] = {}
    for i, lam in enumerate(cfg.lambdas):
        for s in range(cfg.seeds):
            seed = ctx.seed + s
            seed_everything(seed)
            model = get_model(cfg.model, num_classes=10)
            extra = {"orthogonal": Penalty(_output_penalty, weight=lam)} if lam > 0 else None
            with_curves = s == 0 and lam in (min(cfg.lambdas), max(cfg.lambdas))
            result = ctx.fit(f"{cfg.model} lambda {lam:g} seed {seed}", model, train, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam", seed=seed, extra_losses=extra,
                             eval_data=test if with_curves else None)
            test_acc[i, s] = evaluate(model, test).accuracy
            train_acc[i, s] = evaluate(model, train).accuracy
            with torch.no_grad():
                weight = model.output.weight.double()
                gram[i, s] = orthogonal_penalty(weight).item()
                unit = weight / weight.norm(dim=1, keepdim=True)
                cosine[i, s] = orthogonal_penalty(unit).item() / (weight.shape[0] * (weight.shape[0] - 1))
            if with_curves:
                curves[f"test acc, lambda {lam:g}"] = [h["eval_acc"] for h in result.history]
                curves[f"train acc (running, in epoch), lambda {lam:g}"] = [h["train_acc"] for h in result.history]
            ctx.log(f"lambda {lam:g} seed {seed}: test {test_acc[i, s]:.4f} train {train_acc[i, s]:.4f} "
                    f"gram off-diagonal {gram[i, s]:.4g}")

    ddof = 1 if cfg.seeds > 1 else 0
    metrics: dict[str, float] = {}
    for i, lam in enumerate(cfg.lambdas):
        suffix = _suffix(lam)
        metrics[f"acc_mean_{suffix}"] = float(test_acc[i].mean())
        metrics[f"acc_std_{suffix}"] = float(test_acc[i].std(ddof=ddof))
        metrics[f"acc_max_{suffix}"] = float(test_acc[i].max())
        metrics[f"gap_{suffix}"] = float((train_acc[i] - test_acc[i]).mean())
        metrics[f"gap_std_{suffix}"] = float((train_acc[i] - test_acc[i]).std(ddof=ddof))
        metrics[f"gram_offdiag_{suffix}"] = float(gram[i].mean())
        metrics[f"gram_cos2_{suffix}"] = float(cosine[i].mean())
    metrics["seeds"] = float(cfg.seeds)
    metrics["epochs"] = float(cfg.epochs)
    figure = plot_lambda_sweep(cfg.lambdas, test_acc, curves=curves,
                               title=f"{cfg.model} on mnist5k ({len(train)} train digits), eq. 13 of 000")
    return ExperimentResult(metrics, {"lambda_sweep": figure}, _notes(cfg, test_acc, train_acc, gram, len(train)))


def _notes(cfg: OrthogonalConfig, test_acc: np.ndarray, train_acc: np.ndarray, gram: np.ndarray, n: int) -> str:
    """The honest reading of the sweep, computed from the numbers."""
    base = test_acc[0].mean()
    stderr = np.sqrt(test_acc.var(axis=1, ddof=1 if cfg.seeds > 1 else 0).mean() * 2 / cfg.seeds)
    best = 1 + int(np.argmax(test_acc[1:].mean(axis=1)))  # the best penalised run (lambdas[0] is 0)
    gain = test_acc[best].mean() - base
    gaps = (train_acc - test_acc).mean(axis=1)
    lines = [
        f"{cfg.model} trained {cfg.seeds} times per lambda for {cfg.epochs} epochs with Adam on {n} mnist5k digits.",
        "Test accuracy (mean over seeds) per lambda: "
        + ", ".join(f"{lam:g}: {m:.2%}" for lam, m in zip(cfg.lambdas, test_acc.mean(axis=1), strict=True)) + ".",
        "Off-diagonal Gram energy of the last layer falls from "
        f"{gram[0].mean():.3g} (lambda 0) to {gram[-1].mean():.3g} (lambda {cfg.lambdas[-1]:g}): the penalty does "
        "make the class templates' last factor nearly orthogonal.",
        "Train-test gap per lambda: "
        + ", ".join(f"{lam:g}: {g:+.2%}" for lam, g in zip(cfg.lambdas, gaps, strict=True)) + ".",
    ]
    if base < 0.95:
        lines.append(
            f"The networks are under-trained in this configuration ({base:.1%} test accuracy at lambda 0; the quick "
            "mode trains for seconds), so the comparison is only indicative; run the full configuration."
        )
    if gain <= 2 * stderr:
        lines.append(
            f"The paper's accuracy gain does NOT reproduce here: the best penalised run (lambda "
            f"{cfg.lambdas[best]:g}) changes the mean test accuracy by {gain:+.2%} against lambda 0, within two "
            f"standard errors ({2 * stderr:.2%}) of the seed-to-seed noise. With 10 classes "
            "and an 84-dimensional last feature space, 10 nearly orthogonal rows are easy to reach with little "
            "change to the features (the penalty drops quickly at every lambda > 0), so the constraint costs and "
            "gives little; the paper's gains were measured on CIFAR100 (100 class rows competing in a larger "
            "network, 15 runs per point), where the penalty changes the classifier much more."
        )
    else:
        lines.append(
            f"A gain is visible: lambda {cfg.lambdas[best]:g} improves the mean test accuracy by {gain:+.2%}, more "
            f"than two standard errors ({2 * stderr:.2%}) of the seed noise, in the direction the paper reports."
        )
    return " ".join(lines)
