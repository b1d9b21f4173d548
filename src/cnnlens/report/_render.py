"""Render run folders into static HTML (jinja2): one ``report.html`` per run and an ``index.html`` per parent.

Both pages lead with the claims: each claim's statement beside the paper's value, the measured value and the verdict;
the run's status is a separate, smaller field. The renderer reads only what the runner saved (``result.json``,
``claims.json`` and the PNG figures), so ``cnnlens report DIR`` (which first re-judges the claims from
``metrics.json``) re-renders any run without re-running it. The pages are plain static HTML that open from disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["render", "render_index", "render_run"]

_ENV = Environment(loader=PackageLoader("cnnlens.report", "templates"), autoescape=select_autoescape(["html"]))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _tally(claims: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(verdict, count) in the order of VERDICTS, verdicts with no claim left out."""
    order = ("reproduced", "partly", "not reproduced", "inconclusive")
    counts = {v: sum(1 for c in claims if c.get("verdict") == v) for v in order}
    return [(v, n) for v, n in counts.items() if n]


def _claims(run_dir: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    path = run_dir / "claims.json"
    if path.exists():
        try:
            claims = json.loads(path.read_text())
            if isinstance(claims, list):
                return claims
        except json.JSONDecodeError:
            pass
    return list(record.get("claims") or [])


_ENV.filters["fmt"] = _fmt


def _load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "result.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a cnnlens run folder (no result.json); run `cnnlens run` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt ({err}); re-run the experiment to regenerate it") from err


def render_run(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from ``run_dir/result.json``; returns its path."""
    run_dir = Path(run_dir)
    record = _load(run_dir)
    # paragraphs are separated by blank lines; a paragraph of several lines is preformatted text (a table)
    paragraphs = [(p.strip("\n"), "\n" in p.strip()) for p in record.get("notes", "").split("\n\n") if p.strip()]
    claims = _claims(run_dir, record)
    html = _ENV.get_template("run.html").render(run=record, notes=paragraphs, claims=claims, tally=_tally(claims))
    out = run_dir / "report.html"
    out.write_text(html, encoding="utf-8")
    return out


def render_index(parent: str | Path) -> Path | None:
    """Write ``parent/index.html``: one row per claim of every run folder below ``parent``; None when there is none."""
    parent = Path(parent)
    runs = []
    for result in sorted(parent.glob("*/result.json")):
        try:
            record = json.loads(result.read_text())
        except json.JSONDecodeError:
            record = {"name": result.parent.name, "status": "corrupt result.json", "metrics": {}}
        record["href"] = f"{result.parent.name}/report.html"
        record["claims"] = _claims(result.parent, record)
        runs.append(record)
    if not runs:
        return None
    out = parent / "index.html"
    every = [c for run in runs for c in run["claims"]]
    out.write_text(_ENV.get_template("index.html").render(runs=runs, tally=_tally(every)), encoding="utf-8")
    return out


def render(path: str | Path) -> list[Path]:
    """Re-render a run folder, or every run below a parent folder plus its index; returns the pages written."""
    path = Path(path)
    if (path / "result.json").exists():
        pages = [render_run(path)]
        index = render_index(path.parent)
        return pages + ([index] if index else [])
    pages = [render_run(r.parent) for r in sorted(path.glob("*/result.json"))]
    if not pages:
        raise FileNotFoundError(f"no cnnlens run folder in {path} (looked for result.json in it and its sub-folders)")
    index = render_index(path)
    return pages + ([index] if index else [])
