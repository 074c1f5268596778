"""`CompiledModel.generate` on a continuous-batching model: any number of prompts through the scheduler's slots.

Each prompt becomes a request with the call's settings (so each produces what it would alone); the scheduler
admits them into free slots in order and decodes every live slot per step. The output has the shape of a plain
`generate`: padded sequences, new tokens per prompt, and `LatencyStats` whose figures sum the calls made (TTFT:
until every prompt has its first token; per-token latencies: one per decode step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qeff_compiler.runtime.generate import GenerationOutput, Streamer
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from qeff_compiler.runtime.stats import LatencyStats


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
    prompt got (−1: none this step)."""
    requests = [
        Request(str(row), tuple(prompt), max_new_tokens, sampling, eos_token_ids) for row, prompt in enumerate(prompts)
    ]
    for request in requests:
        scheduler.submit(request)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    host_prefill, host_decode, step = [], [], 0
    while scheduler.has_work:
        made = len(scheduler.calls)
        events = scheduler.step()
        decoded = any(call.kind == "decode" for call in scheduler.calls[made:])
        chosen = torch.full((len(prompts),), -1, dtype=torch.int64)
        for event in events:
            if event.token is not None:
                new_tokens[int(event.request_id)].append(event.token)
                chosen[int(event.request_id)] = event.token
        if decoded:  # every event of a decode step carries the step's host time
            host_decode.append(events[0].host_s)
        else:
            host_prefill += [e.host_s for e in events]
        if streamer is not None and events:
            streamer(step, chosen)
            step += 1
    serving = scheduler.stats()
    calls = scheduler.calls
    host_ttft = max(r.host_ttft_s for r in serving.requests)
    stats = LatencyStats(
        prompt_tokens=tuple(len(p) for p in prompts),
        generated_tokens=tuple(len(t) for t in new_tokens),
        device=serving.device,
        ttft_s=max(r.ttft_s for r in serving.requests),
        prefill_s=sum(c.seconds for c in calls if c.kind == "prefill"),
        token_latencies_s=tuple(c.seconds for c in calls if c.kind == "decode"),
        host_ttft_s=host_ttft,
        host_prefill_s=sum(host_prefill),
        host_decode_s=sum(host_decode),
        host_token_latencies_s=tuple(host_decode),
    )
    rows = [list(p) + t for p, t in zip(prompts, new_tokens, strict=True)]
    width = max(len(r) for r in rows)
    sequences = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.int64)
    return GenerationOutput(sequences, tuple(map(tuple, new_tokens)), stats)
