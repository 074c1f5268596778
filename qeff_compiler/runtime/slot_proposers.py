"""Proposers of speculative decoding over the slots of a continuous batch (`runtime.scheduler`).

A slot changes hands between requests, so a proposer here is told when a request takes a slot (`admit`) and is
then asked, each verify step, for every live slot's proposal given that slot's sequence so far:

- `StatelessSlots` wraps a proposer that keeps no state between steps (prompt lookup, or no proposals): it
  proposes from each slot's sequence alone.
- `SlotDraft` is a draft model with its own cache of as many slots as the target's: a request's prompt is
  prefilled into the draft's slot of the same number when it is admitted, and each step feeds every slot's
  tokens the draft has not seen (the target's accepted ones), then its own proposals. As in `DraftModel`, the
  draft keeps only the prefix of its fed tokens the slot's sequence still has; the cache slots of rejected
  proposals (and of an earlier request in that slot) lie after every query's position until they are written
  again, so they are never attended.

Every draft program call is returned as a `DraftCall`, so the scheduler charges it on its simulated clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from qeff_compiler.runtime.proposers import Proposal, Proposer, common_prefix
from qeff_compiler.runtime.sampling import TokenSampler
from qeff_compiler.runtime.slots import SlotCache, SlotClock


@dataclass(frozen=True)
class DraftCall:
    """One program call of a draft model: "draft-prefill" (a chunk of one slot's prompt) or "draft" (one decode
    step of the slots it served), its context bucket and simulated seconds."""

    kind: str
    slots: tuple[int, ...]
    bucket: int
    seconds: float


class SlotProposer(Protocol):
    """What the scheduler asks of a proposer serving slots."""

    def admit(self, slot: int, prompt: Sequence[int], sampler: TokenSampler) -> list[DraftCall]:
        """A request with `prompt` took `slot`; `sampler` is its own (its settings, its random stream)."""

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[Proposal, list[DraftCall]]:
        """Up to counts[slot] tokens continuing each slot's sequence (idle slots: count 0), and the calls made."""


class StatelessSlots:
    """A proposer that needs nothing but each slot's sequence (`PromptLookup`, `NoProposals`)."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer

    def admit(self, slot: int, prompt: Sequence[int], sampler: TokenSampler) -> list[DraftCall]:
        del slot, prompt, sampler
        return []

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[Proposal, list[DraftCall]]:
        return self.proposer.propose(histories, counts), []


class SlotDraft:
    """A compiled draft model proposing from its own slot cache, one slot per target slot."""

    def __init__(self, cache: SlotCache, clock: SlotClock) -> None:
        self.cache, self.clock = cache, clock
        #: per slot, the tokens whose keys and values the draft's cache holds at positions 0..len-1
        self.fed: list[list[int]] = [[] for _ in range(cache.num_slots)]
        self.samplers: dict[int, TokenSampler] = {}

    def admit(self, slot: int, prompt: Sequence[int], sampler: TokenSampler) -> list[DraftCall]:
        """Prefill the draft's `slot` with the prompt (its logits are not needed)."""
        results = self.cache.prefill(slot, prompt)
        self.fed[slot], self.samplers[slot] = list(prompt), sampler
        return [DraftCall("draft-prefill", (slot,), r.bucket, self.clock.prefill_call_s(r.bucket)) for r in results]

    def propose(self, histories: Sequence[Sequence[int]], counts: Sequence[int]) -> tuple[Proposal, list[DraftCall]]:
        """Feed each slot's unseen tokens one decode step at a time, then its own proposals, until it has
        counts[slot] of them; slots with nothing to feed ride along as padding."""
        pending: list[list[int]] = []
        for slot, history in enumerate(histories):
            common = common_prefix(self.fed[slot], history)
            del self.fed[slot][common:]  # rejected proposals: rewritten before any query reaches their slots
            pending.append(list(history[common:]) if counts[slot] > 0 else [])
        tokens: list[list[int]] = [[] for _ in histories]
        distributions: list[list[torch.Tensor]] = [[] for _ in histories]
        calls = []
        while any(pending):
            feeds = {slot: (queue[0], len(self.fed[slot])) for slot, queue in enumerate(pending) if queue}
            result = self.cache.decode(feeds)
            calls.append(DraftCall("draft", tuple(feeds), result.bucket, self.clock.decode_call_s(result.bucket)))
            for slot in feeds:
                queue = pending[slot]
                self.fed[slot].append(queue.pop(0))
                if queue:
                    continue  # still catching up with the target's sequence
                sampler = self.samplers[slot]
                logits = result.logits[slot : slot + 1]
                if sampler.config.do_sample:
                    probabilities = sampler.probabilities(logits)[0]
                    token = int(torch.multinomial(probabilities, 1, generator=sampler.generator))
                    distributions[slot].append(probabilities)
                else:
                    token = int(sampler(logits)[0])
                tokens[slot].append(token)
                if len(tokens[slot]) < counts[slot]:
                    queue.append(token)  # the proposal is fed back to propose the next one
        return Proposal(tokens, [torch.stack(d) if d else None for d in distributions]), calls
