"""The artifact's tokenizer, which the server needs: prompts arrive as text and answers leave as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qeff_compiler.capture.tokenizer_files import check_tokenizer_files
from qeff_compiler.errors import InvalidArgumentError


def load_tokenizer(artifact: Path) -> Any:
    """The tokenizer copied into the artifact at compile time; refused when there is none."""
    if not (artifact / "tokenizer.json").is_file():
        raise InvalidArgumentError(
            f"{artifact} has no tokenizer; serving needs one to read prompts and write text "
            "(compile from a model directory that has tokenizer.json)"
        )
    check_tokenizer_files(artifact)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifact)
