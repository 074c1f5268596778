"""The continuous-batching scheduler: per-request outputs, stop rules, sampling, cancellation, validation."""

from __future__ import annotations

import threading

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from tests.conftest import random_model, tiny_config


@pytest.fixture(scope="module")
def models() -> tuple[qc.CompiledModel, qc.CompiledModel]:
    """The same random tiny MPT compiled with 2 rows (the slots) and with 1 (each request alone)."""
    model = random_model(tiny_config())
    batched = qc.compile(model, ctx_len=32, prefill_len=4, batch_size=2, verify=False)
    return batched, qc.compile(model, ctx_len=32, prefill_len=4, batch_size=1, verify=False)


def _requests(lengths_and_limits: list[tuple[int, int]], seed: int = 0) -> list[Request]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Request(f"r{i}", tuple(torch.randint(0, 64, (n,), generator=generator).tolist()), limit)
        for i, (n, limit) in enumerate(lengths_and_limits)
    ]


def test_more_requests_than_slots_each_equal_to_alone(models) -> None:
    batched, single = models
    requests = _requests([(3, 5), (7, 2), (1, 8), (9, 4), (5, 6)])
    scheduler = ContinuousBatchScheduler(batched)
    results = scheduler.run(requests)
    assert scheduler.num_slots == 2 and not scheduler.has_work
    for request, result in zip(requests, results, strict=True):
        alone = single.generate([list(request.prompt_ids)], max_new_tokens=request.max_new_tokens)
        assert result.tokens == alone.new_tokens[0], request.request_id
        assert result.finish_reason == "length"
        assert result.stats.generated_tokens == request.max_new_tokens
    stats = scheduler.stats()
    assert stats.generated_tokens == sum(r.max_new_tokens for r in requests)
    assert max(stats.decode_live_slots) == 2 and 0 < stats.slot_occupancy <= 1


def test_stop_rules_and_per_request_sampling(models) -> None:
    batched, single = models
    (base,) = _requests([(6, 8)], seed=3)
    greedy = single.generate([list(base.prompt_ids)], max_new_tokens=8).new_tokens[0]
    sampled = SamplingConfig(do_sample=True, temperature=1.5, seed=11)
    requests = [
        Request("eos", base.prompt_ids, 8, eos_token_ids=frozenset({greedy[2]})),
        Request("stop", base.prompt_ids, 8, stop_sequences=(tuple(greedy[3:5]),)),
        Request("sampled", base.prompt_ids, 8, sampling=sampled),
        Request("sampled-again", base.prompt_ids, 8, sampling=sampled),
    ]
    results = {r.request_id: r for r in ContinuousBatchScheduler(batched).run(requests)}
    eos_at = greedy.index(greedy[2]) + 1
    assert results["eos"].tokens == greedy[:eos_at] and results["eos"].finish_reason == "eos"
    stop_at = next(i + 2 for i in range(7) if greedy[i : i + 2] == greedy[3:5])
    assert results["stop"].tokens == greedy[:stop_at] and results["stop"].finish_reason == "stop"
    alone = single.generate([list(base.prompt_ids)], max_new_tokens=8, do_sample=True, temperature=1.5, seed=11)
    assert results["sampled"].tokens == results["sampled-again"].tokens == alone.new_tokens[0]


def test_cancel_frees_the_slot_and_submit_is_thread_safe(models) -> None:
    batched, _ = models
    scheduler = ContinuousBatchScheduler(batched)
    requests = _requests([(4, 20)] * 3 + [(2, 3)] * 3)
    threads = [threading.Thread(target=scheduler.submit, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scheduler.queue_depth == 6
    events = scheduler.step()  # admits two
    assert scheduler.live_slots == 2 and len(events) == 2
    running = events[0].request_id
    scheduler.cancel(running)
    events = scheduler.step()
    cancelled = [e for e in events if e.request_id == running]
    assert cancelled and cancelled[0].finish_reason == "cancelled" and cancelled[0].token is None
    finished = {e.request_id: e.finish_reason for e in events if e.finish_reason}
    while scheduler.has_work:
        finished |= {e.request_id: e.finish_reason for e in scheduler.step() if e.finish_reason}
    assert finished[running] == "cancelled" and len(finished) == 6


def test_submit_refuses_what_cannot_run(models) -> None:
    batched, _ = models
    scheduler = ContinuousBatchScheduler(batched)
    with pytest.raises(InvalidArgumentError, match=r"prompt \(30 tokens\) \+ max_new_tokens \(3\) exceeds ctx_len=32"):
        scheduler.submit(Request("long", tuple(range(30)), 3))
    with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
        scheduler.submit(Request("vocab", (1, 64), 3))
    scheduler.submit(Request("dup", (1, 2), 3))
    with pytest.raises(InvalidArgumentError, match="already queued or running"):
        scheduler.submit(Request("dup", (1, 2), 3))
    with pytest.raises(InvalidArgumentError, match="max_new_tokens must be a positive integer"):
        Request("zero", (1,), 0)
    with pytest.raises(InvalidArgumentError, match="prompt is empty"):
        Request("empty", (), 1)
