"""The CLI and the report renderer: claims and verdicts, listing, errors, failures kept on disk, re-rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from matplotlib import pyplot as plt
from typer.testing import CliRunner

from cnnlens import __version__
from cnnlens.cli import app
from cnnlens.experiments import (
    AtLeast,
    Claim,
    Exact,
    ExperimentResult,
    _registry,
    list_experiments,
    register_experiment,
    run_experiment,
)
from cnnlens.report import render

runner = CliRunner()

CLAIM_KEYS = {"id", "paper", "statement", "paper_value", "measured", "verdict", "rule", "setting"}


@dataclass(frozen=True)
class _Cfg:
    value: float = 1.0
    fail: bool = False
    interrupt: bool = False


@pytest.fixture
def toy_experiment():
    """A tiny registered experiment with two claims, removed from the registry afterwards."""

    claims = (
        Claim("value-large", "none sec. 1", "The toy value is at least 1.5 <b>escaped</b>.",
              AtLeast("value", 1.5), paper_value=2.0, quick=True),
        Claim("error-zero", "none sec. 2", "The toy error is zero.", Exact("error", 0.0, "none"),
              paper_value=0.0),
    )

    @register_experiment("toy", title="a toy <b>escaped</b>", paper="none", quick=_Cfg(2.0), full=_Cfg(),
                         metrics=("value",), claims=claims)
    def run(cfg: _Cfg, ctx) -> ExperimentResult:
        ctx.log("computing the toy value")
        if cfg.fail:
            raise RuntimeError("toy failure")
        if cfg.interrupt:
            raise KeyboardInterrupt
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, cfg.value])
        return ExperimentResult({"value": cfg.value, "error": 0.0, "nan_metric": float("nan")}, {"line": fig},
                                "first\n\nsecond", settings={"error-zero": "a toy setting"})

    yield "toy"
    _registry._REGISTRY.pop("toy")


def test_list_shows_every_experiment_with_the_claims_it_tests() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "claims it tests" in result.output and "reproduces" not in result.output
    for exp in list_experiments():
        assert exp.name in result.output
        for claim in exp.claims:
            assert claim.id in result.output
            assert claim.statement[:40] in result.output  # no text lost to rich markup (e.g. "A[x]")


def test_unknown_experiment_is_an_error_on_stderr_with_a_suggestion(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "spline-templats", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown experiment 'spline-templats'" in result.stderr
    assert "Did you mean 'spline-templates'" in result.stderr
    assert not (tmp_path / "spline-templats").exists()


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "tiles-squares", "--quick", "--out", str(tmp_path),
                                 "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "nowhere" in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_run_judges_claims_and_writes_report(toy_experiment: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", toy_experiment, "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "reproduced" in result.output and "toy/value-large: measured 2, paper 2" in result.output
    run_dir = tmp_path / toy_experiment
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == {"error": 0.0, "nan_metric": None, "value": 2.0}
    claims = json.loads((run_dir / "claims.json").read_text())
    assert [c["id"] for c in claims] == ["value-large", "error-zero"]
    assert all(CLAIM_KEYS <= set(c) for c in claims)
    by_id = {c["id"]: c for c in claims}
    assert by_id["value-large"]["verdict"] == "reproduced" and by_id["value-large"]["measured"] == 2.0
    # a claim not marked quick is not decided by a quick run, whatever it measures
    assert by_id["error-zero"]["verdict"] == "inconclusive" and "--quick" in by_id["error-zero"]["why"]
    assert by_id["error-zero"]["setting"] == "a toy setting" and by_id["value-large"]["setting"] == "as in the paper"
    html = (run_dir / "report.html").read_text()
    assert "The toy value is at least 1.5 &lt;b&gt;escaped&lt;/b&gt;." in html
    assert html.index("Claims and verdicts") < html.index("Run status") < html.index("Metrics")
    assert "<p>first</p><p>second</p>" in html and "computing the toy value" in html
    assert (run_dir / "figures" / "line.png").stat().st_size > 1000
    index = (tmp_path / "index.html").read_text()
    assert "value-large" in index and "error-zero" in index and 'v-reproduced' in index


def test_editing_a_metric_and_rerendering_changes_the_verdict(toy_experiment: str, tmp_path: Path) -> None:
    run_dir = run_experiment(toy_experiment, tmp_path, quick=False, progress=False)
    claims = {c["id"]: c for c in json.loads((run_dir / "claims.json").read_text())}
    assert claims["value-large"]["verdict"] == "not reproduced"  # the full config's value is 1.0 < 1.5
    assert claims["error-zero"]["verdict"] == "reproduced"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["value"], metrics["error"] = 3.0, 0.25
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "value-large: not reproduced -> reproduced" in result.output
    claims = {c["id"]: c for c in json.loads((run_dir / "claims.json").read_text())}
    assert claims["value-large"]["verdict"] == "reproduced" and claims["value-large"]["measured"] == 3.0
    assert claims["error-zero"]["verdict"] == "not reproduced"
    html = (run_dir / "report.html").read_text()
    assert "v-not-reproduced" in html and "error = 0.25" in html
    del metrics["error"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    claims = {c["id"]: c for c in json.loads((run_dir / "claims.json").read_text())}
    assert claims["error-zero"]["verdict"] == "inconclusive" and "not measured" in claims["error-zero"]["why"]


def test_claims_command_writes_the_markdown_table(toy_experiment: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run_experiment(toy_experiment, runs, quick=False, progress=False)
    result = runner.invoke(app, ["claims", str(runs), "--markdown"])
    assert result.exit_code == 0, result.output
    assert "| `toy` | **value-large**" in result.output and "**not reproduced**" in result.output
    assert "full run of 1 experiments (seed 0" in result.output
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- cnnlens claims: begin -->\nold table\n<!-- cnnlens claims: end -->\nrest\n")
    assert runner.invoke(app, ["claims", str(runs), "--write", str(readme)]).exit_code == 0
    text = readme.read_text()
    assert "old table" not in text and "**value-large**" in text and text.endswith("end -->\nrest\n")
    (tmp_path / "plain.md").write_text("no markers")
    result = runner.invoke(app, ["claims", str(runs), "--write", str(tmp_path / "plain.md")])
    assert result.exit_code == 2 and "markers" in result.stderr


def test_failed_run_is_kept_on_disk_and_reported(toy_experiment: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="toy failure"):
        run_experiment(toy_experiment, tmp_path, overrides={"fail": True}, progress=False)
    record = json.loads((tmp_path / "toy" / "result.json").read_text())
    assert record["status"] == "failed" and "toy failure" in record["error"]
    claims = json.loads((tmp_path / "toy" / "claims.json").read_text())
    assert {c["verdict"] for c in claims} == {"inconclusive"}
    assert "toy failure" in (tmp_path / "toy" / "report.html").read_text()


def test_ctrl_c_marks_the_run_interrupted(toy_experiment: str, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_experiment(toy_experiment, tmp_path, overrides={"interrupt": True}, progress=False)
    record = json.loads((tmp_path / "toy" / "result.json").read_text())
    assert record["status"] == "interrupted"
    assert "interrupted" in (tmp_path / "toy" / "report.html").read_text()


def test_registry_rejects_duplicates_and_bad_declarations(toy_experiment: str) -> None:
    claim = Claim("a", "p", "s", AtLeast("x", 0))
    with pytest.raises(ValueError, match="already registered"):
        register_experiment("toy", title="", paper="", quick=_Cfg(), full=_Cfg(), metrics=(), claims=(claim,))(
            lambda c, x: None)
    with pytest.raises(TypeError, match="same config dataclass"):
        register_experiment("other", title="", paper="", quick={}, full=_Cfg(), metrics=(), claims=(claim,))
    with pytest.raises(ValueError, match="reserved"):
        register_experiment("all", title="", paper="", quick=_Cfg(), full=_Cfg(), metrics=(), claims=(claim,))
    with pytest.raises(ValueError, match="duplicate claim ids"):
        register_experiment("other", title="", paper="", quick=_Cfg(), full=_Cfg(), metrics=(),
                            claims=(claim, claim))
    with pytest.raises(TypeError, match="at least one"):
        register_experiment("other", title="", paper="", quick=_Cfg(), full=_Cfg(), metrics=(), claims=())


def test_report_of_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no cnnlens run folder"):
        render(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(tmp_path / "broken")])
    assert result.exit_code == 2 and "corrupt" in result.stderr


def test_ctrl_c_in_the_cli_says_how_to_resume(toy_experiment: str, tmp_path: Path, monkeypatch) -> None:
    from cnnlens.experiments import _registry as registry

    exp = registry._REGISTRY[toy_experiment]
    monkeypatch.setitem(registry._REGISTRY, toy_experiment,
                        type(exp)(exp.name, exp.fn, exp.title, exp.paper, _Cfg(interrupt=True), exp.full, exp.metrics,
                                  exp.claims))
    result = runner.invoke(app, ["run", toy_experiment, "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 130
    assert "interrupted: " in result.stderr and "rerun the same command to resume" in result.stderr
    assert json.loads((tmp_path / "toy" / "result.json").read_text())["status"] == "interrupted"


def test_run_all_counts_and_ends_with_a_summary(toy_experiment: str, tmp_path: Path, monkeypatch) -> None:
    from cnnlens.experiments import _registry as registry

    exp = registry._REGISTRY[toy_experiment]
    second = type(exp)("toy-two", exp.fn, exp.title, exp.paper, exp.quick, exp.full, exp.metrics, exp.claims)
    monkeypatch.setattr(registry, "_REGISTRY", {"toy": exp, "toy-two": second})
    monkeypatch.setattr(registry, "_DISCOVERED", True)
    result = runner.invoke(app, ["run", "all", "--quick", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[1/2] toy" in result.output and "[2/2] toy-two" in result.output
    summary = result.output[result.output.index("verdicts"):]
    assert summary.count("value-large") == 2 and "error-zero" in summary
    index = (tmp_path / "index.html").read_text()
    assert index.count("value-large") == 2


@dataclass(frozen=True)
class _FitCfg:
    epochs: int = 2


def test_fallback_is_printed_and_a_resumed_run_says_what_it_reused(tmp_path: Path, monkeypatch) -> None:
    """A fall-back from full MNIST is printed on the terminal; a second run reuses the checkpoints and says so."""
    import torch
    from torch import nn

    from cnnlens.data import stratified_subset
    from cnnlens.experiments._recipes import load_digits

    monkeypatch.setenv("CNNLENS_OFFLINE", "1")

    @register_experiment("toy-fit", title="toy training", paper="none", quick=_FitCfg(), full=_FitCfg(),
                         metrics=("acc",), claims=(Claim("c", "p", "s", AtLeast("acc", 0.0), quick=True),))
    def run(cfg: _FitCfg, ctx) -> ExperimentResult:
        digits = load_digits(ctx, full_mnist=True, transforms=())
        data = stratified_subset(digits.train, 200, seed=ctx.seed)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        ctx.fit("linear", model, data, epochs=cfg.epochs, batch_size=50, lr=0.1)
        return ExperimentResult({"acc": 1.0})

    try:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        args = ["run", "toy-fit", "--quick", "--out", str(tmp_path / "runs"), "--data-dir", str(data_dir)]
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        assert "full MNIST is not in" in first.stderr and "uses mnist5k" in first.stderr
        assert "reused" not in first.stderr
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
        assert "linear: reused the checkpoint of epoch 2 of 2" in second.stderr
        record = json.loads((tmp_path / "runs" / "toy-fit" / "result.json").read_text())
        assert record["resumed"] == {"linear": 2}
        assert record["training_sets"]["linear"]["class_counts"] == [20] * 10
    finally:
        _registry._REGISTRY.pop("toy-fit")
