"""The artifact's tokenizer, which the server needs: prompts arrive as text and answers leave as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qeff_compiler.capture.tokenizer_files import check_tokenizer_files
from qeff_compiler.errors import InvalidArgumentError


def require_tokenizer(artifact: Path) -> None:
    """Refuse an artifact without tokenizer before anything is loaded or bound (a path that is no directory is
    left to `load_compiled`, which says what it is)."""
    if artifact.is_dir() and not (artifact / "tokenizer.json").is_file():
        raise InvalidArgumentError(
            f"{artifact} has no tokenizer; serving needs one to read prompts and write text "
            "(compile from a model directory that has tokenizer.json)"
        )


def load_tokenizer(artifact: Path) -> Any:
    """The tokenizer copied into the artifact at compile time; refused when there is none or it is broken."""
    require_tokenizer(artifact)
    check_tokenizer_files(artifact)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifact)
