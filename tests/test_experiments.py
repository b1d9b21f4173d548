"""Every registered experiment runs end to end in quick mode through the real CLI (registry-driven).

Asserted for every experiment: the metrics it declares, a report with figures that leads with its claims, a
``claims.json`` with one record per declared claim, every metric a claim reads either measured or explained, every
training set holding every class, and every claim that a quick run decides (exact identities, zero-error
constructions: ``Claim.quick``) reproduced.
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlens.cli import app
from cnnlens.experiments import VERDICTS, list_experiments

runner = CliRunner()

CLAIM_KEYS = {"id", "paper", "statement", "paper_value", "measured", "verdict", "rule", "setting"}


@pytest.mark.parametrize("name", [e.name for e in list_experiments()])
def test_quick_run_judges_every_claim(name: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", name, "--quick", "--out", str(tmp_path), "--seed", "0"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / name
    experiment = next(e for e in list_experiments() if e.name == name)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = json.loads((run_dir / "result.json").read_text())
    missing = [k for k in experiment.metrics if k not in metrics]
    assert not missing, f"{name} did not write {missing}"
    assert all(v is None or isinstance(v, int | float) for v in metrics.values())

    claims = json.loads((run_dir / "claims.json").read_text())
    assert [c["id"] for c in claims] == [c.id for c in experiment.claims]
    for declared, saved in zip(experiment.claims, claims, strict=True):
        assert CLAIM_KEYS <= set(saved) and saved["verdict"] in VERDICTS
        unexplained = [k for k in declared.metrics if metrics.get(k) is None and k not in record["unmeasured"]]
        assert not unexplained, f"{name}/{declared.id} reads metrics the run neither wrote nor explained: {unexplained}"
        if declared.quick:  # budget-independent claims must hold in CI
            assert saved["verdict"] == "reproduced", f"{name}/{declared.id}: {saved['why']}"
        else:
            assert saved["verdict"] == "inconclusive"
        assert f"{name}/{declared.id}" in result.output  # the terminal prints every verdict

    for training, info in record["training_sets"].items():
        assert min(info["class_counts"]) > 0, f"{name}: training set {training!r} misses a class: {info}"

    html = (run_dir / "report.html").read_text()
    for declared in experiment.claims:
        assert declared.statement in unescape(html)
    figures = re.findall(r'<img src="([^"]+)"', html)
    assert figures, f"{name} reports no figure"
    for figure in figures:
        assert (run_dir / figure).is_file(), f"{figure} referenced by report.html is missing"
    index = (tmp_path / "index.html").read_text()
    assert f'href="{name}/report.html"' in index
