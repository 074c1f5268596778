"""A table whose rows appear as they finish, under an "n/N" status line: for commands whose rows each take long
(`qeffc eval`: minutes per row on a large text). Interrupted (Ctrl-C), the rows finished so far stay on screen."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table


class LiveRows:
    """`table` drawn live on `console` with a spinner naming the row in progress as "n/N: what"."""

    def __init__(self, table: Table, total: int, console: Console) -> None:
        self.table, self.total, self.console = table, total, console
        self._spinner = Spinner("dots", "")
        self._working = False
        self._live = Live(self._render(), console=console, refresh_per_second=8, transient=False)

    def start(self, number: int, what: str) -> None:
        """Row `number` (1-based) of `total` starts."""
        self._spinner.update(text=f"{number}/{self.total}: {what}")
        self._working = True
        self._live.update(self._render(), refresh=True)

    def add_row(self, *cells: str) -> None:
        self.table.add_row(*cells)
        self._working = False
        self._live.update(self._render(), refresh=True)

    def _render(self) -> Group:
        return Group(self.table, self._spinner) if self._working else Group(self.table)

    @contextlib.contextmanager
    def shown(self) -> Iterator[LiveRows]:
        """Show the table meanwhile; at the end (or on Ctrl-C) its finished rows stay printed, the spinner goes."""
        with self._live:
            try:
                yield self
            finally:
                self._working = False
                self._live.update(self._render(), refresh=True)
