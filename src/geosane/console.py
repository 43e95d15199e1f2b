"""Rich console and progress bars shared by all commands.

Messages go to stderr so that ``--json`` outputs on stdout stay machine-readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["console", "make_progress", "report_verification", "track"]

T = TypeVar("T")

console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    """A progress display with description, bar, count, elapsed and remaining time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=transient,
    )


def track(
    items: Iterable[T], description: str, total: int | None = None, transient: bool = True
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress(transient=transient) as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)


def report_verification(title: str, results: list[tuple[str, str | None]]) -> None:
    """Print ``(id, problem or None)`` rows as a table; exit with status 1 if any row has a problem.

    Shared by ``geosane zoo verify`` and ``geosane tokens verify``, which report and never repair.
    """
    import sys

    from rich.table import Table

    table = Table(title=title)
    table.add_column("model", overflow="fold")
    table.add_column("status", overflow="fold")
    for model_id, problem in results:
        table.add_row(model_id, "[green]ok[/]" if problem is None else f"[red]{problem}[/]")
    console.print(table)
    bad = sum(problem is not None for _, problem in results)
    console.print(f"{len(results) - bad} of {len(results)} ok" + (f", [red]{bad} with problems[/] (nothing was changed)" if bad else ""))
    if bad:
        sys.exit(1)
