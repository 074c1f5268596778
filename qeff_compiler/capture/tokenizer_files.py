"""Check a model directory's tokenizer files when the model is resolved, not when `qeffc run` first needs them.

A compile copies tokenizer.json (and tokenizer_config.json, special_tokens_map.json) into the artifact; a corrupt
one used to fail only later, at `run`, in the tokenizers library. Here each must be UTF-8 JSON of the right shape,
and tokenizer.json must parse as a tokenizer (the `tokenizers` library, which `run` loads it with, is the judge).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from qeff_compiler.capture.json_files import json_kind, read_json_object
from qeff_compiler.errors import ModelSourceError

#: text run through a tokenizer once: code, a non-ASCII letter, an emoji
_PROBE = "def f(x):\n    return x  # café 🙂"
#: files besides tokenizer.json that hold a JSON object
_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def check_tokenizer_files(directory: Path) -> None:
    """Raise a `ModelSourceError` naming the file and the problem for a tokenizer file that cannot be loaded."""
    for name in _SIDE_FILES:
        if (directory / name).is_file():
            fields = read_json_object(directory / name, ModelSourceError)
            if not isinstance(fields.get("tokenizer_class", ""), str):
                raise ModelSourceError(
                    f"{directory / name}: tokenizer_class must be a string, got {json_kind(fields['tokenizer_class'])}"
                )
    path = directory / "tokenizer.json"
    if not path.is_file():
        return
    fields = read_json_object(path, ModelSourceError)  # names undecodable bytes and JSON errors with the file
    if not isinstance(fields.get("added_tokens"), list):  # transformers' fast tokenizer reads it unguarded
        raise ModelSourceError(f"{path}: added_tokens must be a list, got {json_kind(fields.get('added_tokens'))}")
    from tokenizers import Tokenizer

    try:
        with _rust_panics_silenced():
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.decode(tokenizer.encode(_PROBE).ids)  # some broken parts fail only when used
    except BaseException as exc:  # narrowed below to what the library raises
        if not _is_tokenizers_refusal(exc):
            raise
        raise ModelSourceError(
            f"{path} is not a valid tokenizer: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc


def _is_tokenizers_refusal(exc: BaseException) -> bool:
    """The tokenizers library (Rust) reports a file it cannot parse as the bare `Exception` class, and some
    inconsistent files as a Rust panic (`pyo3_runtime.PanicException`, a BaseException no module exports)."""
    return type(exc) is Exception or type(exc).__name__ == "PanicException"


@contextlib.contextmanager
def _rust_panics_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile: a Rust panic prints its message (and a backtrace) there
    itself, and `qeffc` promises one line on stderr; the refusal says what failed instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
