"""`CompiledModel.generate` on a continuous-batching model: any number of prompts through the scheduler's slots.

Each prompt becomes a request with the call's settings (so each produces what it would alone); the scheduler
admits them into free slots in order and decodes every live slot per step. The output has the shape of a plain
`generate`: padded sequences, new tokens per prompt, and `LatencyStats` whose figures sum the calls made (TTFT:
until every prompt has its first token; per-token latencies: one per decode step). On a speculative-decoding
target the stats are `SlotSpeculativeStats`: each step is a verify step (its draft calls included) and gains
several tokens per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qeff_compiler.runtime.acceptance import AcceptanceFigures
from qeff_compiler.runtime.generate import GenerationOutput, Streamer
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from qeff_compiler.runtime.stats import LatencyStats


@dataclass(frozen=True, repr=False)
class SlotSpeculativeStats(AcceptanceFigures, LatencyStats):
    """`LatencyStats` of speculative generation through slots: per-token latencies are per verify step (the
    draft's calls included), and the decode rates count the tokens a slot keeps per step."""

    proposed_tokens: int = 0
    accepted_tokens: int = 0
    verify_slot_steps: int = 0

    @property
    def kept_tokens_per_step(self) -> float:
        """Tokens a slot kept per verify step: those the decode steps produced (each request's first comes from
        its prefill; what a slot gained past its stop is not counted) over the (slot, step) pairs."""
        kept = sum(n - 1 for n in self.generated_tokens)
        return kept / self.verify_slot_steps if self.verify_slot_steps else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Simulated effective decode rate per sequence: tokens a slot kept per step over the mean step time."""
        return super().decode_tokens_per_s * self.kept_tokens_per_step

    @property
    def host_decode_tokens_per_s(self) -> float:
        return super().host_decode_tokens_per_s * self.kept_tokens_per_step

    def rows(self) -> list[tuple[str, str]]:
        return super().rows() + [
            ("acceptance rate", f"{self.acceptance_rate:.3f} ({self.accepted_tokens}/{self.proposed_tokens})"),
            ("accepted tokens per step", f"{self.accepted_tokens_per_step:.2f}"),
        ]


def generate_in_slots(
    scheduler: ContinuousBatchScheduler,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_ids: frozenset[int],
    pad_token_id: int,
    streamer: Streamer | None = None,
) -> GenerationOutput:
    """Generate for every prompt through `scheduler`; `streamer` is called after every step with the token each
    prompt got (−1: none this step), once per token position when a verify step gained several."""
    requests = [
        Request(str(row), tuple(prompt), max_new_tokens, sampling, eos_token_ids) for row, prompt in enumerate(prompts)
    ]
    for request in requests:
        scheduler.submit(request)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    host_prefill, host_decode, step_seconds, step = [], [], [], 0
    while scheduler.has_work:
        made = len(scheduler.calls)
        events = scheduler.step()
        decoded = any(call.kind == "decode" for call in scheduler.calls[made:])
        if decoded:  # a decode step, or a verify step and its draft's calls
            step_seconds.append(sum(call.seconds for call in scheduler.calls[made:]))
        gained: list[list[int]] = [[] for _ in prompts]
        for event in events:
            if event.token is not None:
                gained[int(event.request_id)].append(event.token)
        for row, tokens in enumerate(gained):
            new_tokens[row] += tokens
        if decoded:  # every event of a decode step carries the step's host time
            host_decode.append(events[0].host_s)
        else:
            host_prefill += [e.host_s for e in events]
        if streamer is not None:
            step = _stream(streamer, step, gained)
    serving = scheduler.stats()
    calls = scheduler.calls
    host_ttft = max(r.host_ttft_s for r in serving.requests)
    figures = LatencyStats(
        prompt_tokens=tuple(len(p) for p in prompts),
        generated_tokens=tuple(len(t) for t in new_tokens),
        device=serving.device,
        ttft_s=max(r.ttft_s for r in serving.requests),
        prefill_s=sum(c.seconds for c in calls if c.kind in ("prefill", "draft-prefill")),
        token_latencies_s=tuple(step_seconds),
        host_ttft_s=host_ttft,
        host_prefill_s=sum(host_prefill),
        host_decode_s=sum(host_decode),
        host_token_latencies_s=tuple(host_decode),
    )
    stats = figures
    if scheduler.num_speculative_tokens:
        stats = SlotSpeculativeStats(
            **vars(figures),
            proposed_tokens=serving.proposed_tokens,
            accepted_tokens=serving.accepted_tokens,
            verify_slot_steps=serving.verify_slot_steps,
        )
    rows = [list(p) + t for p, t in zip(prompts, new_tokens, strict=True)]
    width = max(len(r) for r in rows)
    sequences = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.int64)
    return GenerationOutput(sequences, tuple(map(tuple, new_tokens)), stats)


def _stream(streamer: Streamer, step: int, gained: list[list[int]]) -> int:
    """Hand the tokens one step gained to `streamer`, one position at a time; returns the next step index."""
    for position in range(max(map(len, gained), default=0)):
        chosen = torch.tensor([tokens[position] if position < len(tokens) else -1 for tokens in gained])
        streamer(step, chosen)
        step += 1
    return step
