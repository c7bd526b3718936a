"""Output: human tables on stdout, or exactly one JSON document with ``--json``; notes and
warnings on stderr; progress bars on stderr, and only when it is a terminal."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from types import TracebackType
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from backdrop_cli.errors import BadUsage


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole lines of long keys instead of rich's 80-column default.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 200
    # Keys, colour metadata and error messages are uploaders' text: a plain string is never read
    # as markup (``[/bold]`` would raise, ``[draft]`` would vanish) or emoji codes (``:x:``).
    # Styled output is built with Text and column styles instead.
    return Console(file=stream, width=width, highlight=False, soft_wrap=False, markup=False, emoji=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):  # DynamoDB numbers and money: whole numbers stay whole
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class Ui:
    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)
        self._emitted = False

    # ------------------------------------------------------------------ output
    def emit(self, document: dict[str, Any]) -> None:
        """The one JSON document of a ``--json`` run."""
        if self._emitted:
            raise RuntimeError("a --json run prints exactly one document")
        self._emitted = True
        sys.stdout.write(json.dumps(document, indent=2, default=_plain, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def print(self, *renderables: Any) -> None:
        """Human output (nothing of it with --json)."""
        if not self.as_json:
            self.out.print(*renderables)

    def note(self, message: str) -> None:
        """A remark for the person at the terminal (stderr, also with --json)."""
        self.err.print(message)

    # ------------------------------------------------------------------ interaction
    @property
    def interactive(self) -> bool:
        return not self.as_json and sys.stdin.isatty() and sys.stderr.isatty()

    def confirm_cost(self, question: str, *, yes: bool) -> None:
        """Costly steps need --yes, or a yes at an interactive prompt that shows the cost."""
        if yes:
            return
        if not self.interactive:
            raise BadUsage(f"{question} Refusing without --yes (no terminal to ask at).")
        if not click.confirm(question, default=False, err=True):
            raise click.Abort()

    def progress(self) -> Bar:
        return Bar(self.err)


class Bar:
    """A rich progress display on stderr when it is a terminal; silent otherwise."""

    def __init__(self, console: Console) -> None:
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}", markup=False),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Bar:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress:
            self._progress.stop()

    def update(
        self,
        name: str,
        *,
        completed: int,
        total: int | None,
        description: str | None = None,
        detail: str = "",
    ) -> None:
        if not self._progress:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(description or name, total=total, detail=detail)
        self._progress.update(
            self._tasks[name], completed=completed, total=total, description=description, detail=detail
        )


def table(*columns: str, title: str | None = None, **options: Any) -> Table:
    """Columns by name: ``>name`` is right-aligned, ``~name`` may wrap (keys, reasons); the others
    never wrap, so that ids and times stay whole and copyable."""
    grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, **options)
    for column in columns:
        name = column.lstrip(">~")
        wraps = column.startswith("~")
        grid.add_column(
            name,
            justify="right" if column.startswith(">") else "left",
            overflow="fold" if wraps else "ellipsis",
            no_wrap=not wraps,
            min_width=16 if wraps else None,  # never squeezed away by the columns that do not wrap
        )
    return grid


def facts(title: str | None = None) -> Table:
    """A two-column table of labelled values."""
    grid = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    return grid
