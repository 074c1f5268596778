"""The KV cache of a continuous batch: `num_slots` rows, each a request's, and the two calls that use it.

A model compiled with `full_batch_size=F` has the programs QEfficient's continuous batching uses: prefill takes one
request (`input_ids` [1, prefill_len]) and a `batch_index` [1, 1] naming the slot it writes; decode runs all F
slots at once. A model compiled without it still serves: its prefill runs all `batch_size` rows with only the
slot's row valid (positions −1 elsewhere, which the cache never stores), so every row is a slot.
A speculative-decoding target's decode program takes K+1 positions per slot (`verify`: a slot's last token and
its proposals; `decode` is the one-position case).

With compute-context-length buckets the programs take `comp_ctx_lengths`, a tensor whose *length* N is the
bucket: attention reads only the first N cache positions. Each call gets the smallest bucket above every
position it writes, so a short sequence does not pay for the whole ctx_len.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from qeff_compiler.ir.program import Program
from qeff_compiler.runtime.buckets import bucket_for

Executor = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
BATCH_INDEX = "batch_index"
COMP_CTX_LENGTHS = "comp_ctx_lengths"


class SlotClock(Protocol):
    """Simulated device seconds of one program call at a context bucket."""

    @property
    def device(self) -> str: ...

    def prefill_call_s(self, context: int) -> float: ...

    def decode_call_s(self, context: int) -> float: ...


@dataclass(frozen=True)
class CallResult:
    """Logits of a call's rows ([rows, vocab], or [rows, positions, vocab] for `SlotCache.verify`) and the
    context bucket it ran at."""

    logits: torch.Tensor
    bucket: int


class SlotCache:
    """The cache tensors of every slot and the prefill / decode calls that read and write them."""

    def __init__(
        self,
        prefill: Program,
        decode: Program,
        executors: tuple[Executor, Executor],
        prefill_buckets: Sequence[int] | None,
        decode_buckets: Sequence[int] | None,
    ) -> None:
        self._prefill, self._decode = executors
        names = {spec.name for spec in prefill.inputs}
        self.indexed = BATCH_INDEX in names
        self.bucketed = COMP_CTX_LENGTHS in names
        (ids,) = [s for s in prefill.inputs if s.role == "input_ids"]
        self.prefill_rows, self.prefill_len = ids.shape
        (decode_ids,) = [s for s in decode.inputs if s.role == "input_ids"]
        self.num_slots, self.decode_len = decode_ids.shape
        self.cache = {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in decode.inputs if s.role.startswith("past_")}
        self.ctx_len = next(s.shape[2] for s in decode.inputs if s.role == "past_key")
        self.prefill_buckets = tuple(prefill_buckets or (self.ctx_len,))
        self.decode_buckets = tuple(decode_buckets or (self.ctx_len,))

    def prefill(self, slot: int, prompt: Sequence[int]) -> list[CallResult]:
        """Write `prompt` into `slot`, chunk by chunk; the last result's logits row 0 is its next-token logits."""
        row = 0 if self.indexed else slot
        results = []
        for start in range(0, len(prompt), self.prefill_len):
            piece = list(prompt[start : start + self.prefill_len])
            ids = torch.zeros(self.prefill_rows, self.prefill_len, dtype=torch.int64)
            positions = torch.full((self.prefill_rows, self.prefill_len), -1, dtype=torch.int64)
            ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.int64)
            positions[row, : len(piece)] = torch.arange(start, start + len(piece))
            inputs = {"input_ids": ids, "position_ids": positions}
            if self.indexed:
                inputs[BATCH_INDEX] = torch.tensor([[slot]], dtype=torch.int64)
            bucket = bucket_for(self.prefill_buckets, start + len(piece) - 1)
            outputs = self._run(self._prefill, inputs, bucket)
            results.append(CallResult(outputs["logits"][row : row + 1, 0], bucket))
        return results

    def decode(self, tokens: Mapping[int, tuple[int, int]]) -> CallResult:
        """One step of every slot; `tokens` maps each live slot to (its last token, that token's position).
        Returns logits for every slot [num_slots, vocab] (rows of idle slots are meaningless)."""
        result = self.verify({slot: ([token], position) for slot, (token, position) in tokens.items()})
        return CallResult(result.logits[:, 0], result.bucket)

    def verify(self, feeds: Mapping[int, tuple[Sequence[int], int]]) -> CallResult:
        """One call of the decode program, `decode_len` positions per slot (K+1 for a speculative target):
        `feeds` maps each live slot to its tokens and the position of the first; the rest of its row is padding
        (position −1: neither written nor attended). The bucket holds the last position any slot writes.
        Returns logits [num_slots, decode_len, vocab] (rows of idle slots and padding are meaningless)."""
        ids = torch.zeros(self.num_slots, self.decode_len, dtype=torch.int64)
        positions = torch.full((self.num_slots, self.decode_len), -1, dtype=torch.int64)
        for slot, (tokens, first) in feeds.items():
            ids[slot, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.int64)
            positions[slot, : len(tokens)] = torch.arange(first, first + len(tokens))
        inputs = {"input_ids": ids, "position_ids": positions}
        if self.indexed:
            inputs[BATCH_INDEX] = torch.arange(self.num_slots, dtype=torch.int64)[:, None]
        bucket = bucket_for(self.decode_buckets, int(positions.max()))
        return CallResult(self._run(self._decode, inputs, bucket)["logits"], bucket)

    def _run(self, executor: Executor, inputs: dict[str, torch.Tensor], bucket: int) -> dict[str, torch.Tensor]:
        if self.bucketed:
            inputs[COMP_CTX_LENGTHS] = torch.zeros(bucket, dtype=torch.int64)  # only its length is read
        outputs = executor({**inputs, **self.cache})
        for name in self.cache:
            self.cache[name] = outputs[f"{name}_RetainedState"]
        return outputs
