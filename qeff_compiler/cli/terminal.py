"""What `qeffc` reads from and writes to the terminal: prompt text from argv, and standard output that may refuse.

A command-line argument with bytes that are not UTF-8 reaches Python as lone surrogates (PEP 383), which the
tokenizer cannot encode; standard output may have an encoding without the generated text's characters
(`PYTHONIOENCODING=ascii`), or be a device that fails every write (`/dev/full`, a closed pipe). Each of these
ends as a `QeffError` or as correct output, never as a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from qeff_compiler.errors import ArtifactError, InvalidArgumentError

#: lone surrogates Python uses for undecodable argv bytes 0x80..0xFF (surrogateescape)
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def check_prompt_text(prompt: str, option: str = "--prompt") -> str:
    """`prompt` if it is valid Unicode text; else an `InvalidArgumentError` naming the first bad byte or code point."""
    for position, char in enumerate(prompt):
        if 0xD800 <= ord(char) <= 0xDFFF:
            what = (
                f"byte {ord(char) - 0xDC00:#04x}"
                if ord(char) in _ESCAPED_BYTES
                else f"lone surrogate U+{ord(char):04X}"
            )
            raise InvalidArgumentError(
                f"{option} is not valid UTF-8 text: {what} at character {position} of {prompt[:position]!r}…; "
                "pass text in UTF-8 (or --token-ids)"
            )
    return prompt


class _GuardedStdout(io.TextIOBase):
    """Standard output that writes characters its encoding lacks as backslash escapes, and turns a failed write
    (a full device, a closed pipe) into an `ArtifactError`."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else _Closed()

    def write(self, text: str) -> int:
        try:
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:
                encoding = self.stream.encoding or "ascii"
                return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except OSError as exc:
            raise ArtifactError(f"cannot write to standard output: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise ArtifactError(f"cannot write to standard output: {exc.strerror or exc}") from exc

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, … as the real stream has them
        return getattr(self.stream, name)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding


class _Closed(io.TextIOBase):
    """What Python leaves as `sys.stdout` (None) when file descriptor 1 is closed (`qeffc run … >&-`)."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        raise OSError("standard output is closed")

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """Route `sys.stdout` through `_GuardedStdout` meanwhile (and flush it, so a failing device is found here)."""
    original = sys.stdout
    sys.stdout = _GuardedStdout(original)
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = original


def discard_unwritable_stdout() -> None:
    """At exit, after an `ArtifactError`: point file descriptor 1 at /dev/null, so the interpreter's final flush of
    what could not be written does not print a second error (and change the exit code)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
