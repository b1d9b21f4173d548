"""The claims layer: rules, noise models and verdicts, checked against hand-computed bands."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlens.experiments import (
    AllOf,
    AtLeast,
    AtMost,
    Binomial,
    Claim,
    Close,
    Estimated,
    Exact,
    Greater,
    MeanError,
    Near,
    judge,
)

rates = st.floats(0.0, 1.0)
sizes = st.integers(1, 100_000)


def _binomial_se(p: float, n: int) -> float:
    q = (p * n + 1) / (n + 2)
    return math.sqrt(q * (1 - q) / n)


@settings(max_examples=400, deadline=None)
@given(p=rates, n=sizes, bound=rates)
def test_at_least_is_decided_by_the_two_se_band(p: float, n: int, bound: float) -> None:
    verdict = AtLeast("acc", bound, Binomial("n")).judge({"acc": p, "n": n}).verdict
    se = _binomial_se(p, n)
    if p - 2 * se >= bound:
        assert verdict == "reproduced"
    elif p + 2 * se < bound:
        assert verdict == "not reproduced"
    else:
        assert verdict == "inconclusive"
    mirrored = AtMost("acc", bound, Binomial("n")).judge({"acc": p, "n": n}).verdict
    if verdict == "reproduced" and p - 2 * se > bound:
        assert mirrored == "not reproduced"


@settings(max_examples=300, deadline=None)
@given(a=rates, b=rates, n=sizes, margin=st.floats(-0.5, 0.5))
def test_greater_and_close_combine_the_variances_of_both_arms(a: float, b: float, n: int, margin: float) -> None:
    se = math.hypot(_binomial_se(a, n), _binomial_se(b, n))
    verdict = Greater("a", "b", Binomial("n"), Binomial("n"), margin=margin).judge({"a": a, "b": b, "n": n})
    assert verdict.measured == pytest.approx(a - b)
    if a - b - 2 * se > margin:
        assert verdict.verdict == "reproduced"
    elif a - b + 2 * se < margin:
        assert verdict.verdict == "not reproduced"
    close = Close("a", "b", 0.02, Binomial("n"), Binomial("n")).judge({"a": a, "b": b, "n": n}).verdict
    if abs(a - b) > 0.02 + 2 * se:
        assert close == "not reproduced"
    if abs(a - b) + 2 * se <= 0.02:
        assert close == "reproduced"


def test_exact_and_near_without_noise() -> None:
    assert Exact("err", 1e-10, "float64 rounding").judge({"err": 3e-15}).verdict == "reproduced"
    assert Exact("err", 1e-10, "float64 rounding").judge({"err": 2e-9}).verdict == "not reproduced"
    assert Exact("err", 0.0, "none").judge({"err": 0.0}).verdict == "reproduced"
    assert Near("rf", 13, 0).judge({"rf": 13}).verdict == "reproduced"
    assert Near("rf", 13, 0).judge({"rf": 14}).verdict == "not reproduced"
    assert Near("x", 0.95, 0.03, Binomial(100)).judge({"x": 0.93}).verdict == "inconclusive"  # band straddles 0.92


def test_mean_error_and_estimated_noise() -> None:
    rule = Greater("a", "b", MeanError("sa", "runs"), MeanError("sb", "runs"))
    metrics = {"a": 0.98, "b": 0.97, "sa": 0.01, "sb": 0.01, "runs": 16}  # se of the difference 0.0035
    assert rule.judge(metrics).verdict == "reproduced"
    assert rule.judge({**metrics, "runs": 4}).verdict == "inconclusive"  # se 0.0071: band contains 0
    assert AtMost("o", 0.2, Estimated("o_se", "bootstrap")).judge({"o": 0.35, "o_se": 0.016}).verdict == \
        "not reproduced"


def test_compound_claims_split_into_partly() -> None:
    rule = AllOf((("first", AtLeast("a", 0.5)), ("second", AtLeast("b", 0.5))))
    assert rule.judge({"a": 0.9, "b": 0.9}).verdict == "reproduced"
    assert rule.judge({"a": 0.9, "b": 0.1}).verdict == "partly"
    assert rule.judge({"a": 0.1, "b": 0.1}).verdict == "not reproduced"
    assert rule.judge({"a": 0.9}).verdict == "inconclusive"
    assert "second: inconclusive" in rule.judge({"a": 0.9}).why


def test_missing_metrics_quick_runs_and_settings() -> None:
    claims = [
        Claim("decided", "p", "s", Exact("err", 0.0, "none"), quick=True),
        Claim("budget", "p", "s", AtLeast("acc", 0.9, Binomial("n")), setting="declared"),
        Claim("data", "p", "s", Greater("cifar", "mnist")),
    ]
    metrics = {"err": 0.0, "acc": 0.99, "n": 10_000, "mnist": 0.1}
    quick = {c["id"]: c for c in judge(claims, metrics, quick=True)}
    assert quick["decided"]["verdict"] == "reproduced"
    assert quick["budget"]["verdict"] == "inconclusive" and "--quick" in quick["budget"]["why"]
    full = {c["id"]: c for c in judge(claims, metrics, settings={"budget": "measured on mnist5k"},
                                      unmeasured={"cifar": "no CIFAR-10 files in --data-dir"})}
    assert full["budget"]["verdict"] == "reproduced" and full["budget"]["setting"] == "measured on mnist5k"
    assert full["data"]["verdict"] == "inconclusive" and "no CIFAR-10 files" in full["data"]["why"]
    assert full["decided"]["setting"] == "as in the paper"
    assert judge(claims, {**metrics, "err": None})[0]["verdict"] == "inconclusive"  # NaN saved as null


def test_claims_are_validated() -> None:
    with pytest.raises(ValueError, match="claim id"):
        Claim("has space", "p", "s", AtLeast("a", 0))
    with pytest.raises(TypeError, match="Rule"):
        Claim("ok", "p", "s", lambda m: True)  # type: ignore[arg-type]
    assert Claim("ok", "p", "s", Greater("a", "b", Binomial("n"), Binomial("n"))).metrics == ("a", "b", "n")
