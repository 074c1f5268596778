"""This process's anonymous memory (RssAnon), sampled: the model in memory, unlike memory-mapped file pages.

A streamed compile reads its checkpoint through mmap; those pages count in RSS but belong to the page cache and
are dropped under pressure. `RssAnon` from /proc/self/status is the memory the process itself allocated, which is
what "the weights are never all in memory" is judged on. The kernel records only the peak of the whole RSS
(VmHWM), so the anonymous peak is sampled by a background thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (e.g. RssAnon, VmHWM); 0 where /proc does not exist."""
    if not _STATUS.is_file():
        return 0
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Context manager sampling RssAnon every `interval` seconds; `peak_mb` is the largest sample (and the
    values at entry and exit, so a short run still has two)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self.peak_kb = status_kb("RssAnon")
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))
