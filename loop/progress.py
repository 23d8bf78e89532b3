"""Progress reporting for long stages: rich bars on a terminal, nothing in tests; where an iteration is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A context manager yielding `advance(n)` for one unit of long work."""
        ...


class NullReporter:
    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n: None


class RichReporter:
    def __init__(self, console: Console):
        self.console = console

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)


@dataclass
class Position:
    """Where a running iteration is, for the line an interruption prints."""

    iteration: int | None = None
    stage: str | None = None

    def describe(self) -> str:
        if self.iteration is None:
            return "the start of the iteration (nothing was recorded yet)"
        if self.stage is None:
            return f"iteration {self.iteration}, between stages"
        return f"stage {self.stage} of iteration {self.iteration}"
