"""Experiments: one registered function per group of paper claims (``cnnlens list`` shows them).

Each experiment declares its claims (:class:`Claim`: statement, paper location and value, rule, setting); the
runner judges them from the run's metrics into ``claims.json`` (:func:`judge_run` recomputes them).
"""

from ._claims import (
    VERDICTS,
    AllOf,
    AtLeast,
    AtMost,
    Binomial,
    Claim,
    Close,
    Estimated,
    Exact,
    Greater,
    Judgement,
    MeanError,
    Near,
    Noise,
    Rule,
    judge,
)
from ._registry import (
    Experiment,
    ExperimentResult,
    RunContext,
    get_experiment,
    list_experiments,
    register_experiment,
)
from ._runner import judge_run, run_experiment

__all__ = [
    "VERDICTS",
    "AllOf",
    "AtLeast",
    "AtMost",
    "Binomial",
    "Claim",
    "Close",
    "Estimated",
    "Exact",
    "Experiment",
    "ExperimentResult",
    "Greater",
    "Judgement",
    "MeanError",
    "Near",
    "Noise",
    "Rule",
    "RunContext",
    "get_experiment",
    "judge",
    "judge_run",
    "list_experiments",
    "register_experiment",
    "run_experiment",
]
