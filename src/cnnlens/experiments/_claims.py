"""Claims as data: what a paper states, the rule that judges it, and the verdict computed from ``metrics.json``.

Every experiment declares its claims next to its registration (:class:`Claim`): the paper's statement and where it
stands ("003 sec. 2, Fig. 5"), the paper's value where the text prints one, the setting (as in the paper, or what
was substituted and why) and a :class:`Rule`. A rule reads metrics and returns one of four verdicts:

* ``reproduced``: the measurement, widened by its noise band, lies entirely on the claim's side;
* ``not reproduced``: the noise band lies entirely on the other side;
* ``partly``: a compound claim (:class:`AllOf`) whose parts split into reproduced and not reproduced;
* ``inconclusive``: the noise band contains both outcomes, a metric the rule needs was not measured (e.g. no
  CIFAR-10 files), or the run's budget cannot decide the claim (a ``--quick`` run of a claim not marked ``quick``).

Noise bands are ``value +- Z * se`` with ``Z = 2`` (about 95% for a normal error); the standard error comes from the
claim's noise model: the binomial standard error of an accuracy on ``n`` test items (:class:`Binomial`), the
standard error of a mean over seeds or items (:class:`MeanError`), one the experiment estimated itself
(:class:`Estimated`, e.g. by bootstrap), or none for a deterministic quantity such as an
exact identity, whose tolerance is float rounding and is part of the rule's bound (:class:`Exact`).

Verdicts are never typed: :func:`judge` recomputes them from the metrics every time a run is judged or re-rendered.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AllOf",
    "AtLeast",
    "AtMost",
    "Close",
    "Binomial",
    "Claim",
    "Estimated",
    "Exact",
    "Greater",
    "Judgement",
    "MeanError",
    "Near",
    "Noise",
    "Rule",
        "VERDICTS",
    "Z",
    "judge",
]

#: the four verdicts, in the order the reports list them
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive")
#: width of a noise band in standard errors
Z = 2.0

Metrics = Mapping[str, float | None]


# --- noise models -------------------------------------------------------------------------------------------------


class Noise(ABC):
    """The standard error of a measured value (a noise model), computed from the metrics themselves."""

    @abstractmethod
    def se(self, value: float, metrics: Metrics) -> float | None:
        """Standard error of ``value``; None when a metric the model needs is missing."""

    @abstractmethod
    def describe(self) -> str:
        """The noise model in words, for the rule's text."""

    def needs(self) -> tuple[str, ...]:
        """Metric keys this model reads."""
        return ()


def _number(metrics: Metrics, key: str | float | int) -> float | None:
    if isinstance(key, int | float):
        return float(key)
    value = metrics.get(key)
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Binomial(Noise):
    """Binomial standard error of an accuracy (or any rate) measured on ``n`` independent test items.

    ``se = sqrt(p (1 - p) / n)`` with the Laplace estimate ``p = (k + 1) / (n + 2)``, so that a rate of exactly 0 or 1
    on a finite test set keeps a non-zero error. ``n`` is a metric key (e.g. ``"n_test"``) or a number.
    """

    n: str | int

    def se(self, value: float, metrics: Metrics) -> float | None:
        n = _number(metrics, self.n)
        if n is None or n < 1:
            return None
        p = (value * n + 1) / (n + 2)
        return math.sqrt(p * (1 - p) / n)

    def describe(self) -> str:
        n = f"n = {self.n}" if isinstance(self.n, int) else f"n = metric {self.n!r}"
        return f"binomial standard error of a rate on {n} items"

    def needs(self) -> tuple[str, ...]:
        return () if isinstance(self.n, int) else (self.n,)


@dataclass(frozen=True)
class MeanError(Noise):
    """Standard error of a mean over ``n`` independent runs or items: ``std / sqrt(n)``.

    ``std`` is the metric key of the sample standard deviation, ``n`` a metric key or a number, ``over`` says what
    was averaged ("seeds", "test digits", "digit pairs").
    """

    std: str
    n: str | int
    over: str = "seeds"

    def se(self, value: float, metrics: Metrics) -> float | None:
        std, n = _number(metrics, self.std), _number(metrics, self.n)
        if std is None or n is None or n < 1:
            return None
        return std / math.sqrt(n)

    def describe(self) -> str:
        return f"standard error of a mean over {self.over} ({self.std} / sqrt({self.n}))"

    def needs(self) -> tuple[str, ...]:
        return (self.std,) + (() if isinstance(self.n, int) else (self.n,))


@dataclass(frozen=True)
class Estimated(Noise):
    """A standard error estimated by the experiment itself and saved as the metric ``se`` (e.g. the spread of a
    statistic over bootstrap resamples); ``how`` says how it was estimated."""

    se_metric: str
    how: str

    def se(self, value: float, metrics: Metrics) -> float | None:
        return _number(metrics, self.se_metric)

    def describe(self) -> str:
        return f"standard error {self.se_metric!r} ({self.how})"

    def needs(self) -> tuple[str, ...]:
        return (self.se_metric,)


# --- rules --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """What a rule concluded: the verdict, the number it compared, the metrics it read and why (a sentence)."""

    verdict: str
    measured: float | None
    inputs: dict[str, float | None]
    why: str


def _interval(lo: float, hi: float, bound_lo: float, bound_hi: float) -> str:
    """Where the band [lo, hi] lies with respect to the claim's set [bound_lo, bound_hi]."""
    if bound_lo <= lo and hi <= bound_hi:
        return "reproduced"
    if hi < bound_lo or lo > bound_hi:
        return "not reproduced"
    return "inconclusive"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


class Rule(ABC):
    """Judges a claim from a run's metrics (see the module docstring for the verdicts)."""

    @abstractmethod
    def judge(self, metrics: Metrics) -> Judgement:
        """The verdict on ``metrics``."""

    @abstractmethod
    def describe(self) -> str:
        """Comparator, threshold and noise model in words."""

    @abstractmethod
    def needs(self) -> tuple[str, ...]:
        """Every metric key the rule reads."""


def _missing(rule: Rule, metrics: Metrics) -> list[str]:
    return [key for key in rule.needs() if _number(metrics, key) is None]


def _unmeasured(rule: Rule, metrics: Metrics, primary: str | None = None) -> Judgement:
    missing = _missing(rule, metrics)
    inputs = {key: _number(metrics, key) for key in rule.needs()}
    return Judgement("inconclusive", _number(metrics, primary) if primary else None, inputs,
                     f"not measured in this run: {', '.join(missing)}")


@dataclass(frozen=True)
class _Threshold(Rule):
    metric: str
    bound: float
    noise: Noise | None = None
    label: str = ""

    def needs(self) -> tuple[str, ...]:
        return (self.metric,) + (self.noise.needs() if self.noise else ())

    def _band(self, metrics: Metrics) -> tuple[float, float, float] | None:
        value = _number(metrics, self.metric)
        if value is None:
            return None
        se = self.noise.se(value, metrics) if self.noise else 0.0
        if se is None:
            return None
        return value, value - Z * se, value + Z * se

    def _noise_text(self) -> str:
        return f"; noise band +-{Z:g} x {self.noise.describe()}" if self.noise else "; deterministic quantity"


@dataclass(frozen=True)
class AtLeast(_Threshold):
    """The claim holds when ``metric >= bound`` (``label`` names the metric in words, e.g. "test accuracy")."""

    def judge(self, metrics: Metrics) -> Judgement:
        band = self._band(metrics)
        if band is None:
            return _unmeasured(self, metrics, self.metric)
        value, lo, hi = band
        verdict = _interval(lo, hi, self.bound, math.inf)
        return Judgement(verdict, value, {k: _number(metrics, k) for k in self.needs()},
                         f"{self.label or self.metric} = {_fmt(value)} (band {_fmt(lo)} .. {_fmt(hi)}) against "
                         f">= {_fmt(self.bound)}")

    def describe(self) -> str:
        return f"{self.label or self.metric} >= {_fmt(self.bound)}{self._noise_text()}"


@dataclass(frozen=True)
class AtMost(_Threshold):
    """The claim holds when ``metric <= bound``."""

    def judge(self, metrics: Metrics) -> Judgement:
        band = self._band(metrics)
        if band is None:
            return _unmeasured(self, metrics, self.metric)
        value, lo, hi = band
        verdict = _interval(lo, hi, -math.inf, self.bound)
        return Judgement(verdict, value, {k: _number(metrics, k) for k in self.needs()},
                         f"{self.label or self.metric} = {_fmt(value)} (band {_fmt(lo)} .. {_fmt(hi)}) against "
                         f"<= {_fmt(self.bound)}")

    def describe(self) -> str:
        return f"{self.label or self.metric} <= {_fmt(self.bound)}{self._noise_text()}"


@dataclass(frozen=True)
class Exact(Rule):
    """An exact identity or construction: ``metric <= tolerance``, the tolerance being float rounding.

    ``metric`` is an error (a max relative error, a logit gap, an error rate). ``rounding`` says what the tolerance
    stands for, e.g. "float64 rounding (relative 1e-10)" or "none: zero errors on every test input".
    """

    metric: str
    tolerance: float
    rounding: str
    label: str = ""

    def needs(self) -> tuple[str, ...]:
        return (self.metric,)

    def judge(self, metrics: Metrics) -> Judgement:
        value = _number(metrics, self.metric)
        if value is None:
            return _unmeasured(self, metrics, self.metric)
        verdict = "reproduced" if value <= self.tolerance else "not reproduced"
        return Judgement(verdict, value, {self.metric: value},
                         f"{self.label or self.metric} = {_fmt(value)} against a tolerance of "
                         f"{_fmt(self.tolerance)} ({self.rounding})")

    def describe(self) -> str:
        return f"{self.label or self.metric} <= {_fmt(self.tolerance)}; tolerance: {self.rounding}"


@dataclass(frozen=True)
class Near(Rule):
    """The claim holds when ``metric`` lies within ``tolerance`` of ``target`` (a paper's "about x")."""

    metric: str
    target: float
    tolerance: float
    noise: Noise | None = None
    label: str = ""

    def needs(self) -> tuple[str, ...]:
        return (self.metric,) + (self.noise.needs() if self.noise else ())

    def judge(self, metrics: Metrics) -> Judgement:
        value = _number(metrics, self.metric)
        se = None if value is None else (self.noise.se(value, metrics) if self.noise else 0.0)
        if value is None or se is None:
            return _unmeasured(self, metrics, self.metric)
        lo, hi = value - Z * se, value + Z * se
        verdict = _interval(lo, hi, self.target - self.tolerance, self.target + self.tolerance)
        return Judgement(verdict, value, {k: _number(metrics, k) for k in self.needs()},
                         f"{self.label or self.metric} = {_fmt(value)} (band {_fmt(lo)} .. {_fmt(hi)}) against "
                         f"{_fmt(self.target)} +- {_fmt(self.tolerance)}")

    def describe(self) -> str:
        noise = f"; noise band +-{Z:g} x {self.noise.describe()}" if self.noise else "; deterministic quantity"
        return f"|{self.label or self.metric} - {_fmt(self.target)}| <= {_fmt(self.tolerance)}{noise}"


class _Difference(Rule):
    """Shared by the rules on a difference ``a - b`` of two measured values with independent noise models (the
    band of the difference adds their variances). Subclasses set :attr:`_set` (the claim's set of differences) and
    the words of the comparison."""

    a: str
    b: str
    noise_a: Noise | None
    noise_b: Noise | None
    label: str

    @abstractmethod
    def _set(self) -> tuple[float, float]:
        """The claim's set of differences a - b, as an interval (lo, hi)."""

    @abstractmethod
    def _comparison(self, named: bool = False) -> str:
        """The words of the comparison (with the metric names when ``named``)."""

    def _name(self) -> str:
        return self.label or f"{self.a} - {self.b}"

    def needs(self) -> tuple[str, ...]:
        extra = tuple(k for n in (self.noise_a, self.noise_b) if n for k in n.needs())
        return (self.a, self.b, *extra)

    def judge(self, metrics: Metrics) -> Judgement:
        a, b = _number(metrics, self.a), _number(metrics, self.b)
        se_a = None if a is None else (self.noise_a.se(a, metrics) if self.noise_a else 0.0)
        se_b = None if b is None else (self.noise_b.se(b, metrics) if self.noise_b else 0.0)
        if a is None or b is None or se_a is None or se_b is None:
            return _unmeasured(self, metrics)
        diff = a - b
        se = math.sqrt(se_a**2 + se_b**2)
        lo, hi = diff - Z * se, diff + Z * se
        verdict = _interval(lo, hi, *self._set())
        return Judgement(verdict, diff, {k: _number(metrics, k) for k in self.needs()},
                         f"{self._name()} = {_fmt(a)} - {_fmt(b)} = {_fmt(diff)} (band {_fmt(lo)} .. {_fmt(hi)}) "
                         f"against {self._comparison()}")

    def describe(self) -> str:
        noise = list(dict.fromkeys(n.describe() for n in (self.noise_a, self.noise_b) if n))
        if not noise:
            return f"{self._comparison(named=True)}; deterministic quantities"
        each = "each arm: " if len(noise) == 1 and self.noise_a and self.noise_b else ""
        return f"{self._comparison(named=True)}; noise band +-{Z:g} x ({each}{' and '.join(noise)})"


@dataclass(frozen=True)
class Greater(_Difference):
    """The claim holds when ``a - b > margin``: arm ``a`` beats arm ``b`` by more than ``margin``.

    Each arm has its own noise model (independent errors: the band of the difference adds their variances). The
    pre-registered comparison is the one the paper makes (e.g. lambda = 1 vs lambda = 0), never the best of several
    arms.
    """

    a: str
    b: str
    noise_a: Noise | None = None
    noise_b: Noise | None = None
    margin: float = 0.0
    label: str = ""

    def _set(self) -> tuple[float, float]:
        return math.nextafter(self.margin, math.inf), math.inf

    def _comparison(self, named: bool = False) -> str:
        return f"{self._name() + ' ' if named else ''}> {_fmt(self.margin)}"


@dataclass(frozen=True)
class Close(_Difference):
    """The claim holds when two measured values agree: ``|a - b| <= tolerance`` (e.g. two accuracies that swap).

    Each value has its own noise model; the band of the difference adds their variances.
    """

    a: str
    b: str
    tolerance: float
    noise_a: Noise | None = None
    noise_b: Noise | None = None
    label: str = ""

    def _set(self) -> tuple[float, float]:
        return -self.tolerance, self.tolerance

    def _comparison(self, named: bool = False) -> str:
        return f"|{self._name()}| <= {_fmt(self.tolerance)}" if named else f"|difference| <= {_fmt(self.tolerance)}"


@dataclass(frozen=True)
class AllOf(Rule):
    """A compound claim: every part must hold. Parts that split give ``partly``; see the module docstring.

    ``parts`` is a sequence of ``(name, rule)``; the measured number of the compound is that of the first part.
    """

    parts: tuple[tuple[str, Rule], ...]

    def needs(self) -> tuple[str, ...]:
        keys: list[str] = []
        for _, rule in self.parts:
            keys.extend(k for k in rule.needs() if k not in keys)
        return tuple(keys)

    def judge(self, metrics: Metrics) -> Judgement:
        results = [(name, rule.judge(metrics)) for name, rule in self.parts]
        verdicts = {j.verdict for _, j in results}
        if verdicts == {"reproduced"}:
            verdict = "reproduced"
        elif "reproduced" in verdicts and ("not reproduced" in verdicts or "partly" in verdicts):
            verdict = "partly"
        elif "partly" in verdicts:
            verdict = "partly"
        elif "not reproduced" in verdicts:
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
        inputs: dict[str, float | None] = {}
        for _, j in results:
            inputs.update(j.inputs)
        why = "; ".join(f"{name}: {j.verdict} ({j.why})" for name, j in results)
        return Judgement(verdict, results[0][1].measured, inputs, why)

    def describe(self) -> str:
        return "all of: " + "; ".join(f"({name}) {rule.describe()}" for name, rule in self.parts)


# --- claims -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, as an experiment tests it.

    Attributes
    ----------
    id : str
        Short identifier, unique within the experiment (``"fails-on-reversed"``).
    paper : str
        Where the paper states it: "003 sec. 2, Fig. 5".
    statement : str
        What the paper states, in one or two sentences.
    rule : Rule
        How the metrics judge it.
    paper_value : float, str or None
        The paper's value where the text prints one, in the unit of the rule's measured number (an accuracy as a
        fraction: 0.9894), or a string when it is not one number ("32.7, -27.7, -27.8").
    setting : str
        "as in the paper", or what this experiment substitutes and why. An experiment may replace it per run
        (:attr:`ExperimentResult.settings`), e.g. when the data found decide the substitution.
    quick : bool
        Whether a ``--quick`` run decides the claim: True for claims that hold at any budget (exact identities,
        zero-error constructions) and for those whose quick budget was chosen to decide them. Otherwise a quick run
        reports ``inconclusive`` with the measured value.
    """

    id: str
    paper: str
    statement: str
    rule: Rule
    paper_value: float | str | None = None
    setting: str = "as in the paper"
    quick: bool = False
    metrics: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id):
            raise ValueError(f"a claim id must be a non-empty word of letters, digits, '-', '_' or '.'; "
                             f"received {self.id!r}.")
        if not isinstance(self.rule, Rule):
            raise TypeError(f"claim {self.id!r}: rule must be a cnnlens Rule (AtLeast, Greater, Exact, ...); "
                            f"received {type(self.rule).__name__}.")
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(self.rule.needs())))


def judge(claims: Sequence[Claim], metrics: Metrics, *, quick: bool = False,
          settings: Mapping[str, str] | None = None,
          unmeasured: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The verdict of every claim on a run's metrics: the records of ``claims.json``.

    Parameters
    ----------
    claims : the experiment's claims.
    metrics : the run's ``metrics.json`` (None for a non-finite value).
    quick : whether the run used the quick configuration; claims not marked ``quick`` are then ``inconclusive``.
    settings : per-claim settings recorded by the run, replacing the declared ones.
    unmeasured : metric key -> why the run could not measure it (e.g. "no CIFAR-10 files in --data-dir"); shown as
        the reason of an ``inconclusive`` verdict.

    Returns
    -------
    list of dict
        ``{id, paper, statement, paper_value, measured, verdict, rule, setting, why, inputs}`` per claim.
    """
    settings = dict(settings or {})
    unmeasured = dict(unmeasured or {})
    records = []
    for claim in claims:
        result = claim.rule.judge(metrics)
        verdict, why = result.verdict, result.why
        reasons = [unmeasured[k] for k in claim.metrics if k in unmeasured and _number(metrics, k) is None]
        if reasons:
            why = f"{why} ({'; '.join(dict.fromkeys(reasons))})"
        if quick and not claim.quick:
            verdict = "inconclusive"
            why = (f"a --quick run cannot decide this claim (its budget is for exercising the code); run the full "
                   f"configuration. Measured here: {result.why}")
        records.append({
            "id": claim.id,
            "paper": claim.paper,
            "statement": claim.statement,
            "paper_value": claim.paper_value,
            "measured": result.measured,
            "verdict": verdict,
            "rule": claim.rule.describe(),
            "setting": settings.get(claim.id, claim.setting),
            "why": why,
            "inputs": result.inputs,
        })
    return records
