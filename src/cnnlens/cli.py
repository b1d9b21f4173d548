"""The ``cnnlens`` command: list, run and report the experiments that test the papers' claims."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .experiments import get_experiment, judge_run, list_experiments, run_experiment
from .report import render

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

_COLOURS = {"reproduced": "green", "partly": "yellow", "not reproduced": "red", "inconclusive": "bright_black"}
_BEGIN, _END = "<!-- cnnlens claims: begin -->", "<!-- cnnlens claims: end -->"


class _Notes(logging.Handler):
    """Prints cnnlens's warnings (a fall-back to other data, a reused checkpoint) on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        errors.print(f"[yellow]note:[/yellow] {escape(record.getMessage())}")


def _setup_logging() -> None:
    logger = logging.getLogger("cnnlens")
    if not any(isinstance(h, _Notes) for h in logger.handlers):
        handler = _Notes(level=logging.WARNING)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _version(value: bool) -> None:
    if value:
        console.print(f"cnnlens {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """cnnlens: exact mathematical models of convolutional networks, and the papers' claims as experiments."""
    global console
    # piped output (a log, CI) gets room for the tables instead of rich's default of 80 columns
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
    console = Console(soft_wrap=True, width=width)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        if value == int(value) and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _verdict(v: str, width: int = 0) -> str:
    colour = _COLOURS.get(v, "white")
    return f"[{colour}]{v}[/{colour}]" + " " * max(0, width - len(v))


@app.command("list")
def list_command() -> None:
    """Show every experiment and the paper claims it tests."""
    table = Table(title="cnnlens experiments and the claims they test", show_lines=True)
    table.add_column("experiment (paper)", max_width=34)
    table.add_column("claims it tests", ratio=1, overflow="fold")
    for exp in list_experiments():
        claims = "\n".join(f"[bold]{escape(c.id)}[/bold] ({escape(c.paper)}): {escape(c.statement)}"
                           for c in exp.claims)
        table.add_row(f"[bold]{escape(exp.name)}[/bold]\n{escape(exp.paper)}\n[dim]{escape(exp.title)}[/dim]", claims)
    console.print(table)


def _print_verdicts(name: str, claims: list[dict[str, Any]]) -> None:
    for c in claims:
        console.print(f"  {_verdict(c['verdict'], 15)} {escape(name)}/{escape(c['id'])}: measured "
                      f"{_fmt(c['measured'])}, paper {escape(_fmt(c['paper_value']))}")


def _summary(rows: list[tuple[str, dict[str, Any]]]) -> None:
    table = Table(title="verdicts", min_width=100)
    for column in ("experiment", "claim", "paper", "paper value", "measured", "verdict"):
        table.add_column(column, overflow="fold")
    for name, c in rows:
        table.add_row(escape(name), escape(c["id"]), escape(c["paper"]), escape(_fmt(c["paper_value"])),
                      _fmt(c["measured"]), _verdict(c["verdict"]))
    console.print(table)


@app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="experiment name (see `cnnlens list`) or 'all'")],
    quick: Annotated[bool, typer.Option("--quick", help="quick configuration (CI budget) instead of full")] = False,
    out: Annotated[Path, typer.Option("--out", help="parent folder; the run is written to OUT/NAME")] = Path("runs"),
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="folder with standard data files (MNIST IDX, CIFAR batches)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's)")
    ] = None,
) -> None:
    """Run one experiment (or all of them), judge its claims and write metrics.json, claims.json and report.html."""
    _setup_logging()
    if data_dir is not None and not data_dir.is_dir():
        errors.print(f"[red]error:[/red] --data-dir {escape(str(data_dir))} does not exist or is not a folder; "
                     "create it and put the data files there (see the README's Data section), or leave it out")
        raise typer.Exit(2)
    if name != "all":
        try:
            get_experiment(name)
        except ValueError as err:
            errors.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
    if threads is not None:
        torch.set_num_threads(threads)
    names = [e.name for e in list_experiments()] if name == "all" else [name]
    failed: list[str] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    for k, exp_name in enumerate(names, start=1):
        counter = f"[{k}/{len(names)}] " if len(names) > 1 else ""
        console.print(f"{counter}[bold]{exp_name}[/bold] ({'quick' if quick else 'full'} mode, seed {seed}, "
                      f"{torch.get_num_threads()} threads)")
        try:
            run_dir = run_experiment(exp_name, out, quick=quick, seed=seed, data_dir=data_dir)
        except KeyboardInterrupt:
            errors.print(f"[yellow]interrupted:[/yellow] {exp_name} is marked 'interrupted' in "
                         f"{out / exp_name / 'report.html'}; rerun the same command to resume (completed "
                         "trainings are checkpointed)")
            raise typer.Exit(130) from None
        except Exception as err:  # noqa: BLE001 - one failing experiment must not stop `run all`
            failed.append(exp_name)
            errors.print(f"[red]{exp_name} failed:[/red] {type(err).__name__}: {escape(str(err))} "
                         f"(traceback in {out / exp_name / 'report.html'})")
            continue
        claims = json.loads((run_dir / "claims.json").read_text())
        rows.extend((exp_name, c) for c in claims)
        _print_verdicts(exp_name, claims)
        console.print(f"  report: {run_dir / 'report.html'}")
    if len(names) > 1:
        _summary(rows)
    console.print(f"index: {out / 'index.html'}")
    if failed:
        errors.print(f"[red]{len(failed)} failed:[/red] {', '.join(failed)} (see their report.html)")
        raise typer.Exit(1)


def _run_dirs(path: Path) -> list[Path]:
    if (path / "result.json").exists():
        return [path]
    runs = sorted(p.parent for p in path.glob("*/result.json"))
    if not runs:
        raise FileNotFoundError(f"no cnnlens run folder in {path} (looked for result.json in it and its sub-folders)")
    return runs


@app.command("report")
def report_command(
    path: Annotated[Path, typer.Argument(help="a run folder, or a parent folder of runs")],
) -> None:
    """Re-judge the claims from the saved metrics.json and re-render report.html and index.html (no re-run)."""
    try:
        for run_dir in _run_dirs(path):
            before = {}
            if (run_dir / "claims.json").exists():
                try:
                    before = {c["id"]: c["verdict"] for c in json.loads((run_dir / "claims.json").read_text())}
                except (json.JSONDecodeError, KeyError, TypeError):
                    before = {}
            claims = judge_run(run_dir)
            for c in claims:
                if c["id"] in before and before[c["id"]] != c["verdict"]:
                    console.print(f"{escape(run_dir.name)}/{escape(c['id'])}: {before[c['id']]} -> "
                                  f"{_verdict(c['verdict'])}")
        pages = render(path)
    except (FileNotFoundError, ValueError) as err:
        errors.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
    for page in pages:
        console.print(f"wrote {page}")


def _markdown_cell(text: Any) -> str:
    """A table cell: pipes escaped, angle brackets as entities (GitHub would read <A[x]_c, x> as a tag)."""
    return (str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " "))


def claims_markdown(path: Path) -> str:
    """The claims of every run below ``path`` as a Markdown table, headed by the run that produced them."""
    lines = []
    runs = _run_dirs(path)
    records = [json.loads((r / "result.json").read_text()) for r in runs]
    modes = sorted({rec.get("mode", "?") for rec in records})
    seeds = sorted({str(rec.get("seed", "?")) for rec in records})
    threads = sorted({str(rec.get("environment", {}).get("threads", "?")) for rec in records})
    commits = sorted({str(rec.get("environment", {}).get("commit") or "?") for rec in records})
    dates = sorted(str(rec.get("environment", {}).get("date", "?"))[:10] for rec in records)
    data_dirs = sorted({f"--data-dir {rec['data_dir']}" if rec.get("data_dir") else "no --data-dir"
                        for rec in records})
    minutes = sum(float(rec.get("seconds") or 0) for rec in records) / 60
    lines.append(f"Generated by `cnnlens claims {path.as_posix()} --markdown` from the {'/'.join(modes)} run of "
                 f"{len(runs)} experiments (seed {', '.join(seeds)}, {', '.join(threads)} torch threads, cnnlens "
                 f"commit {', '.join(commits)}, {dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''}, "
                 f"{', '.join(data_dirs)}, {minutes:.0f} minutes in all).")
    lines.append("")
    lines.append("| experiment | claim | paper | paper value | measured | verdict | setting |")
    lines.append("|---|---|---|---|---|---|---|")
    for run_dir, record in zip(runs, records, strict=True):
        claims = json.loads((run_dir / "claims.json").read_text()) if (run_dir / "claims.json").exists() else []
        for c in claims:
            cells = [f"`{record['name']}`", f"**{c['id']}**: {c['statement']}", c["paper"], _fmt(c["paper_value"]),
                     _fmt(c["measured"]), f"**{c['verdict']}**", c["setting"]]
            lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
    counts = {}
    for run_dir in runs:
        if (run_dir / "claims.json").exists():
            for c in json.loads((run_dir / "claims.json").read_text()):
                counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    lines.append("")
    lines.append("Verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + ".")
    return "\n".join(lines) + "\n"


@app.command("claims")
def claims_command(
    path: Annotated[Path, typer.Argument(help="a run folder, or a parent folder of runs")],
    markdown: Annotated[bool, typer.Option("--markdown", help="print a Markdown table")] = False,
    write: Annotated[Path | None, typer.Option(
        "--write", help=f"replace the text between '{_BEGIN}' and '{_END}' in this file with the Markdown table")
    ] = None,
) -> None:
    """Show the verdict of every claim of the runs in PATH (as saved in their claims.json)."""
    try:
        if markdown or write is not None:
            text = claims_markdown(path)
            if write is not None:
                original = write.read_text(encoding="utf-8")
                pattern = re.compile(re.escape(_BEGIN) + ".*?" + re.escape(_END), re.S)
                if not pattern.search(original):
                    raise ValueError(f"{write} has no '{_BEGIN}' ... '{_END}' block to replace; add the two markers "
                                     "where the table belongs")
                write.write_text(pattern.sub(lambda _m: f"{_BEGIN}\n{text}{_END}", original), encoding="utf-8")
                console.print(f"wrote the claims table of {path} into {write}")
            else:
                typer.echo(text, nl=False)
            return
        rows = []
        for run_dir in _run_dirs(path):
            name = json.loads((run_dir / "result.json").read_text())["name"]
            if (run_dir / "claims.json").exists():
                rows.extend((name, c) for c in json.loads((run_dir / "claims.json").read_text()))
        _summary(rows)
    except (FileNotFoundError, ValueError, KeyError) as err:
        errors.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
