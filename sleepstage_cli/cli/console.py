"""Terminal output: one rich console for results (stdout), one for messages and progress (stderr).

Warnings and notes wrap at spaces to a terminal's width (a terminal itself would cut them mid-word); written
to a file or a pipe they stay one line each, for grep. Errors are always one line.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """Print a one-line error (never wrapped, markup-safe)."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=not err.is_terminal)


def info(message: str) -> None:
    err.print(escape(message), soft_wrap=not err.is_terminal)


def progress(transient: bool = False) -> Progress:
    """The progress display every long command uses (on stderr, so stdout stays clean for results)."""
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=err, transient=transient)
