"""Experiments: one registered function per paper claim (``cnnlens list`` shows them)."""

from ._registry import (
    Experiment,
    ExperimentResult,
    RunContext,
    get_experiment,
    list_experiments,
    register_experiment,
)
from ._runner import run_experiment

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunContext",
    "get_experiment",
    "list_experiments",
    "register_experiment",
    "run_experiment",
]
