"""Progress of long stages: a process-global reporter hook, silent unless someone installs one.

Stages call ``track`` (around a loop) or ``stage`` (around a block that advances by hand);
neither depends on rich or Prefect. The command line installs ``RichReporter`` for the length
of a flow (``using``) when stdout is a terminal; tests install a recording one.

The reporter is a module global, not a context variable, on purpose: Prefect may run a task in
a worker thread, where a context variable set in the CLI's thread would not be visible.
Reporters must therefore accept calls from any thread (rich's ``Progress`` does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import count
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    """Receives progress: a task begins, advances, ends. Must accept calls from any thread."""

    def begin(self, description: str, total: float | None) -> int:
        """Start a task; ``total`` units of work (None: unknown). Return its id."""
        ...

    def advance(self, task: int, amount: float) -> None:
        """Record ``amount`` more units of work done on ``task``."""
        ...

    def end(self, task: int) -> None:
        """Mark ``task`` finished (also after an error)."""
        ...


class NullReporter:
    """The default: ignores everything, costs one method call per update."""

    def begin(self, description: str, total: float | None) -> int:
        """Return a dummy task id."""
        return 0

    def advance(self, task: int, amount: float) -> None:
        """Do nothing."""

    def end(self, task: int) -> None:
        """Do nothing."""


_NULL = NullReporter()
_lock = threading.Lock()
_reporter: Reporter = _NULL


def get_reporter() -> Reporter:
    """Return the installed reporter (``NullReporter`` unless one was installed)."""
    return _reporter


def set_reporter(reporter: Reporter | None) -> Reporter:
    """Install ``reporter`` (None: the silent default); return the one it replaces."""
    global _reporter
    with _lock:
        previous, _reporter = _reporter, reporter if reporter is not None else _NULL
    return previous


@contextmanager
def using(reporter: Reporter | None) -> Iterator[Reporter]:
    """Install ``reporter`` for the length of a ``with`` block, then restore the previous one."""
    previous = set_reporter(reporter)
    try:
        yield get_reporter()
    finally:
        set_reporter(previous)


class Step:
    """A running task of the installed reporter, advanced by hand inside ``stage``."""

    def __init__(self, reporter: Reporter, task: int) -> None:
        self._reporter = reporter
        self._task = task
        self.completed = 0.0

    def advance(self, amount: float = 1) -> None:
        """Record ``amount`` more units done."""
        self.completed += amount
        self._reporter.advance(self._task, amount)

    def update(self, completed: float) -> None:
        """Record that ``completed`` units are done in all (for callbacks that count totals)."""
        self.advance(completed - self.completed)


@contextmanager
def stage(description: str, total: float | None = None) -> Iterator[Step]:
    """Report a block of work as one task; advance it with the yielded ``Step``.

    Args:
        description: What is running, in a few words ("scoring customers").
        total: Units of work (rows, tables); None when unknown (a spinner only).
    """
    reporter = _reporter  # the same reporter from begin to end, even if another is installed
    task = reporter.begin(description, total)
    try:
        yield Step(reporter, task)
    finally:
        reporter.end(task)


def track(iterable: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Yield the items of ``iterable``, advancing one task by one unit after each.

    Args:
        iterable: The loop's items.
        description: What the loop does ("feature tables").
        total: Number of items; default ``len(iterable)`` when it has one.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with stage(description, total) as step:
        for item in iterable:
            yield item
            step.advance()


class RichReporter:
    """Shows each task as a rich progress line: spinner, description, bar, count, elapsed time.

    For the command line only: rich is imported when this class is instantiated, so library
    code never needs it. Use as a context manager (starts and stops the live display).
    """

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._ids = count(1)
        # Our task id -> [rich task id, total or None, units done]; rich ids are internal.
        self._tasks: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    def begin(self, description: str, total: float | None) -> int:
        """Add a progress line."""
        with self._lock:
            task = next(self._ids)
            rich_task = self._progress.add_task(description, total=total)
            self._tasks[task] = [rich_task, total, 0.0]
        return task

    def advance(self, task: int, amount: float) -> None:
        """Move a line's bar on."""
        with self._lock:
            entry = self._tasks.get(task)
            if entry is None:
                return
            entry[2] += amount
        self._progress.advance(entry[0], amount)

    def end(self, task: int) -> None:
        """Stop a line's clock; a line without a total shows what it counted, as done."""
        with self._lock:
            entry = self._tasks.pop(task, None)
        if entry is None:
            return
        rich_task, total, done = entry
        if total is None:
            self._progress.update(rich_task, total=done or 1, completed=done or 1)
        # A stopped task keeps its elapsed time on screen.
        self._progress.stop_task(rich_task)

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
