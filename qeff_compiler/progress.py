"""Progress reporting for the long stages of a compile: those that touch real weights (minutes at 7B scale) and
w8a8 calibration (a forward pass per text window).

A stage is entered with its total amount (None: unknown, shown as a spinner) in a unit ("bytes", or a count such
as "windows") and yields `advance(amount)`. `RichProgress` draws a bar per stage on stderr, with the amount done
and, for bytes, throughput and an ETA; a finished stage is replaced by one summary line, so nothing is printed
twice. A stage without a total shows only its elapsed time (never "0/0 bytes"). `NO_PROGRESS` does nothing (the
default of the Python API, tests, and non-terminal output).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress as RichProgressDisplay,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[[int], None]


class Progress(Protocol):
    def stage(
        self, description: str, total: int | None, unit: str = "bytes"
    ) -> contextlib.AbstractContextManager[Advance]:
        """Report one stage; the yielded function is called with each increment of the amount processed."""
        ...


class _NoProgress:
    @contextlib.contextmanager
    def stage(self, description: str, total: int | None, unit: str = "bytes") -> Iterator[Advance]:
        yield lambda _amount: None


NO_PROGRESS: Progress = _NoProgress()


def amount(done: float, total: float | None, unit: str) -> str:
    """"1.2/3.4 GB", "3/12 windows"; "" without a total (nothing is known but the time)."""
    if total is None:
        return ""
    if unit == "bytes":
        return f"{decimal(int(done))}/{decimal(int(total))}"
    return f"{int(done)}/{int(total)} {unit}"


class _AmountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(amount(task.completed, task.total, task.fields.get("unit", "bytes")), style="progress.download")


class _SpeedColumn(ProgressColumn):
    """Bytes per second for byte stages with a total; nothing otherwise."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if task.total is None or task.fields.get("unit") != "bytes" or speed is None:
            return Text("")
        return Text(f"{decimal(int(speed))}/s", style="progress.data.speed")


class _RemainingColumn(TimeRemainingColumn):
    def render(self, task: Task) -> Text:
        return super().render(task) if task.total is not None and not task.finished else Text("")


class RichProgress:
    """A rich progress bar per running stage; a finished stage leaves one line (its amount and time)."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._display = RichProgressDisplay(
            SpinnerColumn(),
            TextColumn("{task.description:<22}"),
            BarColumn(),
            _AmountColumn(),
            _SpeedColumn(),
            TimeElapsedColumn(),
            _RemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._running = 0

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None, unit: str = "bytes") -> Iterator[Advance]:
        if self._running == 0:
            self._display.start()
        self._running += 1
        task = self._display.add_task(description, total=total, unit=unit)
        try:
            yield lambda done: self._display.advance(task, done)
        finally:
            (state,) = [t for t in self._display.tasks if t.id == task]
            self._display.remove_task(task)
            self._running -= 1
            if self._running == 0:
                self._display.stop()
        done = amount(state.completed, total, unit)  # only a stage that completed gets its line
        self._console.print(
            f"[green]✓[/] {description:<22} {done}{'  ' if done else ''}{state.elapsed or 0.0:.1f} s", highlight=False
        )


def make_progress(enabled: bool | None) -> Progress:
    """`RichProgress` when asked, `NO_PROGRESS` when not; None = only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return RichProgress() if enabled else NO_PROGRESS
