"""Progress bars for long phases (training, templates, partition codes, ...): one live display for all of them.

Rich allows one live display at a time, so nested phases (an experiment's analysis phase that trains a model) share
one :class:`rich.progress.Progress`: the outermost :func:`phase` starts it, inner phases add their own rows, and the
display stops when the outermost phase ends. Every bar names its phase and shows the elapsed time and an ETA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["phase", "track"]

T = TypeVar("T")

_ACTIVE: list[Progress] = []
_CONSOLE = Console(stderr=True)


def _columns() -> tuple:
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))


@contextmanager
def phase(description: str, total: float | None, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A progress row named ``description`` with ``total`` steps; yields ``advance(steps=1, status="")``.

    Disabled (``enabled=False``, or stderr is not a terminal, e.g. a CI log) it costs nothing and the yielded
    function does nothing.
    """
    if not enabled or not _CONSOLE.is_terminal:
        yield lambda *_args, **_kwargs: None
        return
    outer = not _ACTIVE
    if outer:
        bar = Progress(*_columns(), console=_CONSOLE, transient=True)
        bar.start()
        _ACTIVE.append(bar)
    bar = _ACTIVE[0]
    task = bar.add_task(description, total=total, status="")

    def advance(steps: float = 1, status: str | None = None) -> None:
        if status is None:
            bar.update(task, advance=steps)
        else:
            bar.update(task, advance=steps, status=status)

    try:
        yield advance
    finally:
        bar.remove_task(task)
        if outer:
            bar.stop()
            _ACTIVE.clear()


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a progress row named ``description`` (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with phase(description, total, enabled=enabled) as advance:
        for item in items:
            yield item
            advance()
