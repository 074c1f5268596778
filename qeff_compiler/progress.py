"""Progress reporting for the stages of a compile that touch real weights (minutes at 7B scale).

A stage is entered with its total bytes (None: unknown, shown as a spinner) and yields `advance(bytes)`.
`RichProgress` draws one rich bar per stage with bytes done, throughput and an ETA on stderr; `NO_PROGRESS`
does nothing (the default of the Python API, tests, and non-terminal output).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress as RichProgressDisplay,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

Advance = Callable[[int], None]


class Progress(Protocol):
    def stage(self, description: str, total_bytes: int | None) -> contextlib.AbstractContextManager[Advance]:
        """Report one stage; the yielded function is called with each increment of bytes processed."""
        ...


class _NoProgress:
    @contextlib.contextmanager
    def stage(self, description: str, total_bytes: int | None) -> Iterator[Advance]:
        yield lambda _bytes: None


NO_PROGRESS: Progress = _NoProgress()


class RichProgress:
    """One rich progress bar per stage, kept on screen when it finishes (a record of where the time went)."""

    def __init__(self, console: Console | None = None) -> None:
        self._display = RichProgressDisplay(
            SpinnerColumn(),
            TextColumn("{task.description:<22}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )

    @contextlib.contextmanager
    def stage(self, description: str, total_bytes: int | None) -> Iterator[Advance]:
        with self._display:
            task = self._display.add_task(description, total=total_bytes)
            yield lambda done: self._display.advance(task, done)
            self._display.update(task, completed=total_bytes or 0, total=total_bytes or 0)


def make_progress(enabled: bool | None) -> Progress:
    """`RichProgress` when asked, `NO_PROGRESS` when not; None = only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return RichProgress() if enabled else NO_PROGRESS
