"""HTML reports of experiment runs (``report.html`` per run, ``index.html`` per parent folder)."""

from ._render import render, render_index, render_run

__all__ = ["render", "render_index", "render_run"]
