"""The README is the user's door: its Python tour runs as printed, and its claims table is the one generated from
the full run kept in docs/runs/full (not typed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnlens.cli import claims_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S),
                         ids=lambda b: b.splitlines()[0][:40])
def test_readme_python_blocks_run(block: str) -> None:
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - the README's own code


def test_readme_claims_table_is_generated_from_the_full_run(monkeypatch: pytest.MonkeyPatch) -> None:
    table = re.search(r"<!-- cnnlens claims: begin -->\n(.*?)<!-- cnnlens claims: end -->", README, re.S)
    assert table, "README.md lacks the generated claims block"
    monkeypatch.chdir(ROOT)
    assert table.group(1) == claims_markdown(Path("docs/runs/full")), (
        "the README's claims table differs from the full run: run `cnnlens claims docs/runs/full --write README.md`")


def test_the_full_run_covers_the_registered_claims() -> None:
    """A claim added or renamed since the full run makes the README's table stale: re-run, then regenerate it."""
    import json

    from cnnlens.experiments import get_experiment, list_experiments

    runs = sorted((ROOT / "docs" / "runs" / "full").glob("*/claims.json"))
    assert {p.parent.name for p in runs} == {e.name for e in list_experiments()}
    for path in runs:
        saved = json.loads(path.read_text())
        experiment = get_experiment(path.parent.name)
        assert [c["id"] for c in saved] == [c.id for c in experiment.claims], path.parent.name
        assert [c["statement"] for c in saved] == [c.statement for c in experiment.claims], path.parent.name
