"""The experiments registry: every paper claim cnnlens reproduces is a function registered by name.

An experiment is ``run(cfg, ctx) -> ExperimentResult`` with a frozen config dataclass; it is registered with a
quick configuration (minutes on a laptop, run in CI) and a full one (the paper-scale run), the paper claim it
reproduces and the metric keys it promises. Modules of this package whose names do not start with ``_`` are
imported on first use, so adding an experiment is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "get_experiment",
    "list_experiments",
    "register_experiment",
]


@dataclass
class RunContext:
    """What an experiment receives besides its config: where to write, the seed, the data folder, the mode."""

    out_dir: Path
    seed: int = 0
    data_dir: Path | None = None
    quick: bool = False
    progress: bool = True
    run_key: str = ""
    log_lines: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        """Record a line in the run's log (``log.txt``, shown in the report)."""
        self.log_lines.append(message)
        with open(self.out_dir / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(message + "\n")

    def checkpoint_dir(self, name: str) -> Path:
        """A folder for the checkpoints of one training run, so that an interrupted run resumes.

        The folder is keyed by ``run_key`` (a hash of the configuration and seed, set by the runner), so a run
        with another configuration starts afresh instead of meeting a checkpoint it cannot use.
        """
        path = self.out_dir / "checkpoints" / (f"{name}-{self.run_key}" if self.run_key else name)
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class ExperimentResult:
    """Flat numeric metrics, matplotlib figures (saved as PNG) and the honest reading of them (``notes``)."""

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: str = ""


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: name, the function, the paper claim, its configurations and metric keys."""

    name: str
    fn: Callable[[Any, RunContext], ExperimentResult]
    claim: str
    paper: str
    quick: Any
    full: Any
    metrics: tuple[str, ...]

    def config(self, quick: bool) -> Any:
        """The quick or the full configuration."""
        return self.quick if quick else self.full


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def register_experiment(
    name: str, *, claim: str, paper: str, quick: Any, full: Any, metrics: tuple[str, ...] | list[str]
) -> Callable[[Callable[[Any, RunContext], ExperimentResult]], Callable[[Any, RunContext], ExperimentResult]]:
    """Register ``fn(cfg, ctx) -> ExperimentResult`` under ``name`` (duplicates are rejected)."""
    if not (is_dataclass(quick) and is_dataclass(full) and type(quick) is type(full)):
        raise TypeError(f"experiment {name!r}: quick and full must be instances of the same config dataclass")
    if name == "all":
        raise ValueError("'all' is reserved by `cnnlens run all`; choose another experiment name")

    def wrap(fn: Callable[[Any, RunContext], ExperimentResult]) -> Callable[[Any, RunContext], ExperimentResult]:
        if name in _REGISTRY:
            raise ValueError(f"an experiment named {name!r} is already registered ({_REGISTRY[name].fn.__module__})")
        _REGISTRY[name] = Experiment(name, fn, claim, paper, quick, full, tuple(metrics))
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
    """The experiment registered as ``name``."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; `cnnlens list` shows them: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
