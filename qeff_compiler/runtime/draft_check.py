"""Whether a compiled draft model can propose tokens for a speculative-decoding target.

The target verifies token ids, so the draft must speak the same vocabulary (same size, and the same tokenizer
when both models have one), fill the same batch rows per call (through slots: have as many slots, one per
target slot), decode one token per call, and hold the whole sequence in its cache. Each mismatch is refused with
what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from transformers import MptConfig

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.runtime.generate import StaticShapes

#: `generate(draft=...)`'s name of the prompt-lookup proposer
PROMPT_LOOKUP = "prompt-lookup"


class _Options(Protocol):
    @property
    def num_speculative_tokens(self) -> int | None: ...

    @property
    def full_batch_size(self) -> int | None: ...


class SpeculativeModel(Protocol):
    """What the check reads of a compiled model."""

    @property
    def config(self) -> MptConfig: ...

    @property
    def shapes(self) -> StaticShapes: ...

    @property
    def options(self) -> _Options: ...

    @property
    def source_directory(self) -> Path | None: ...


def check_draft(target: SpeculativeModel, draft: SpeculativeModel, length: int) -> None:
    """Refuse a draft that cannot propose for `target` over sequences of `length` tokens."""
    _check_vocabulary(target, draft)
    if draft.shapes.batch_size != target.shapes.batch_size:
        raise InvalidArgumentError(
            f"the draft was compiled for batch_size={draft.shapes.batch_size}, the target for "
            f"batch_size={target.shapes.batch_size}: compile the draft with the target's batch size"
        )
    if length > draft.shapes.ctx_len:
        raise InvalidArgumentError(
            f"prompt + max_new_tokens ({length} tokens) exceeds the draft's ctx_len={draft.shapes.ctx_len}"
        )


def check_slot_draft(target: SpeculativeModel, draft: SpeculativeModel) -> None:
    """Refuse a draft that cannot propose for every slot of `target` (continuous batching): it needs one slot per
    target slot (its full_batch_size, or its batch_size without one) and room for any sequence the target holds."""
    _check_vocabulary(target, draft)
    ours, theirs = _slots(target), _slots(draft)
    if theirs != ours:
        raise InvalidArgumentError(
            f"the draft has {theirs} slots (its full_batch_size, else its batch_size), the target {ours}: a draft "
            f"proposes for every slot of the target; compile it with full_batch_size={ours}"
        )
    if draft.shapes.ctx_len < target.shapes.ctx_len:
        raise InvalidArgumentError(
            f"the draft's ctx_len={draft.shapes.ctx_len} is shorter than the target's ctx_len="
            f"{target.shapes.ctx_len}: a draft serving slots must hold every sequence the target can"
        )


def _slots(model: SpeculativeModel) -> int:
    return model.options.full_batch_size or model.shapes.batch_size


def _check_vocabulary(target: SpeculativeModel, draft: SpeculativeModel) -> None:
    """Refuse a draft that verifies nothing (K of its own) or speaks another vocabulary than the target."""
    if draft.options.num_speculative_tokens is not None:
        raise InvalidArgumentError(
            f"the draft was compiled with num_speculative_tokens={draft.options.num_speculative_tokens}; "
            "a draft decodes one token per call: compile it without num_speculative_tokens"
        )
    if draft.config.vocab_size != target.config.vocab_size:
        raise InvalidArgumentError(
            f"the draft's vocabulary has {draft.config.vocab_size} tokens, the target's {target.config.vocab_size}: "
            "a draft must share the target's tokenizer"
        )
    ours, theirs = _vocabulary(target.source_directory), _vocabulary(draft.source_directory)
    if ours is not None and theirs is not None and ours != theirs:
        raise InvalidArgumentError(
            f"the draft's tokenizer ({draft.source_directory}/tokenizer.json) maps tokens to other ids than the "
            f"target's ({target.source_directory}/tokenizer.json): a draft must share the target's tokenizer"
        )


def _vocabulary(directory: Path | None) -> Any:
    """The token-to-id map and added tokens of a model directory's tokenizer.json (None: it has none)."""
    path = None if directory is None else directory / "tokenizer.json"
    if path is None or not path.is_file():
        return None
    content = json.loads(path.read_text(encoding="utf-8"))
    return content.get("model", {}).get("vocab"), content.get("added_tokens")
