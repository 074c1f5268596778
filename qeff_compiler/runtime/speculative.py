"""Speculative decoding over a target compiled with `num_speculative_tokens=K`.

The target's decode specialization scores K+1 positions per row in one call and returns the logits of all of
them: the row's last token, then up to K proposed tokens (a `Proposer`'s). Verification keeps the longest
accepted prefix of the proposal plus one token of the target's own, so every step gains 1..K+1 tokens per row:

- greedy: a proposal is accepted while it equals the target's argmax; the target's argmax after the accepted
  prefix follows. The output is the target's plain greedy output, token for token.
- sampling: proposal d (drawn from q) is accepted with probability min(1, p(d) / q(d)), p being the target's
  sampling distribution (temperature, top-k, top-p applied) at that position; at the first rejection a token is
  drawn from normalize(max(0, p − q)), and when all are accepted a bonus token from the next p. Each emitted
  token is then distributed as the target's own sampling would draw it (Leviathan et al. 2023, Chen et al.
  2023). A deterministic proposal (prompt lookup) has a one-hot q.

Rollback: the verify call writes the keys and values of all K+1 positions; those of rejected proposals stay in
the cache slots after the row's accepted length. The next call's first token is written at the first of these
slots, and attention masks every slot after a query's position, so a rejected token is never attended: each slot
up to a query's position holds an accepted token by the time it is read (tested by poisoning the stale slots).
Positions past a row's room (ctx_len, max_new_tokens) are padding (−1): neither written nor used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from qeff_compiler.runtime.acceptance import AcceptanceFigures
from qeff_compiler.runtime.generate import (
    DeviceClock,
    Executor,
    GenerationOutput,
    StaticShapes,
    Streamer,
    accept_tokens,
    check_generation_length,
    pad_sequences,
    prefill_chunks,
    prefill_prompts,
    run_with_cache,
)
from qeff_compiler.runtime.proposers import Proposal, Proposer
from qeff_compiler.runtime.sampling import TokenSampler
from qeff_compiler.runtime.stats import LatencyStats


@dataclass(frozen=True)
class SpeculativeStats(AcceptanceFigures, LatencyStats):
    """`LatencyStats` of a speculative generation. `token_latencies_s` (and the host's) are per *verify step*
    (draft steps included), and the decode rates count every token the steps gained."""

    proposed_tokens: int = 0
    accepted_tokens: int = 0
    verify_slot_steps: int = 0
    #: simulated seconds of one plain (single-token) decode step of the target, for the speed-up
    plain_decode_step_s: float = float("nan")
    #: simulated and host seconds the proposer spent (a draft model's calls; prompt lookup: host only)
    draft_s: float = 0.0
    host_draft_s: float = 0.0
    #: single-token decode calls of a draft model (a benchmark re-times them at another model shape)
    draft_decode_calls: int = 0

    @property
    def decode_tokens(self) -> float:
        """Tokens per row the decode steps produced (the first token comes from the prefill), mean over rows."""
        return sum(n - 1 for n in self.generated_tokens) / len(self.generated_tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        """Simulated effective decode rate per sequence."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def host_decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.host_decode_s if self.host_decode_s else float("nan")

    @property
    def plain_decode_tokens_per_s(self) -> float:
        """Simulated rate of the target decoding one token per step."""
        return 1.0 / self.plain_decode_step_s

    @property
    def speedup(self) -> float:
        """Simulated effective decode rate over plain decoding's."""
        return self.decode_tokens_per_s / self.plain_decode_tokens_per_s

    def rows(self) -> list[tuple[str, str]]:
        return super().rows() + [
            ("acceptance rate", f"{self.acceptance_rate:.3f} ({self.accepted_tokens}/{self.proposed_tokens})"),
            ("accepted tokens per step", f"{self.accepted_tokens_per_step:.2f}"),
            ("simulated speed-up vs plain decode", f"{self.speedup:.2f}x"),
        ]


@dataclass(frozen=True)
class SpeculativeShapes:
    """The target's static shapes and its verify width (K+1 positions per call)."""

    shapes: StaticShapes
    num_speculative_tokens: int


def generate_speculative(
    prefill: Executor,
    verify: Executor,
    shapes: SpeculativeShapes,
    cache_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    prompts: list[list[int]],
    max_new_tokens: int,
    sampler: TokenSampler,
    proposer: Proposer,
    eos_token_ids: frozenset[int],
    pad_token_id: int,
    clock: DeviceClock,
    plain_decode_step_s: float,
    streamer: Streamer | None = None,
) -> GenerationOutput:
    """Generate like `runtime.generate.generate`, K+1 positions verified per step; see the module docstring."""
    static, k = shapes.shapes, shapes.num_speculative_tokens
    check_generation_length(prompts, max_new_tokens, static.ctx_len)
    cache = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in cache_specs.items()}
    start = time.perf_counter()
    last_logits = prefill_prompts(prefill, static, prompts, cache)
    prefill_s = time.perf_counter() - start
    new_tokens: list[list[int]] = [[] for _ in prompts]
    active = [True] * len(prompts)
    accept_tokens(sampler(last_logits), new_tokens, active, eos_token_ids, max_new_tokens, streamer, step=0)
    ttft_s = time.perf_counter() - start
    proposer.start(prompts)
    tally = _Tally()
    emitted = 1
    while any(active):
        step_start = time.perf_counter()
        draft_before = proposer.device_s
        histories = [p + t for p, t in zip(prompts, new_tokens, strict=True)]
        counts = [
            min(k, max_new_tokens - len(new_tokens[row]) - 1, static.ctx_len - len(histories[row])) if on else 0
            for row, on in enumerate(active)
        ]
        proposal = proposer.propose(histories, counts)
        logits = _verify_call(verify, static, k, histories, proposal, active, cache)
        gained: list[list[int]] = [[] for _ in prompts]
        for row, on in enumerate(active):
            if on:
                proposed = proposal.tokens[row][: counts[row]]
                scored = logits[row, : len(proposed) + 1]
                gained[row] = verify_row(proposed, scored, proposal.probabilities[row], sampler)
                tally.add(len(proposed), len(gained[row]) - 1)
        emitted = _emit(gained, new_tokens, active, eos_token_ids, max_new_tokens, streamer, emitted)
        tally.latencies.append(clock.decode_step_s + proposer.device_s - draft_before)
        tally.host_latencies.append(time.perf_counter() - step_start)
    device_prefill_s = prefill_chunks(prompts, static) * clock.prefill_chunk_s
    stats = SpeculativeStats(
        prompt_tokens=tuple(len(p) for p in prompts),
        generated_tokens=tuple(len(t) for t in new_tokens),
        host_ttft_s=ttft_s,
        host_prefill_s=prefill_s,
        host_decode_s=sum(tally.host_latencies),
        host_token_latencies_s=tuple(tally.host_latencies),
        device=clock.device,
        ttft_s=device_prefill_s,
        prefill_s=device_prefill_s,
        token_latencies_s=tuple(tally.latencies),
        proposed_tokens=tally.proposed,
        accepted_tokens=tally.accepted,
        verify_slot_steps=tally.row_steps,
        plain_decode_step_s=plain_decode_step_s,
        draft_s=proposer.device_s,
        host_draft_s=proposer.host_s,
        draft_decode_calls=proposer.decode_calls,
    )
    return GenerationOutput(pad_sequences(prompts, new_tokens, pad_token_id), tuple(map(tuple, new_tokens)), stats)


class _Tally:
    def __init__(self) -> None:
        self.proposed = self.accepted = self.row_steps = 0
        self.latencies: list[float] = []
        self.host_latencies: list[float] = []

    def add(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        self.row_steps += 1


def _verify_call(
    verify: Executor,
    shapes: StaticShapes,
    k: int,
    histories: list[list[int]],
    proposal: Proposal,
    active: list[bool],
    cache: dict[str, torch.Tensor],
) -> torch.Tensor:
    """One call of the K+1 specialization: per active row its last token then its proposals at the following
    positions; the rest is padding (position −1). Returns the logits [rows, K+1, vocab]."""
    ids = torch.zeros(shapes.batch_size, k + 1, dtype=torch.int64)
    positions = torch.full((shapes.batch_size, k + 1), -1, dtype=torch.int64)
    for row, on in enumerate(active):
        if on:
            tokens = [histories[row][-1], *proposal.tokens[row]][: k + 1]
            first = len(histories[row]) - 1
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
            positions[row, : len(tokens)] = torch.arange(first, first + len(tokens))
    return run_with_cache(verify, ids, positions, cache)["logits"][: len(histories)]


def verify_row(
    proposed: Sequence[int], logits: torch.Tensor, draft: torch.Tensor | None, sampler: TokenSampler
) -> list[int]:
    """The tokens one row gains: its accepted proposals, then the target's token. `logits` [n + 1, vocab] are
    the target's after the row's last token and after each proposal; `draft` [n, vocab] the distributions the
    proposals were drawn from (None: deterministic proposals)."""
    if not sampler.config.do_sample:
        choices = sampler(logits).tolist()
        accepted = 0
        while accepted < len(proposed) and proposed[accepted] == choices[accepted]:
            accepted += 1
        return [*proposed[:accepted], choices[accepted]]
    target = sampler.probabilities(logits)
    for i, token in enumerate(proposed):
        q = draft[i] if draft is not None else torch.nn.functional.one_hot(torch.tensor(token), target.shape[-1])
        q = q.to(target.dtype)
        ratio = float(target[i, token]) / float(q[token])
        if float(torch.rand((), generator=sampler.generator, dtype=torch.float64)) < ratio:
            continue
        residual = (target[i] - q).clamp(min=0)
        total = float(residual.sum())
        residual = residual / total if total > 0 else target[i]  # p == q: a rejection has probability 0 there
        return [*proposed[:i], int(torch.multinomial(residual, 1, generator=sampler.generator))]
    return [*proposed, int(torch.multinomial(target[len(proposed)], 1, generator=sampler.generator))]


def _emit(
    gained: list[list[int]],
    new_tokens: list[list[int]],
    active: list[bool],
    eos_token_ids: frozenset[int],
    max_new_tokens: int,
    streamer: Streamer | None,
    step: int,
) -> int:
    """Append each row's gained tokens one position at a time (a row stops at EOS or max_new_tokens; what it
    gained after that is dropped), so a streamer sees tokens in order; returns the next step index."""
    for position in range(max((len(g) for g in gained), default=0)):
        live = [active[row] and position < len(g) for row, g in enumerate(gained)]
        if not any(live):
            break
        chosen = torch.full((len(gained),), -1, dtype=torch.int64)
        for row, g in enumerate(gained):
            if live[row]:
                new_tokens[row].append(g[position])
                chosen[row] = g[position]
                if g[position] in eos_token_ids or len(new_tokens[row]) >= max_new_tokens:
                    active[row] = False
        if streamer is not None:
            streamer(step, chosen)
        step += 1
    return step
