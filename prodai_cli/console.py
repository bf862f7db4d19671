"""The one output object: every command talks to the user through :class:`Console`.

Results (tables, the line a command exists to print) go to stdout; diagnostics, progress and errors go to
stderr, so ``prodai models resolve m@prod | cut ...`` pipes only the result. With ``--json`` stdout carries
exactly one JSON document and nothing else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Console:
    """Human and machine output for one command invocation.

    Args:
        json_mode: Print results as JSON on stdout and keep human chatter off stdout.
        verbose: Print :meth:`debug` messages.

    """

    # Set once a JSON result is on stdout: the error handler then adds no second document (the result of a
    # command that fails after reporting, such as a load test that misses its SLOs, says so itself).
    json_result_printed = False

    def __init__(self, *, json_mode: bool = False, verbose: bool = False) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        self.out = RichConsole(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = RichConsole(file=sys.stderr, highlight=False, soft_wrap=True)

    # ---- messages (stderr)
    def info(self, message: str) -> None:
        """A neutral note on stderr."""
        self.err.print(message, markup=False)

    def debug(self, message: str) -> None:
        """A note shown only with -v."""
        if self.verbose:
            self.err.print(f"[dim]{_escape(message)}[/dim]")

    def success(self, message: str) -> None:
        """The line a command exists to print: stdout for people, nothing in JSON mode."""
        if not self.json_mode:
            self.out.print(f"[green]{_escape(message)}[/green]")

    def warning(self, message: str) -> None:
        """A warning on stderr."""
        self.err.print(f"[yellow]Warning:[/yellow] {_escape(message)}")

    def error(self, message: str, hint: str | None = None) -> None:
        """An error on stderr, with an optional hint."""
        self.err.print(f"[bold red]Error:[/bold red] {_escape(message)}")
        if hint:
            self.err.print(f"[dim]Hint: {_escape(hint)}[/dim]")

    # ---- results (stdout)
    def result(self, data: Any, human: str | None = None) -> None:
        """Print a command's result: JSON in JSON mode, else ``human`` (if given) as plain text."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
            Console.json_result_printed = True
        elif human is not None:
            # Plain write, not rich: results are for pipes too (rich would expand tabs and wrap lines).
            sys.stdout.write(human + "\n")
            sys.stdout.flush()

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
        """Print a table on stdout (callers print JSON instead in JSON mode)."""
        table = Table(title=title, show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("" if cell is None else str(cell) for cell in row))
        self.out.print(table)

    # ---- long work (stderr)
    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on stderr while a block runs (silent when stderr is not a terminal)."""
        with self.err.status(message):
            yield

    def progress(self, *extra_columns: Any) -> Progress:
        """A rich progress bar on stderr with count, rate columns from the caller, and ETA."""
        return Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            *extra_columns,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
