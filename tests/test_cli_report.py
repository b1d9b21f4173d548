"""The CLI and the report renderer: listing, unknown names, failures kept on disk, re-rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from matplotlib import pyplot as plt
from typer.testing import CliRunner

from cnnlens.cli import app
from cnnlens.experiments import ExperimentResult, _registry, list_experiments, register_experiment, run_experiment
from cnnlens.report import render

runner = CliRunner()


@dataclass(frozen=True)
class _Cfg:
    value: float = 1.0
    fail: bool = False


@pytest.fixture
def toy_experiment():
    """A tiny registered experiment, removed from the registry afterwards."""

    @register_experiment("toy", claim="toy claim <b>escaped</b>", paper="none", quick=_Cfg(2.0), full=_Cfg(),
                         metrics=("value",))
    def run(cfg: _Cfg, ctx) -> ExperimentResult:
        ctx.log("computing the toy value")
        if cfg.fail:
            raise RuntimeError("toy failure")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, cfg.value])
        return ExperimentResult({"value": cfg.value, "nan_metric": float("nan")}, {"line": fig}, "first\n\nsecond")

    yield "toy"
    _registry._REGISTRY.pop("toy")


def test_list_shows_every_experiment_with_its_claim() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for exp in list_experiments():
        assert exp.name in result.output
        assert exp.claim[:40] in result.output  # no text lost to rich markup (e.g. "A[x]")


def test_unknown_experiment_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown experiment 'nope'" in result.output


def test_run_writes_report_and_rerender_works(toy_experiment: str, tmp_path: Path) -> None:
    run_dir = run_experiment(toy_experiment, tmp_path, quick=True, seed=3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == {"value": 2.0, "nan_metric": None}
    html = (run_dir / "report.html").read_text()
    assert "toy claim &lt;b&gt;escaped&lt;/b&gt;" in html
    assert "<p>first</p><p>second</p>" in html and "computing the toy value" in html
    assert (run_dir / "figures" / "line.png").stat().st_size > 1000
    (run_dir / "report.html").unlink()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").exists() and (tmp_path / "index.html").exists()


def test_failed_run_is_kept_on_disk_and_reported(toy_experiment: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="toy failure"):
        run_experiment(toy_experiment, tmp_path, overrides={"fail": True})
    record = json.loads((tmp_path / "toy" / "result.json").read_text())
    assert record["status"] == "failed" and "toy failure" in record["error"]
    assert "toy failure" in (tmp_path / "toy" / "report.html").read_text()


def test_registry_rejects_duplicates_and_bad_configs(toy_experiment: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_experiment("toy", claim="", paper="", quick=_Cfg(), full=_Cfg(), metrics=())(lambda c, x: None)
    with pytest.raises(TypeError, match="same config dataclass"):
        register_experiment("other", claim="", paper="", quick={}, full=_Cfg(), metrics=())
    with pytest.raises(ValueError, match="reserved"):
        register_experiment("all", claim="", paper="", quick=_Cfg(), full=_Cfg(), metrics=())


def test_report_of_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no cnnlens run folder"):
        render(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(tmp_path / "broken")])
    assert result.exit_code == 2 and "corrupt" in result.output
