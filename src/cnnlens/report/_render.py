"""Render run folders into static HTML (jinja2): one ``report.html`` per run and an ``index.html`` per parent.

The renderer reads only what the runner saved (``result.json`` and the PNG figures), so ``cnnlens report DIR``
re-renders any run without re-running it. The pages are plain static HTML that open from disk.
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
    paragraphs = [p.strip() for p in record.get("notes", "").split("\n\n") if p.strip()]
    html = _ENV.get_template("run.html").render(run=record, notes=paragraphs)
    out = run_dir / "report.html"
    out.write_text(html, encoding="utf-8")
    return out


def render_index(parent: str | Path) -> Path | None:
    """Write ``parent/index.html`` listing every run folder below ``parent``; None when there is none."""
    parent = Path(parent)
    runs = []
    for result in sorted(parent.glob("*/result.json")):
        try:
            record = json.loads(result.read_text())
        except json.JSONDecodeError:
            record = {"name": result.parent.name, "status": "corrupt result.json", "metrics": {}}
        record["href"] = f"{result.parent.name}/report.html"
        runs.append(record)
    if not runs:
        return None
    out = parent / "index.html"
    out.write_text(_ENV.get_template("index.html").render(runs=runs), encoding="utf-8")
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
