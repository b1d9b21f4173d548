"""The experiments registry: every paper claim cnnlens tests is declared with the experiment that measures it.

An experiment is ``run(cfg, ctx) -> ExperimentResult`` with a frozen config dataclass; it is registered with a
quick configuration (minutes on a laptop, run in CI) and a full one (the paper-scale run), the metric keys it
promises and its :class:`Claim` objects (statement, paper location and value, rule, setting). The runner judges the
claims from the metrics (``claims.json``). Modules of this package whose names do not start with ``_`` are imported
on first use, so adding an experiment is adding a module.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import Dataset

from .._progress import phase, track
from ..data import class_counts
from ..train import FitResult, fit
from ._claims import Claim

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "get_experiment",
    "list_experiments",
    "register_experiment",
]

_log = logging.getLogger("cnnlens.experiments")


@dataclass
class RunContext:
    """What an experiment receives besides its config: where to write, the seed, the data folder, the mode.

    Experiments train through :meth:`fit` (checkpointed per run, progress bar named after the model, the training
    set's class counts recorded in ``result.json``), show analysis phases with :meth:`phase` / :meth:`track`, and
    log with :meth:`log` (the run's ``log.txt``, the report and the terminal).
    """

    out_dir: Path
    seed: int = 0
    data_dir: Path | None = None
    quick: bool = False
    progress: bool = True
    run_key: str = ""
    log_lines: list[str] = field(default_factory=list)
    training_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)

    def log(self, message: str, *, warn: bool = False) -> None:
        """Record a line in the run's log (``log.txt``, shown in the report); ``warn`` also prints it."""
        self.log_lines.append(message)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(message + "\n")
        (_log.warning if warn else _log.debug)(message)

    def checkpoint_dir(self, name: str) -> Path:
        """A folder for the checkpoints of one training run, so that an interrupted run resumes.

        The folder is keyed by ``run_key`` (a hash of the configuration and seed, set by the runner), so a run
        with another configuration starts afresh instead of meeting a checkpoint it cannot use.
        """
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"
        path = self.out_dir / "checkpoints" / (f"{slug}-{self.run_key}" if self.run_key else slug)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fit(self, name: str, model: nn.Module, data: Dataset, *, checkpoint: bool = True, **kwargs: Any) -> FitResult:
        """Train ``model`` with :func:`cnnlens.train.fit` as the run's training ``name``.

        The checkpoint lives in :meth:`checkpoint_dir` (``checkpoint=False`` for runs of seconds), the progress
        bar is named ``name``, the seed defaults to the run's, and the training set's per-class counts are recorded
        under ``name`` in ``result.json`` (``training_sets``). A resumed training is logged and reported.
        """
        kwargs.setdefault("seed", self.seed)
        result = fit(model, data, checkpoint_dir=self.checkpoint_dir(name) if checkpoint else None,
                     progress=self.progress, description=name, **kwargs)
        labels = getattr(data, "labels", None)
        if labels is None:
            labels = getattr(data, "tensors", (None, None))[1]
        if labels is not None:
            self.training_sets[name] = {"size": int(len(labels)),
                                        "class_counts": class_counts(labels, getattr(data, "num_classes", None))}
        if result.resumed_from_epoch:
            self.resumed[name] = result.resumed_from_epoch
            self.log(f"{name}: reused the checkpoint of epoch {result.resumed_from_epoch} of {kwargs['epochs']}",
                     warn=True)
        return result

    def phase(self, description: str, total: float | None) -> AbstractContextManager[Callable[..., None]]:
        """A progress row for an analysis phase (``with ctx.phase("templates", n) as advance: ...``)."""
        return phase(description, total, enabled=self.progress)

    def track(self, items: Sequence[Any], description: str) -> Iterator[Any]:
        """Iterate ``items`` with a progress row named ``description``."""
        return track(items, description, enabled=self.progress)


@dataclass
class ExperimentResult:
    """What an experiment returns.

    Attributes
    ----------
    metrics : flat numeric metrics (``metrics.json``); the claims are judged from them.
    figures : matplotlib figures, saved as PNG.
    notes : the reading of the numbers; every sentence that states an outcome is conditioned on a measured value.
    settings : claim id -> the setting of this run, where it differs from the declared one (e.g. "mnist5k for
        CIFAR-100: no CIFAR-100 files in --data-dir").
    unmeasured : metric key -> why this run could not measure it (the claim is then ``inconclusive``).
    """

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    unmeasured: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: name, function, title, paper location, configurations, metric keys, claims."""

    name: str
    fn: Callable[[Any, RunContext], ExperimentResult]
    title: str
    paper: str
    quick: Any
    full: Any
    metrics: tuple[str, ...]
    claims: tuple[Claim, ...]

    def config(self, quick: bool) -> Any:
        """The quick or the full configuration."""
        return self.quick if quick else self.full

    def claim(self, claim_id: str) -> Claim:
        """The claim with id ``claim_id``."""
        for claim in self.claims:
            if claim.id == claim_id:
                return claim
        raise KeyError(f"experiment {self.name!r} has no claim {claim_id!r}; its claims are "
                       f"{[c.id for c in self.claims]}")


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def register_experiment(
    name: str, *, title: str, paper: str, quick: Any, full: Any, metrics: Sequence[str],
    claims: Sequence[Claim],
) -> Callable[[Callable[[Any, RunContext], ExperimentResult]], Callable[[Any, RunContext], ExperimentResult]]:
    """Register ``fn(cfg, ctx) -> ExperimentResult`` under ``name`` with the claims it tests.

    ``metrics`` are the keys every run must return; a claim may also read metrics that a run measures only when
    its data are present (the run then lists them in ``ExperimentResult.unmeasured``). Duplicate experiment names
    and duplicate claim ids are rejected.
    """
    if not (is_dataclass(quick) and is_dataclass(full) and type(quick) is type(full)):
        raise TypeError(f"experiment {name!r}: quick and full must be instances of the same config dataclass")
    if name == "all":
        raise ValueError("'all' is reserved by `cnnlens run all`; choose another experiment name")
    claims = tuple(claims)
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise TypeError(f"experiment {name!r} must declare at least one cnnlens Claim; received {claims!r}")
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"experiment {name!r} declares duplicate claim ids: {twice}")

    def wrap(fn: Callable[[Any, RunContext], ExperimentResult]) -> Callable[[Any, RunContext], ExperimentResult]:
        if name in _REGISTRY:
            raise ValueError(f"an experiment named {name!r} is already registered ({_REGISTRY[name].fn.__module__})")
        _REGISTRY[name] = Experiment(name, fn, title, paper, quick, full, tuple(metrics), claims)
        return fn

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module(__package__ or "cnnlens.experiments")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _DISCOVERED = True


def list_experiments() -> list[Experiment]:
    """Every registered experiment, sorted by name."""
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; a misspelt name gets a "did you mean" suggestion."""
    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown experiment {name!r}.{hint} `cnnlens list` shows them all: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
