"""Write result files and directories so that they appear complete or not at all, and never delete what is not ours.

Everything the product writes (artifact directories, calibration tables, traces, plots, benchmark results) is
first written to a hidden sibling, `.NAME.partial-PID-TOKEN` (plus NAME's suffix, so writers that pick a format by
extension still do), and renamed into place when complete: a rename within one directory is atomic on POSIX.
When anything interrupts the write (a full disk, a file-size limit, Ctrl-C, SIGTERM, an error of the caller's), the
sibling is removed and the destination keeps what it held before. Operating-system errors while writing (and
safetensors' own I/O errors, which are not `OSError`) become an `ArtifactError` that names the destination.

A directory is published exclusively: the final rename refuses (Linux `renameat2(RENAME_NOREPLACE)`, or a swap with
`RENAME_EXCHANGE` when replacing) a destination that appeared or changed while this writer was working, so of two
writers to one output exactly one wins and nothing that appeared meanwhile is deleted. Staging directories left by
a writer that was killed (SIGKILL, a power cut) are removed by the next write to the same output, once their
process is gone.

    with atomic_file("out/trace.json") as temp:
        temp.write_text(text)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors import SafetensorError

from qeff_compiler.errors import ArtifactError, ArtifactExistsError

logger = logging.getLogger(__name__)

#: the longest file name (in bytes) Linux file systems accept
NAME_MAX = 255
_PARTIAL = ".partial-"
#: the name a replaced directory was parked under by qeff-compiler 0.1's writer; cleaned like a staging directory
_RETIRED = ".old-"


# names -----------------------------------------------------------------------------------------------------------
def _staging_prefix(path: Path) -> str:
    """The hidden name stem of `path`'s staging siblings: `.NAME`, or a digest of NAME when NAME is so long that a
    staging name would exceed NAME_MAX (a legal output name must not fail at the end of a compile)."""
    stem = f".{path.name}"
    if len(os.fsencode(stem)) + len(_PARTIAL) + 40 + len(os.fsencode(path.suffix)) <= NAME_MAX:
        return stem
    return "." + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:32]


def partial_path(path: Path) -> Path:
    """A fresh hidden sibling of `path` to write before it is renamed into place (unique per call: two writers in
    one process never share it)."""
    return path.parent / f"{_staging_prefix(path)}{_PARTIAL}{os.getpid()}-{secrets.token_hex(4)}{_staging_suffix(path)}"


def _staging_suffix(path: Path) -> str:
    return path.suffix if len(os.fsencode(path.suffix)) <= 16 else ""


def check_name(path: Path) -> None:
    """Refuse an output name the file system cannot hold, before any work."""
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise ArtifactError(
            f"cannot write {path}: its name is {len(os.fsencode(path.name))} bytes, the limit is {NAME_MAX}"
        )


# errors ----------------------------------------------------------------------------------------------------------
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
    """Refuse early (before any expensive work) a destination that cannot be created: its name must fit the file
    system and its nearest existing ancestor must be a writable directory."""
    path = Path(path).absolute()
    check_name(path)
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArtifactError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write {path}: directory {ancestor} is not writable")


# files -----------------------------------------------------------------------------------------------------------
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


# directories -----------------------------------------------------------------------------------------------------
#: checks that an existing destination may be replaced; raises (an `ArtifactExistsError`) when it may not
Replaceable = Callable[[Path], None]


@contextlib.contextmanager
def atomic_directory(path: str | Path, replaceable: Replaceable) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; when the block finishes without error it becomes `path`.

    `replaceable(path)` decides whether an existing `path` may be replaced (it raises when not): it is asked, when
    `path` exists, before the work and again at the final step. The final step also refuses a `path` that appeared,
    vanished or was replaced by another directory while the block ran (another writer won), so nothing that appeared
    meanwhile is deleted."""
    path = Path(path)
    check_writable(path)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        expected = _identity(path)
        if expected is not None:
            replaceable(path)
        staging = partial_path(path)
        staging.mkdir()
        try:
            yield staging
            _publish(staging, path, expected, replaceable)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What is at `path` (device, inode and change time, without following a link: a directory deleted and made
    anew may get the same inode, never the same change time), or None when nothing is."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino, status.st_ctime_ns


def _publish(staging: Path, path: Path, expected: tuple[int, int, int] | None, replaceable: Replaceable) -> None:
    """Move `staging` to `path` if `path` is still what it was when the write began (under a lock on the parent
    directory, which every qeff-compiler writer takes); a replaced directory ends up at the staging name, removed by
    the caller."""
    with _locked(path.parent):
        if _identity(path) != expected:
            raise _lost_race(path)
        if expected is None:
            _rename_noreplace(staging, path)
            return
        replaceable(path)  # still replaceable: nothing foreign was put into it meanwhile
        _exchange(staging, path)


def _lost_race(path: Path) -> ArtifactExistsError:
    return ArtifactExistsError(
        f"output {path} was created or replaced by another process while this one was writing; it was left as it "
        "is and this output was discarded"
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on `directory` for the few system calls of a final step."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


# Linux renameat2 (glibc >= 2.28); its flags from <linux/fs.h>
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _try_renameat2(source: Path, destination: Path, flags: int) -> bool:
    """Rename with `flags`; False when this kernel, libc or file system lacks renameat2 or the flag."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(destination))


def _rename_noreplace(source: Path, destination: Path) -> None:
    try:
        if _try_renameat2(source, destination, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise _lost_race(destination) from None
    if destination.exists() or destination.is_symlink():  # fallback: checked under the lock, then renamed
        raise _lost_race(destination)
    os.rename(source, destination)


def _exchange(staging: Path, path: Path) -> None:
    """Swap `staging` and `path` atomically (the fallback parks `path` under the staging name first)."""
    if _try_renameat2(staging, path, _RENAME_EXCHANGE):
        return
    parked = partial_path(path)
    os.rename(path, parked)
    os.rename(staging, path)
    os.rename(parked, staging)


# leftovers -------------------------------------------------------------------------------------------------------
def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging (and parked) siblings of `path` whose writer process no longer exists, saying so; those
    of live processes (another compile to the same output) are left alone."""
    removed = []
    for sibling in path.parent.iterdir() if path.parent.is_dir() else ():
        pid = _writer_pid(sibling.name, path)
        if pid is None or pid == os.getpid() or _process_exists(pid):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        logger.warning(
            "removed %s, left by an interrupted write to %s (process %d no longer exists)", sibling, path, pid
        )
        removed.append(sibling)
    return removed


def _writer_pid(name: str, path: Path) -> int | None:
    """The process id in `name` if it is a staging (or parked) sibling of `path`, else None."""
    prefix = re.escape(_staging_prefix(path))
    staging = re.fullmatch(rf"{prefix}{re.escape(_PARTIAL)}(\d+)-[0-9a-f]{{8}}{re.escape(_staging_suffix(path))}", name)
    parked = re.fullmatch(rf"{prefix}{re.escape(_RETIRED)}(\d+)", name)
    match = staging or parked
    return int(match.group(1)) if match else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
