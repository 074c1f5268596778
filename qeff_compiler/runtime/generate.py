"""The generation loop over a compiled model's two specializations.

Prompts are right-padded into `prefill_len` chunks and run chunk by chunk through the prefill program (positions
−1 mark padding, which the cache never stores); then the decode program runs one token per row per step. The
cache is the programs' RetainedState outputs fed back as the next call's past inputs, so a decode step costs the
same at every position: attention over the fixed ctx_len buffer, no re-running of the prompt. Each call is timed
twice: on the host (wall clock) and on the simulated device (the compiled model's cost-model clock).
"""

from __future__ import annotations

import operator
import reprlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.ir.program import Program
from qeff_compiler.runtime.sampling import SamplingConfig, TokenSampler
from qeff_compiler.runtime.stats import LatencyStats

Executor = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
#: called after every generation step with the step index and the token chosen for each row (−1: row finished)
Streamer = Callable[[int, torch.Tensor], None]


class DeviceClock(Protocol):
    """Simulated device seconds per program call (static shapes: every call of a specialization costs the same)."""

    @property
    def device(self) -> str: ...

    @property
    def prefill_chunk_s(self) -> float: ...

    @property
    def decode_step_s(self) -> float: ...


@dataclass(frozen=True)
class GenerationOutput:
    """Prompt + new tokens per row, right-padded with `pad_token_id` to one length; and the latency figures."""

    sequences: torch.Tensor
    new_tokens: tuple[tuple[int, ...], ...]
    stats: LatencyStats


@dataclass(frozen=True)
class StaticShapes:
    """What the compiled specializations fix: rows per call, prefill chunk length, cache length."""

    batch_size: int
    prefill_len: int
    ctx_len: int
    vocab_size: int

    @classmethod
    def of(cls, prefill: Program) -> StaticShapes:
        (ids,) = [s for s in prefill.inputs if s.role == "input_ids"]
        (past,) = [s for s in prefill.inputs if s.name == "past_key.0"]
        return cls(ids.shape[0], ids.shape[1], past.shape[2], prefill.config.vocab_size)


def normalize_prompts(
    input_ids: torch.Tensor | Sequence[Sequence[int]], shapes: StaticShapes, *, any_count: bool = False
) -> list[list[int]]:
    """Accept a [batch, len] tensor or ragged lists of token ids; check count (up to the batch, or any with
    `any_count`: continuous batching), emptiness and vocabulary range."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise InvalidArgumentError(
                f"input_ids must be an integer tensor [batch, len], got {input_ids.dtype} {list(input_ids.shape)}"
            )
        prompts = [row.tolist() for row in input_ids]
    else:
        prompts = _token_lists(input_ids)
    if not prompts or (len(prompts) > shapes.batch_size and not any_count):
        raise InvalidArgumentError(
            f"got {len(prompts)} prompts; this model was compiled for 1..{shapes.batch_size} per call"
        )
    for row, prompt in enumerate(prompts):
        if not prompt:
            raise InvalidArgumentError(f"prompt {row} is empty")
        bad = [t for t in prompt if not 0 <= t < shapes.vocab_size]
        if bad:
            raise InvalidArgumentError(
                f"prompt {row} has token ids outside the vocabulary [0, {shapes.vocab_size}): {bad[:5]}"
            )
    return prompts


def eos_token_ids(eos: object) -> frozenset[int]:
    """The stop tokens: None (none), one id or a sequence of ids; anything else is refused, naming it."""
    ids = [] if eos is None else [eos] if not isinstance(eos, (list, tuple, set, frozenset)) else list(eos)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidArgumentError(
            f"eos_token_id must be None, an integer or a list of integers, got {reprlib.repr(eos)}"
        )
    return frozenset(i for i in ids if isinstance(i, int))  # all are: checked above (the filter narrows the type)


def _token_lists(input_ids: object) -> list[list[int]]:
    """Ragged prompts as lists of ints; anything else (strings, floats, a flat list) is refused, naming it."""
    if not isinstance(input_ids, Iterable) or isinstance(input_ids, (str, bytes)):
        raise InvalidArgumentError(
            f"input_ids must be a [batch, len] tensor or a list of token-id lists, got {reprlib.repr(input_ids)}"
        )
    prompts = []
    for row, ids in enumerate(input_ids):
        try:
            if isinstance(ids, (str, bytes)):
                raise TypeError
            prompts.append([operator.index(t) for t in ids])
        except TypeError:
            raise InvalidArgumentError(
                f"prompt {row} must be a list of integer token ids, got {reprlib.repr(ids)}"
            ) from None
    return prompts


def check_generation_length(prompts: list[list[int]], max_new_tokens: object, ctx_len: int) -> None:
    """Refuse a max_new_tokens that is not a positive integer, or that the longest prompt leaves no cache room for."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > ctx_len:
        raise InvalidArgumentError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds ctx_len={ctx_len}"
        )


def generate(
    prefill: Executor,
    decode: Executor,
    shapes: StaticShapes,
    cache_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_ids: frozenset[int],
    pad_token_id: int,
    clock: DeviceClock,
    streamer: Streamer | None = None,
) -> GenerationOutput:
    """Generate up to `max_new_tokens` per prompt; stops a row at an EOS token. `clock` gives the simulated device
    time of each program call."""
    check_generation_length(prompts, max_new_tokens, shapes.ctx_len)
    sampler = TokenSampler(sampling)
    cache = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in cache_specs.items()}
    start = time.perf_counter()
    last_logits = prefill_prompts(prefill, shapes, prompts, cache)
    prefill_s = time.perf_counter() - start
    new_tokens: list[list[int]] = [[] for _ in prompts]
    active = [True] * len(prompts)
    token = sampler(last_logits)
    accept_tokens(token, new_tokens, active, eos_token_ids, max_new_tokens, streamer, step=0)
    ttft_s = time.perf_counter() - start
    latencies: list[float] = []
    while any(active):
        step_start = time.perf_counter()
        logits = _decode_step(decode, shapes, prompts, new_tokens, active, cache)
        token = sampler(logits)
        accept_tokens(token, new_tokens, active, eos_token_ids, max_new_tokens, streamer, step=len(latencies) + 1)
        latencies.append(time.perf_counter() - step_start)
    device_prefill_s = prefill_chunks(prompts, shapes) * clock.prefill_chunk_s
    stats = LatencyStats(
        prompt_tokens=tuple(len(p) for p in prompts),
        generated_tokens=tuple(len(t) for t in new_tokens),
        host_ttft_s=ttft_s,
        host_prefill_s=prefill_s,
        host_decode_s=sum(latencies),
        host_token_latencies_s=tuple(latencies),
        device=clock.device,
        ttft_s=device_prefill_s,
        prefill_s=device_prefill_s,
        token_latencies_s=(clock.decode_step_s,) * len(latencies),
    )
    return GenerationOutput(pad_sequences(prompts, new_tokens, pad_token_id), tuple(map(tuple, new_tokens)), stats)


def prefill_prompts(
    prefill: Executor, shapes: StaticShapes, prompts: list[list[int]], cache: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Run every prompt chunk; returns each row's logits at its last prompt token [rows, vocab]."""
    chunk_len = shapes.prefill_len
    last_logits = torch.empty(len(prompts), shapes.vocab_size)
    for chunk in range(prefill_chunks(prompts, shapes)):
        ids = torch.zeros(shapes.batch_size, chunk_len, dtype=torch.int64)
        positions = torch.full((shapes.batch_size, chunk_len), -1, dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            piece = prompt[chunk * chunk_len : (chunk + 1) * chunk_len]
            ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.int64)
            positions[row, : len(piece)] = torch.arange(chunk * chunk_len, chunk * chunk_len + len(piece))
        outputs = run_with_cache(prefill, ids, positions, cache)
        for row, prompt in enumerate(prompts):
            if (len(prompt) - 1) // chunk_len == chunk:
                last_logits[row] = outputs["logits"][row, 0]
    return last_logits


def prefill_chunks(prompts: list[list[int]], shapes: StaticShapes) -> int:
    """Prefill calls the longest prompt needs."""
    return -(-max(len(p) for p in prompts) // shapes.prefill_len)


def _decode_step(
    decode: Executor,
    shapes: StaticShapes,
    prompts: list[list[int]],
    new_tokens: list[list[int]],
    active: list[bool],
    cache: dict[str, torch.Tensor],
) -> torch.Tensor:
    ids = torch.zeros(shapes.batch_size, 1, dtype=torch.int64)
    positions = torch.full((shapes.batch_size, 1), -1, dtype=torch.int64)
    for row, is_active in enumerate(active):
        if is_active:
            ids[row, 0] = new_tokens[row][-1]
            positions[row, 0] = len(prompts[row]) + len(new_tokens[row]) - 1
    return run_with_cache(decode, ids, positions, cache)["logits"][: len(prompts), 0]


def run_with_cache(
    executor: Executor, ids: torch.Tensor, positions: torch.Tensor, cache: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One program call; the RetainedState outputs replace the cache in place (the dict, not the tensors)."""
    outputs = executor({"input_ids": ids, "position_ids": positions, **cache})
    for name in cache:
        cache[name] = outputs[f"{name}_RetainedState"]
    return outputs


def accept_tokens(
    token: torch.Tensor,
    new_tokens: list[list[int]],
    active: list[bool],
    eos_token_ids: frozenset[int],
    max_new_tokens: int,
    streamer: Streamer | None,
    step: int,
) -> None:
    """Append each active row's sampled token; a row stops at an EOS id or at max_new_tokens. The streamer
    sees the step's tokens (−1 for rows already stopped)."""
    chosen = torch.full((len(active),), -1, dtype=torch.int64)
    for row, is_active in enumerate(active):
        if not is_active:
            continue
        value = int(token[row])
        new_tokens[row].append(value)
        chosen[row] = value
        if value in eos_token_ids or len(new_tokens[row]) >= max_new_tokens:
            active[row] = False
    if streamer is not None:
        streamer(step, chosen)


def pad_sequences(prompts: list[list[int]], new_tokens: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Each prompt followed by its new tokens, right-padded to one rectangle, as HF's `generate` returns them."""
    rows = [prompt + tokens for prompt, tokens in zip(prompts, new_tokens, strict=True)]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.int64)
