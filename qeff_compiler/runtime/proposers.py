"""Proposers of speculative decoding: where the K tokens the target verifies in one step come from.

- `PromptLookup`: no model. The longest n-gram (n ≤ `max_ngram`) ending the sequence so far that also occurs
  earlier in it (prompt + generated text); the tokens that followed its latest earlier occurrence are proposed.
  Code and documents repeat names and phrases, which is what it finds.
- `DraftModel`: a smaller compiled MPT with the target's vocabulary runs its own decode steps and proposes its
  greedy (or sampled) continuation, with the probabilities it sampled from (the rejection rule needs them).

A proposer keeps its own state across steps (the draft's KV cache). Before each step it is handed every row's
sequence so far; a draft compares it with the tokens its cache holds and keeps only the common prefix, so the
cache slots of rejected proposals are simply written over by the next tokens (a slot after a query's position
is never attended, and every slot up to it has been written with an accepted token by then).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from qeff_compiler.runtime.generate import DeviceClock, Executor, StaticShapes, run_with_cache
from qeff_compiler.runtime.sampling import TokenSampler


@dataclass(frozen=True)
class Proposal:
    """Per row, up to k proposed tokens; with `probabilities` [n, vocab] when they were sampled from a
    distribution (None: proposed deterministically, the rule then treats the distribution as one-hot)."""

    tokens: list[list[int]]
    probabilities: list[torch.Tensor | None]


class Proposer(Protocol):
    """What the speculative loop asks of a proposer."""

    #: simulated device seconds and host wall seconds the proposer spent so far, and its decode calls
    device_s: float
    host_s: float
    decode_calls: int

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        """Called once after the target's prefill, with the prompts."""

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> Proposal:
        """Up to counts[row] tokens to continue each row's sequence (0: the row proposes nothing)."""


class NoProposals:
    """Proposes nothing: the verify specialization then decodes one token per step (plain decoding)."""

    device_s = 0.0
    host_s = 0.0
    decode_calls = 0

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        del prompts

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> Proposal:
        return Proposal([[] for _ in histories], [None for _ in histories])


class PromptLookup:
    """N-gram lookup in the sequence itself (prompt-lookup decoding)."""

    device_s = 0.0
    host_s = 0.0
    decode_calls = 0

    def __init__(self, max_ngram: int = 3) -> None:
        self.max_ngram = max_ngram

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        del prompts

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> Proposal:
        start = time.perf_counter()
        pairs = zip(histories, counts, strict=True)
        tokens = [lookup(list(history), count, self.max_ngram) for history, count in pairs]
        self.host_s += time.perf_counter() - start
        return Proposal(tokens, [None for _ in tokens])


def lookup(history: list[int], count: int, max_ngram: int) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of the longest n-gram ending `history`."""
    if count <= 0:
        return []
    for n in range(min(max_ngram, len(history) - 1), 0, -1):
        tail = history[-n:]
        for begin in range(len(history) - n - 1, -1, -1):  # latest first; the tail itself is excluded
            if history[begin : begin + n] == tail:
                return history[begin + n : begin + n + count]
    return []


class DraftModel:
    """A compiled draft MPT proposing with its own prefill and decode programs and KV cache."""

    def __init__(
        self,
        prefill: Executor,
        decode: Executor,
        shapes: StaticShapes,
        cache_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        clock: DeviceClock,
        sampler: TokenSampler,
    ) -> None:
        self.prefill, self.decode, self.shapes, self.clock, self.sampler = prefill, decode, shapes, clock, sampler
        self.cache_specs = cache_specs
        self.cache: dict[str, torch.Tensor] = {}
        #: per row, the tokens whose keys and values the draft's cache holds at positions 0..len-1
        self.fed: list[list[int]] = []
        self.device_s = 0.0
        self.host_s = 0.0
        #: draft program calls so far (a benchmark re-times them at another model shape)
        self.prefill_calls = 0
        self.decode_calls = 0

    def start(self, prompts: Sequence[Sequence[int]]) -> None:
        """Prefill the draft's cache with the prompts, chunk by chunk (their last logits are not needed)."""
        start = time.perf_counter()
        self.cache = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in self.cache_specs.items()}
        chunk_len = self.shapes.prefill_len
        chunks = -(-max(len(p) for p in prompts) // chunk_len)
        for chunk in range(chunks):
            pieces = [list(p[chunk * chunk_len : (chunk + 1) * chunk_len]) for p in prompts]
            self._call(self.prefill, chunk_len, [(chunk * chunk_len, piece) for piece in pieces])
        self.device_s += chunks * self.clock.prefill_chunk_s
        self.prefill_calls += chunks
        self.fed = [list(p) for p in prompts]
        self.host_s += time.perf_counter() - start

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> Proposal:
        """Feed each row's unseen tokens one decode step at a time, then its own proposals, until it has
        counts[row] of them; a row that is done (or proposes nothing) rides along as padding."""
        start = time.perf_counter()
        pending: list[list[int]] = []
        for row, history in enumerate(histories):
            common = common_prefix(self.fed[row], history)
            del self.fed[row][common:]  # rejected proposals: their slots are rewritten before being attended
            pending.append(list(history[common:]) if counts[row] > 0 else [])
        tokens: list[list[int]] = [[] for _ in histories]
        distributions: list[list[torch.Tensor]] = [[] for _ in histories]
        while any(pending):
            feeds = [(len(self.fed[row]), queue[:1]) if queue else (0, []) for row, queue in enumerate(pending)]
            logits = self._call(self.decode, 1, feeds)[:, 0]
            self.device_s += self.clock.decode_step_s
            self.decode_calls += 1
            sampled = self.sampler.config.do_sample
            probabilities = self.sampler.probabilities(logits) if sampled else None
            chosen = None if sampled else self.sampler(logits)
            for row, queue in enumerate(pending):
                if not queue:
                    continue
                self.fed[row].append(queue.pop(0))
                if queue:
                    continue  # still catching up with the target's sequence
                if chosen is not None:
                    token = int(chosen[row])
                elif probabilities is not None:
                    token = int(torch.multinomial(probabilities[row], 1, generator=self.sampler.generator))
                    distributions[row].append(probabilities[row])
                tokens[row].append(token)
                if len(tokens[row]) < counts[row]:
                    queue.append(token)  # the proposal is fed back to propose the next one
        self.host_s += time.perf_counter() - start
        stacked = [torch.stack(d) if d else None for d in distributions]
        return Proposal(tokens, stacked if self.sampler.config.do_sample else [None for _ in tokens])

    def _call(self, executor: Executor, width: int, feeds: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor:
        """One program call: row r gets tokens feeds[r][1] at positions from feeds[r][0]; returns the logits."""
        ids = torch.zeros(self.shapes.batch_size, width, dtype=torch.int64)
        positions = torch.full((self.shapes.batch_size, width), -1, dtype=torch.int64)
        for row, (first, piece) in enumerate(feeds):
            if piece:
                ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.int64)
                positions[row, : len(piece)] = torch.arange(first, first + len(piece))
        return run_with_cache(executor, ids, positions, self.cache)["logits"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length
