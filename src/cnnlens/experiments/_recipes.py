"""Recipes the experiments share: which digits to load, how a reference network is trained on them.

One place for "load the digits, take a stratified training subset, build the network from a seed, train it": the
RECOS experiments train LeNet-5 with SGD on MNIST (full MNIST when its files are present, else mnist5k), the spline
experiments train their networks with Adam on mnist5k.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._errors import DataUnavailableError
from ..data import ArrayDataset, default_data_dir, load, stratified_subset
from ..nn.models import get_model
from ..train import evaluate, seed_everything
from ._registry import RunContext

__all__ = ["AdamBudget", "Digits", "LeNetBudget", "Trained", "load_cifar10", "load_cifar100", "load_digits",
           "train_adam", "train_sgd", "transforms_for"]


_MNIST_TRAIN = 60_000  # digits in MNIST's training split


@dataclass(frozen=True)
class Digits:
    """Training and test digits and a sentence saying which (the claims' setting quotes it)."""

    train: ArrayDataset
    test: ArrayDataset
    description: str
    full_mnist: bool
    why_not_full: str = ""

    def setting(self, departures: str = "") -> str:
        """A claim's setting on these digits, for ``ExperimentResult.settings``: full MNIST is the paper's data;
        otherwise the substitution and its reason (``why_not_full``). ``departures`` appends the experiment's other
        departures from the paper."""
        if self.full_mnist and len(self.train) == _MNIST_TRAIN:
            data = f"as in the paper: full MNIST ({self.description})"
        elif self.full_mnist:
            data = f"{self.description}: fewer training digits than MNIST's 60,000"
        else:
            data = f"{self.description} for MNIST's 60,000 / 10,000 digits ({self.why_not_full})"
        return f"{data}; {departures}" if departures else data


def transforms_for(model: str) -> tuple[str, ...]:
    """LeNet-5 reads 32 x 32 digits (``pad32``); the other reference CNNs read MNIST's 28 x 28."""
    return ("pad32",) if model == "lenet5" else ()


def load_digits(ctx: RunContext, *, full_mnist: bool = False, train_size: int | None = None,
                transforms: tuple[str, ...] = ("pad32",), name: str = "mnist5k") -> Digits:
    """Digits for an experiment: full MNIST when asked and its files are present, else ``name`` (mnist5k).

    A fall-back from full MNIST is printed (not only logged). ``train_size`` takes a class-stratified subset of the
    training split (:func:`cnnlens.data.stratified_subset`, seeded with the run's seed).
    """
    train = test = None
    used = name
    why = f"the configuration asks for {name}"
    if full_mnist and name == "mnist5k":
        try:
            train = load("mnist", "train", ctx.data_dir, transforms=transforms)
            test = load("mnist", "test", ctx.data_dir, transforms=transforms)
            used = "mnist"
        except DataUnavailableError as err:
            why = "no full MNIST files in the data folder"
            folder = ctx.data_dir if ctx.data_dir is not None else default_data_dir()
            ctx.log(f"full MNIST is not in {folder / 'mnist'}, so this run uses mnist5k (4,000 / 1,000 real digits) "
                    "instead; the run's log says which files to put there", warn=True)
            ctx.log(f"full MNIST: {err}")
    if train is None or test is None:
        train = load(name, "train", ctx.data_dir, transforms=transforms)
        test = load(name, "test", ctx.data_dir, transforms=transforms)
    full_size = len(train)
    train = stratified_subset(train, None if train_size is None or train_size >= full_size else train_size,
                              seed=ctx.seed)
    part = f" (a class-stratified subset of {full_size:,})" if len(train) < full_size else ""
    text = f"{used}: {len(train):,} training digits{part} / {len(test):,} test digits"
    ctx.log(text)
    return Digits(train, test, text, used == "mnist", "" if used == "mnist" else why)


def _load_cifar(name: str, label: str, hint: str, ctx: RunContext, purpose: str, transforms: tuple[str, ...]
                ) -> tuple[ArrayDataset, ArrayDataset] | str:
    """The training and test splits of data set ``name`` (printed as ``label``), or why this run does not have them.

    A ``--quick`` run never loads them (it cannot decide a claim, and a data folder without the files would start a
    download of 170 MB or more where the internet is reachable). ``hint`` names the files to place.
    """
    if ctx.quick:
        return f"a --quick run does not load {label} (full configuration only)"
    try:
        return (load(name, "train", ctx.data_dir, transforms=transforms),
                load(name, "test", ctx.data_dir, transforms=transforms))
    except DataUnavailableError as err:
        first = str(err).splitlines()[0].rstrip(":")
        ctx.log(f"{label} is not available, so {purpose}: {first}", warn=True)
        return f"no {label} files in the data folder{hint}: {first}"


def load_cifar10(ctx: RunContext, purpose: str, *, transforms: tuple[str, ...] = ()
                 ) -> tuple[ArrayDataset, ArrayDataset] | str:
    """CIFAR-10's training and test splits from the data folder, or why this run does not have them (for
    ``ExperimentResult.unmeasured`` or a claim's setting); ``purpose`` completes the logged sentence "CIFAR-10 is not
    available, so ...". A ``--quick`` run never loads CIFAR-10."""
    return _load_cifar("cifar10", "CIFAR-10", "", ctx, purpose, transforms)


def load_cifar100(ctx: RunContext, purpose: str, *, transforms: tuple[str, ...] = ()
                  ) -> tuple[ArrayDataset, ArrayDataset] | str:
    """CIFAR-100's training and test splits (100 fine labels) from ``DIR/cifar100/cifar-100-python/`` (files
    ``train``, ``test`` and ``meta``, or the archive ``cifar-100-python.tar.gz`` in ``DIR/cifar100/``), or why this
    run does not have them, naming the files to place; as :func:`load_cifar10` otherwise."""
    folder = (ctx.data_dir if ctx.data_dir is not None else default_data_dir()) / "cifar100"
    hint = f" (place train, test and meta in {folder / 'cifar-100-python'}, or cifar-100-python.tar.gz in {folder})"
    return _load_cifar("cifar100", "CIFAR-100", hint, ctx, purpose, transforms)


@dataclass(frozen=True)
class LeNetBudget:
    """The LeNet-5 training budget of the RECOS experiments (SGD with momentum): ``train_size`` training digits
    (all if None), full MNIST when ``full_mnist`` and its files are available (else mnist5k)."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_size: int | None = None
    full_mnist: bool = True


def train_sgd(ctx: RunContext, name: str, model: nn.Module, data: ArrayDataset, cfg: LeNetBudget,
              epochs: int | None = None) -> nn.Module:
    """Train ``model`` in place with the budget's SGD settings as the run's training ``name``; returns it (eval)."""
    ctx.fit(name, model, data, epochs=cfg.epochs if epochs is None else epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return model.eval()


@dataclass(frozen=True)
class AdamBudget:
    """The training budget of the spline experiments (Adam, constant learning rate, as in sec. 6 of 000)."""

    epochs: int = 10
    train_size: int | None = None
    batch_size: int = 64
    lr: float = 2e-3


@dataclass
class Trained:
    """A network trained by :func:`train_adam`, the data it saw and its test accuracy."""

    model: nn.Module
    digits: Digits
    test_acc: float


def train_adam(ctx: RunContext, model_name: str, budget: AdamBudget, *, name: str | None = None,
               seed: int | None = None) -> Trained:
    """Build ``model_name`` from ``seed`` (default: the run's), train it with Adam on mnist5k, evaluate it."""
    seed = ctx.seed if seed is None else seed
    digits = load_digits(ctx, train_size=budget.train_size, transforms=transforms_for(model_name))
    seed_everything(seed)
    model = get_model(model_name, num_classes=10)
    ctx.fit(name or model_name, model, digits.train, epochs=budget.epochs, batch_size=budget.batch_size,
            lr=budget.lr, optimizer="adam", seed=seed)
    model.eval()
    return Trained(model, digits, evaluate(model, digits.test).accuracy)
