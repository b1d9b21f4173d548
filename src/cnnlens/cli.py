"""The ``cnnlens`` command: list, run and report the experiments that reproduce the papers' claims."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .experiments import list_experiments, run_experiment
from .report import render

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


@app.command("list")
def list_command() -> None:
    """Show every experiment with the paper claim it reproduces and the metrics it reports."""
    table = Table(title="cnnlens experiments", show_lines=True)
    table.add_column("experiment (paper)", max_width=32)
    table.add_column("claim it reproduces; metrics", ratio=1, overflow="fold")
    for exp in list_experiments():
        metrics = ", ".join(exp.metrics)
        table.add_row(f"[bold]{escape(exp.name)}[/bold]\n{escape(exp.paper)}",
                      f"{escape(exp.claim)}\n[dim]metrics: {escape(metrics)}[/dim]")
    console.print(table)


@app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="experiment name (see `cnnlens list`) or 'all'")],
    quick: Annotated[bool, typer.Option("--quick", help="quick configuration (minutes) instead of full")] = False,
    out: Annotated[Path, typer.Option("--out", help="parent folder; the run is written to OUT/NAME")] = Path("runs"),
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="folder with standard data files (MNIST IDX, CIFAR batches)")
    ] = None,
) -> None:
    """Run one experiment (or all of them) and write metrics.json, figures and report.html."""
    known = {e.name for e in list_experiments()}
    if name != "all" and name not in known:
        console.print(f"[red]unknown experiment {name!r}[/red]; available: {', '.join(sorted(known))}")
        raise typer.Exit(2)
    names = sorted(known) if name == "all" else [name]
    failed = []
    for exp_name in names:
        console.print(f"[bold]running {exp_name}[/bold] ({'quick' if quick else 'full'} mode, seed {seed})")
        try:
            run_dir = run_experiment(exp_name, out, quick=quick, seed=seed, data_dir=data_dir)
        except Exception as err:  # noqa: BLE001 - one failing experiment must not stop `run all`
            failed.append(exp_name)
            console.print(f"[red]{exp_name} failed:[/red] {type(err).__name__}: {err}")
            continue
        console.print(f"  report: {run_dir / 'report.html'}")
    console.print(f"index: {out / 'index.html'}")
    if failed:
        console.print(f"[red]{len(failed)} failed:[/red] {', '.join(failed)} (see their report.html)")
        raise typer.Exit(1)


@app.command("report")
def report_command(
    path: Annotated[Path, typer.Argument(help="a run folder, or a parent folder of runs")],
) -> None:
    """Re-render report.html (and index.html) from saved results without re-running anything."""
    try:
        pages = render(path)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    for page in pages:
        console.print(f"wrote {page}")
