"""Every registered experiment runs end to end in quick mode through the real CLI (registry-driven)."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlens.cli import app
from cnnlens.experiments import list_experiments

runner = CliRunner()

#: figures the issues require of the quick runs: experiment -> {metric: minimum}
ACCEPTANCE: dict[str, dict[str, float]] = {
    "baseline-mnist5k": {"test_acc": 0.96},
}


@pytest.mark.parametrize("name", [e.name for e in list_experiments()])
def test_quick_run_writes_metrics_figures_and_report(name: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", name, "--quick", "--out", str(tmp_path), "--seed", "0"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    experiment = next(e for e in list_experiments() if e.name == name)
    missing = [k for k in experiment.metrics if k not in metrics]
    assert not missing, f"{name} did not write {missing}"
    assert all(v is None or isinstance(v, int | float) for v in metrics.values())
    html = (run_dir / "report.html").read_text()
    figures = re.findall(r'<img src="([^"]+)"', html)
    assert figures, f"{name} reports no figure"
    for figure in figures:
        assert (run_dir / figure).is_file(), f"{figure} referenced by report.html is missing"
    assert experiment.claim in unescape(html)
    index = (tmp_path / "index.html").read_text()
    assert f'href="{name}/report.html"' in index
    for key, minimum in ACCEPTANCE.get(name, {}).items():
        assert metrics[key] >= minimum, f"{name}: {key} = {metrics[key]} < {minimum}"

