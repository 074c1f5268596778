"""Write result files and directories so that they appear complete or not at all.

Everything the product writes (artifact directories, calibration tables, traces, plots, benchmark results) is
first written to a hidden sibling, `.NAME.partial-PID` (plus NAME's suffix, so writers that pick a format by
extension still do), and renamed into place when complete: a rename within one directory is atomic on POSIX.
When anything interrupts the write (a full disk, a file-size limit, Ctrl-C, an error of the caller's), the sibling
is removed and the destination keeps what it held before. Operating-system errors while writing (and
safetensors' own I/O errors, which are not `OSError`) become an `ArtifactError` that names the destination.

    with atomic_file("out/trace.json") as temp:
        temp.write_text(text)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from qeff_compiler.errors import ArtifactError


def partial_path(path: Path) -> Path:
    """The hidden sibling `path` is written to before it is renamed into place."""
    return path.parent / f".{path.name}.partial-{os.getpid()}{path.suffix}"


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn an OS (or safetensors I/O) error raised while writing `path` into an `ArtifactError` naming it."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise ArtifactError(f"cannot write {path}: {reason}{where}") from exc
    except SafetensorError as exc:
        raise ArtifactError(f"cannot write {path}: {exc}") from exc


def check_writable(path: str | Path) -> None:
    """Refuse early (before any expensive work) a destination that cannot be created: its nearest existing
    ancestor must be a writable directory."""
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArtifactError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write {path}: directory {ancestor} is not writable")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` when the block finishes without error."""
    path = Path(path)
    temp = partial_path(path)
    check_writable(path)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield temp
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_file`)."""
    with atomic_file(path) as temp:
        temp.write_text(text)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; when the block finishes without error it becomes `path`
    (an existing `path` is swapped out, then removed). The caller decides whether replacing is allowed."""
    path = Path(path)
    staging = partial_path(path)
    check_writable(path)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
            _move_into_place(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, path: Path) -> None:
    if not path.exists():
        os.rename(staging, path)
        return
    retired = path.parent / f".{path.name}.old-{os.getpid()}"
    os.rename(path, retired)
    os.rename(staging, path)
    if retired.is_dir():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink(missing_ok=True)
