"""``spline-orthogonal``: the orthogonal-template penalty of eq. 13 of 000 (sec. 6, Fig. 3), with the paper's protocol.

Eq. 13 adds ``lambda * sum_{c1 != c2} <W_c1, W_c2>^2`` over the rows of the last linear layer ``W`` (the class
templates' last factor) to the cross-entropy. Sec. 6 states the protocol, and this module follows it:

* **network**: largeCNN, with bias units, ReLU, max-pooling and batch-norm before each ReLU: cnnlens's ``large-cnn``
  (3x3 conv-BN-ReLU stages of ``w, w`` / ``2w, 2w`` / ``4w`` channels, each followed by a 2x2 max-pool, then a global
  average pool and the linear layer; 000 does not print largeCNN's layers, so the stage layout is cnnlens's);
* **optimiser**: Adam with an exponential learning-rate decay (:func:`cnnlens.train.fit` with
  ``lr_schedule="exponential"``: epoch ``e`` trains at ``lr * lr_decay ** e``); 000 gives neither rate;
* **inputs**: "centered to zero mean and scaled to a maximum value of one" (:func:`center_and_scale`, per input);
* **comparison**: lambda = 1 against lambda = 0, pre-registered (the claims below), each trained ``runs`` times (the
  paper: 15) from seeds ``seed, seed + 1, ...``; run ``k`` of both arms starts from the same weights and sees the
  same batches, so the penalty is the only difference. The other lambdas of Fig. 3(a) (``sweep``) are trained for
  the figure only, ``sweep_runs`` times each, and are not judged;
* **data**: CIFAR-100 (as in the paper) when ``--data-dir`` holds its files, else mnist5k; each data set has its
  own :class:`Budget` and every departure from the paper is written into the claims' setting.

Budget (full mode, at most ~25 minutes on 2 CPU cores): one mnist5k training epoch (4,000 digits, batch 64) of
``large-cnn`` measured 25 s of one core at width 64, 9.1 s at width 32 and 3.8 s at width 16. 2 x 15 runs of 10
epochs at width 64 would take over two hours; width 16 fits them, plus two sweep runs per sweep lambda, in about
1,500 s of one core (test evaluations included). A CIFAR-shaped epoch (32 x 32 x 3, 100 classes) measured 1.9 ms
of one core per training image at width 16 (mnist5k: 0.95 ms) and its test split is 10x larger, so the CIFAR-100
budget trains 8 runs per lambda on a class-stratified subset of 5,000 images (50 per class), without the sweep.

Metric suffixes name lambda: ``l0`` (0), ``l0_01`` (0.01), ``l0_1`` (0.1), ``l1`` (1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .._errors import DataUnavailableError
from ..data import (
    CIFAR100_ARCHIVE,
    CIFAR100_FILES,
    CIFAR100_FOLDER,
    CIFAR100_META,
    ArrayDataset,
    default_data_dir,
    load,
    stratified_subset,
)
from ..nn.models import get_model
from ..spline import orthogonal_penalty
from ..train import Penalty, evaluate, seed_everything
from ._claims import Claim, Greater, MeanError
from ._registry import ExperimentResult, RunContext, register_experiment

#: the pre-registered comparison of Fig. 3 (the claims read the metrics of these two arms)
JUDGED = (0.0, 1.0)
#: the paper's number of runs per lambda (000 sec. 6)
PAPER_RUNS = 15
#: width of cnnlens's paper-scale largeCNN (channels of its first stage)
PAPER_WIDTH = 64


def _suffix(lam: float) -> str:
    """Metric suffix of a lambda: 0 -> 'l0', 0.01 -> 'l0_01', 0.1 -> 'l0_1', 1 -> 'l1'."""
    return "l" + f"{lam:g}".replace(".", "_")


def center_and_scale(images: Tensor) -> Tensor:
    r"""The input preprocessing of 000 sec. 6: inputs "centered to zero mean and scaled to a maximum value of one".

    Every input ``x`` (one image, all its channels and pixels) is mapped on its own:

    .. math:: x \mapsto \frac{x - \bar x}{\max_i |x_i - \bar x|}, \qquad \bar x = \frac{1}{D} \sum_i x_i,

    so its mean is 0 and its largest absolute value is 1 (its maximum value is 1 whenever its brightest pixel lies
    further from the mean than its darkest, as on every MNIST digit). Only the image's own statistics are used, so
    the train and test splits get the same map and nothing is learnt from the test split. This per-input reading is
    also the one of the authors' released code (github.com/RandallBalestriero/DNN, ``utils.py``).

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W), floating point.

    Returns
    -------
    Tensor of the same shape and dtype (computed in float64).

    Raises
    ------
    ValueError
        An image is constant (it has no maximum deviation to scale by), or ``images`` is not (N, C, H, W).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"center_and_scale expects a floating-point image tensor of shape (N, C, H, W); received "
                         f"{getattr(images, 'dtype', type(images).__name__)} of shape "
                         f"{tuple(getattr(images, 'shape', ()))}.")
    x = images.to(torch.float64)
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    scale = centred.abs().amax(dim=(1, 2, 3), keepdim=True)
    constant = torch.nonzero(scale.flatten() == 0).flatten()
    if len(constant):
        raise ValueError(f"center_and_scale cannot scale a constant image to a maximum of one: images "
                         f"{constant[:5].tolist()} are constant; remove them from the data set.")
    return (centred / scale).to(images.dtype)


def _runs_se(std: str) -> MeanError:
    """Seed-to-seed standard error of a mean over the runs of one lambda (``std / sqrt(runs)``)."""
    return MeanError(std, "runs", over="runs, one seed each")


def _output_penalty(model: nn.Module) -> Tensor:
    """The penalty of eq. 13 on the model's last linear layer (``model.output``)."""
    return orthogonal_penalty(model.output)


@dataclass(frozen=True)
class Budget:
    """How much of the paper's protocol one data set gets.

    Attributes
    ----------
    runs : trainings per judged lambda (0 and 1); the paper: 15.
    epochs : epochs per training (000 does not state the number).
    train_size : size of a class-stratified subset of the training split (None: the whole split).
    curve_runs : runs per judged lambda whose test accuracy is measured after every epoch (Fig. 3(b)).
    sweep_runs : trainings per sweep lambda (figure only; 0 leaves the sweep out).
    """

    runs: int
    epochs: int
    train_size: int | None = None
    curve_runs: int = 1
    sweep_runs: int = 0


@dataclass(frozen=True)
class OrthogonalConfig:
    """The recipe shared by every lambda and run: largeCNN with batch-norm, Adam with exponential decay."""

    width: int = 16
    batch_size: int = 64
    lr: float = 1e-3
    lr_decay: float = 0.8
    sweep: tuple[float, ...] = (0.01, 0.1)
    mnist5k: Budget = field(default_factory=lambda: Budget(runs=15, epochs=10, curve_runs=15, sweep_runs=2))
    cifar100: Budget = field(default_factory=lambda: Budget(runs=8, epochs=10, train_size=5_000, curve_runs=1))


@dataclass(frozen=True)
class _Data:
    train: ArrayDataset
    test: ArrayDataset
    cifar100: bool
    budget: Budget
    source: str  # the data part of the claims' setting


def _cifar100_files(root: Path) -> list[Path]:
    """The CIFAR-100 files (or archive) present in the data folder ``root``."""
    folder = root / "cifar100" / CIFAR100_FOLDER
    names = [spec.filename for specs in CIFAR100_FILES.values() for spec in specs] + [CIFAR100_META.filename]
    candidates = [folder / name for name in names] + [root / "cifar100" / CIFAR100_ARCHIVE.filename]
    return [path for path in candidates if path.is_file()]


def _load_data(cfg: OrthogonalConfig, ctx: RunContext) -> _Data:
    """CIFAR-100 when the data folder holds any of its files (missing or corrupt ones are then errors), else mnist5k.

    Both are centred and scaled per input (:func:`center_and_scale`); the training split is cut to the budget's
    class-stratified ``train_size``.
    """
    root = ctx.data_dir if ctx.data_dir is not None else default_data_dir()
    present = _cifar100_files(root)
    if present:
        budget = cfg.cifar100
        try:
            train, test = (load("cifar100", split, root, transforms=[center_and_scale]) for split in ("train", "test"))
        except DataUnavailableError as err:
            found = ", ".join(path.name for path in present)
            raise DataUnavailableError(f"{root / 'cifar100'} holds part of CIFAR-100 ({found}) but not all of it: "
                                       f"{err}") from err
        name = "CIFAR-100"
    else:
        budget = cfg.mnist5k
        ctx.log(f"no CIFAR-100 files in {root / 'cifar100'} (cifar-100-python/ or {CIFAR100_ARCHIVE.filename}): "
                "spline-orthogonal runs on mnist5k instead of the paper's CIFAR-100", warn=True)
        train, test = (load("mnist5k", split, transforms=[center_and_scale]) for split in ("train", "test"))
        name = "mnist5k"
    full = len(train)
    train = stratified_subset(train, budget.train_size if budget.train_size and budget.train_size < full else None,
                              seed=ctx.seed)
    part = f"a class-stratified subset of {len(train):,} of its {full:,} training images" if len(train) < full else \
        f"all {full:,} training images"
    if present:
        source = f"CIFAR-100 as in the paper ({part}, all {len(test):,} test images)"
    else:
        source = (f"mnist5k ({part}, {len(test):,} test digits, 10 classes) for the paper's CIFAR-100 (100 "
                  f"classes): no CIFAR-100 files in --data-dir ({root})")
    ctx.log(f"{name}: {len(train):,} training / {len(test):,} test images, {train.num_classes} classes")
    return _Data(train, test, bool(present), budget, source)


def _setting(cfg: OrthogonalConfig, data: _Data, seconds_per_epoch: float) -> str:
    """The claims' setting of this run: every departure from 000 sec. 6 and why."""
    b = cfg.width
    width = (f"at width {b} (stages {b}-{b} / {2 * b}-{2 * b} / {4 * b} channels) instead of {PAPER_WIDTH}: one "
             f"mnist5k epoch of width {PAPER_WIDTH} measured 25 s of one core (width 32: 9.1 s, width 16: 3.8 s), too "
             f"slow for 2 x {data.budget.runs} runs in ~25 minutes" if b != PAPER_WIDTH else f"at width {b}")
    runs = (f"{data.budget.runs} runs per lambda as in the paper" if data.budget.runs == PAPER_RUNS else
            f"{data.budget.runs} runs per lambda instead of the paper's {PAPER_RUNS} (budget)")
    return "; ".join([
        data.source,
        f"largeCNN with batch-norm: cnnlens's large-cnn (3x3 conv-BN-ReLU, max-pools, global average pool, linear; "
        f"000 does not print largeCNN's layers) {width}",
        runs,
        f"{data.budget.epochs} epochs of batch {cfg.batch_size} (000 does not state them; this run measured "
        f"{seconds_per_epoch:.1f} s per epoch, per-epoch test evaluations included)",
        f"Adam at learning rate {cfg.lr:g} decayed by {cfg.lr_decay:g} per epoch (000: Adam with an exponential "
        "learning-rate decay, rates not stated)",
        "inputs centred to zero mean and scaled to a maximum value of one as in the paper, read per input: each "
        "image minus its mean, divided by its largest absolute value",
    ])


@register_experiment(
    "spline-orthogonal",
    title="The orthogonal-template penalty of eq. 13: largeCNN with batch-norm, lambda = 1 vs lambda = 0 (Fig. 3).",
    paper="000 sec. 6, eq. 13, Fig. 3",
    quick=OrthogonalConfig(width=8, batch_size=32, lr=3e-3, sweep=(0.1,),
                           mnist5k=Budget(runs=2, epochs=2, train_size=500, curve_runs=1, sweep_runs=1),
                           cifar100=Budget(runs=2, epochs=2, train_size=500, curve_runs=1, sweep_runs=1)),
    full=OrthogonalConfig(),
    metrics=tuple(f"{key}_{_suffix(lam)}" for lam in JUDGED
                  for key in ("acc_mean", "acc_std", "acc_max", "train_acc_mean", "gap", "gap_std", "gram_offdiag",
                              "gram_cos2", "final_train_loss"))
    + ("runs", "epochs", "width", "n_train", "n_test", "num_classes", "cifar100", "lr", "lr_decay",
       "seconds_per_epoch"),
    claims=(
        Claim("penalty-improves-accuracy", "000 sec. 6, eq. 13, Fig. 3(a)",
              "Adding lambda * sum_{c1 != c2} <W_c1, W_c2>^2 (eq. 13, on the last linear layer) to the cross-entropy "
              "improves the test accuracy of largeCNN with no change to the architecture (pre-registered: lambda = 1 "
              "vs lambda = 0, mean test accuracy over runs; judged: the difference is positive beyond two standard "
              "errors).",
              Greater("acc_mean_l1", "acc_mean_l0", _runs_se("acc_std_l1"), _runs_se("acc_std_l0"),
                      label="mean test accuracy, lambda 1 - lambda 0"),
              paper_value="higher at lambda = 1 than at 0 (Fig. 3(a), CIFAR-100, 15 runs; no number in the text)",
              setting="mnist5k for CIFAR-100 unless --data-dir holds CIFAR-100; cnnlens's large-cnn at reduced width, "
                      "fewer runs and epochs (each run records its exact setting)"),
        Claim("penalty-reduces-overfitting", "000 sec. 6, Fig. 3(b)",
              "Template orthogonality reduces overfitting (pre-registered: the train-test accuracy gap at the end of "
              "training, train accuracy measured in eval mode on the whole training set, mean over runs, is smaller "
              "at lambda = 1 than at lambda = 0; judged: beyond two standard errors).",
              Greater("gap_l0", "gap_l1", _runs_se("gap_std_l0"), _runs_se("gap_std_l1"),
                      label="train-test accuracy gap, lambda 0 - lambda 1"),
              paper_value="smaller at lambda = 1 (000 sec. 6 text; no number)",
              setting="mnist5k for CIFAR-100 unless --data-dir holds CIFAR-100; cnnlens's large-cnn at reduced width, "
                      "fewer runs and epochs (each run records its exact setting)"),
    ),
)
def run(cfg: OrthogonalConfig, ctx: RunContext) -> ExperimentResult:
    """Train ``runs`` largeCNNs at lambda = 0 and at lambda = 1 (and the sweep), compare accuracy, gap, Gram energy."""
    _check(cfg)
    data = _load_data(cfg, ctx)
    budget = data.budget
    train, test = data.train, data.test
    channels, classes = train.images.shape[1], train.num_classes
    lambdas = tuple(sorted(JUDGED + tuple(cfg.sweep)))
    arms: dict[float, dict[str, list]] = {}
    seconds, epochs_trained = 0.0, 0
    for lam in lambdas:
        runs = budget.runs if lam in JUDGED else budget.sweep_runs
        arm = arms.setdefault(lam, {k: [] for k in ("test", "train", "gram", "cos2", "loss", "curve_acc",
                                                     "curve_loss")})
        for k in range(runs):
            seed = ctx.seed + k
            seed_everything(seed)
            model = get_model("large-cnn", num_classes=classes, in_channels=channels, width=cfg.width)
            extra = {"orthogonal": Penalty(_output_penalty, weight=lam)} if lam > 0 else None
            with_curve = lam in JUDGED and k < budget.curve_runs
            start = time.perf_counter()
            result = ctx.fit(f"large-cnn lambda {lam:g} run {k + 1} of {runs}", model, train, epochs=budget.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam", lr_schedule="exponential",
                             lr_decay=cfg.lr_decay, seed=seed, extra_losses=extra,
                             eval_data=test if with_curve else None)
            if result.resumed_from_epoch < budget.epochs:
                seconds += time.perf_counter() - start
                epochs_trained += budget.epochs - result.resumed_from_epoch
            arm["test"].append(evaluate(model, test).accuracy)
            arm["train"].append(evaluate(model, train).accuracy)
            arm["loss"].append(result.history[-1]["train_loss"])
            with torch.no_grad():
                weight = model.output.weight.double()
                arm["gram"].append(orthogonal_penalty(weight).item())
                unit = weight / weight.norm(dim=1, keepdim=True)
                arm["cos2"].append(orthogonal_penalty(unit).item() / (classes * (classes - 1)))
            if with_curve:
                arm["curve_acc"].append([h["eval_acc"] for h in result.history])
                arm["curve_loss"].append([h["train_loss"] for h in result.history])
            ctx.log(f"lambda {lam:g} run {k + 1}/{runs} (seed {seed}): test {arm['test'][-1]:.4f} train "
                    f"{arm['train'][-1]:.4f} eq. 13 energy {arm['gram'][-1]:.4g}")
    seconds_per_epoch = seconds / epochs_trained if epochs_trained else float("nan")
    metrics = _metrics(arms)
    metrics.update(runs=float(budget.runs), epochs=float(budget.epochs), width=float(cfg.width),
                   n_train=float(len(train)), n_test=float(len(test)), num_classes=float(classes),
                   cifar100=float(data.cifar100), lr=cfg.lr, lr_decay=cfg.lr_decay,
                   seconds_per_epoch=seconds_per_epoch, sweep_runs=float(budget.sweep_runs))
    setting = _setting(cfg, data, seconds_per_epoch)
    name = "CIFAR-100" if data.cifar100 else "mnist5k"
    figure = _figure(arms, title=f"large-cnn (width {cfg.width}, batch-norm) on {name} ({len(train):,} training "
                                 f"images), eq. 13 of 000")
    return ExperimentResult(metrics, {"lambda_sweep": figure}, _notes(arms, metrics, name),
                            settings={"penalty-improves-accuracy": setting, "penalty-reduces-overfitting": setting})


def _check(cfg: OrthogonalConfig) -> None:
    for label, budget in (("mnist5k", cfg.mnist5k), ("cifar100", cfg.cifar100)):
        if budget.runs < 2 or budget.epochs < 1 or not 0 <= budget.curve_runs <= budget.runs or budget.sweep_runs < 0:
            raise ValueError(f"spline-orthogonal's {label} budget needs runs >= 2 (a seed-to-seed standard error), "
                             f"epochs >= 1, 0 <= curve_runs <= runs and sweep_runs >= 0; received {budget}.")
    bad = [lam for lam in cfg.sweep if not lam > 0 or lam in JUDGED]
    if bad:
        raise ValueError(f"spline-orthogonal's sweep lambdas must be positive and differ from the judged {JUDGED}; "
                         f"received sweep={cfg.sweep}.")


def _metrics(arms: dict[float, dict[str, list]]) -> dict[str, float]:
    """Per lambda: mean / sample std / max of test accuracy, train accuracy, gap, Gram energy, last training loss."""
    metrics: dict[str, float] = {}
    for lam, arm in arms.items():
        if not arm["test"]:
            continue
        s = _suffix(lam)
        test, train = np.asarray(arm["test"]), np.asarray(arm["train"])
        metrics[f"acc_mean_{s}"] = float(test.mean())
        metrics[f"acc_std_{s}"] = _sample_std(test)
        metrics[f"acc_max_{s}"] = float(test.max())
        metrics[f"train_acc_mean_{s}"] = float(train.mean())
        metrics[f"gap_{s}"] = float((train - test).mean())
        metrics[f"gap_std_{s}"] = _sample_std(train - test)
        metrics[f"gram_offdiag_{s}"] = float(np.mean(arm["gram"]))
        metrics[f"gram_cos2_{s}"] = float(np.mean(arm["cos2"]))
        metrics[f"final_train_loss_{s}"] = float(np.mean(arm["loss"]))
    return metrics


def _sample_std(values: np.ndarray) -> float:
    """Sample standard deviation (ddof 1); NaN (written as null, so no claim reads it as 0) for a single run."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _figure(arms: dict[float, dict[str, list]], *, title: str) -> Figure:
    """Fig. 3 of 000: (a) test accuracy per lambda (mean, +-1 std band, max over runs); (b) the mean training loss
    and test accuracy per epoch at lambda = 0 (blue) and 1 (black)."""
    lambdas = [lam for lam in sorted(arms) if arms[lam]["test"]]
    fig = Figure(figsize=(10.0, 3.4))
    ax_sweep, ax_loss, ax_acc = fig.subplots(1, 3)
    positions = np.arange(len(lambdas))
    mean = np.array([np.mean(arms[lam]["test"]) for lam in lambdas])
    std = np.array([np.std(arms[lam]["test"], ddof=1) if len(arms[lam]["test"]) > 1 else 0.0 for lam in lambdas])
    ax_sweep.fill_between(positions, mean - std, mean + std, color="0.85", label="mean +- std")
    ax_sweep.plot(positions, mean, "ko", label="mean")
    ax_sweep.plot(positions, [max(arms[lam]["test"]) for lam in lambdas], "o", color="tab:blue", label="max")
    ax_sweep.set_xticks(positions, [f"{lam:g}\n{len(arms[lam]['test'])} runs" + ("" if lam in JUDGED else "\n(sweep)")
                                    for lam in lambdas], fontsize=7)
    ax_sweep.set(xlabel="lambda (eq. 13); judged: 0 vs 1", ylabel="test accuracy", title="(a) test accuracy")
    ax_sweep.legend(fontsize=7)
    for lam, colour in zip(JUDGED, ("tab:blue", "black"), strict=True):
        curves = arms.get(lam, {}).get("curve_acc", [])
        if curves:
            epochs = np.arange(1, len(curves[0]) + 1)
            ax_loss.plot(epochs, np.mean(arms[lam]["curve_loss"], axis=0), color=colour, label=f"lambda {lam:g}")
            ax_acc.plot(epochs, np.mean(curves, axis=0), color=colour,
                        label=f"lambda {lam:g} (mean of {len(curves)} runs)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (running, in epoch)", title="(b) training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="(b) test accuracy during learning")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _notes(arms: dict[float, dict[str, list]], m: dict[str, float], name: str) -> str:
    """The reading of the measured numbers; every sentence that states an outcome is conditioned on them."""
    runs = int(m["runs"])
    lines = [f"large-cnn of width {int(m['width'])} with batch-norm, trained {runs} times per lambda for "
             f"{int(m['epochs'])} epochs on {int(m['n_train']):,} {name} training images ({int(m['num_classes'])} "
             f"classes), tested on {int(m['n_test']):,}."]
    diff = m["acc_mean_l1"] - m["acc_mean_l0"]
    band = 2 * np.sqrt((m["acc_std_l0"] ** 2 + m["acc_std_l1"] ** 2) / runs)
    lines.append(f"Mean test accuracy: {m['acc_mean_l0']:.2%} at lambda 0, {m['acc_mean_l1']:.2%} at lambda 1 "
                 f"(difference {diff:+.2%}, two standard errors {band:.2%}).")
    if diff - band > 0:
        lines.append("The difference is positive beyond two standard errors, the direction of Fig. 3(a).")
    elif diff + band < 0:
        lines.append("The difference is negative beyond two standard errors, against the direction of Fig. 3(a).")
    else:
        lines.append("The two-standard-error band of the difference contains zero: these runs do not separate the "
                     "two arms.")
    fell = "falls" if m["gram_offdiag_l1"] < m["gram_offdiag_l0"] else "does not fall"
    lines.append(f"The last layer's off-diagonal Gram energy (eq. 13's sum) {fell} from {m['gram_offdiag_l0']:.3g} "
                 f"at lambda 0 to {m['gram_offdiag_l1']:.3g} at lambda 1 (mean squared cosine between class rows "
                 f"{m['gram_cos2_l0']:.3g} -> {m['gram_cos2_l1']:.3g}).")
    lines.append(f"Train accuracy (eval mode, whole training set) {m['train_acc_mean_l0']:.2%} / "
                 f"{m['train_acc_mean_l1']:.2%}, train-test gap {m['gap_l0']:+.2%} / {m['gap_l1']:+.2%} at lambda "
                 "0 / 1.")
    if min(m["train_acc_mean_l0"], m["train_acc_mean_l1"]) >= 0.999:
        lines.append("Both arms fit the training set (train accuracy >= 99.9%), so the gap is one minus the test "
                     "accuracy and the overfitting claim is decided by nearly the same numbers as the accuracy claim.")
    sweep = [lam for lam in sorted(arms) if lam not in JUDGED and arms[lam]["test"]]
    if sweep:
        lines.append("Sweep, not judged: " + ", ".join(
            f"lambda {lam:g}: {np.mean(arms[lam]['test']):.2%} ({len(arms[lam]['test'])} runs)" for lam in sweep) + ".")
    return " ".join(lines)
