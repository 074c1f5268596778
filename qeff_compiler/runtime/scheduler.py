"""Continuous batching: serve more requests than the model has slots, one step at a time.

`ContinuousBatchScheduler` keeps a queue of submitted requests and `num_slots` slots (the model's
`full_batch_size`, or its `batch_size`). Each `step()` either admits waiting requests into free slots (prefill
writes each into its slot's cache and yields its first token) or, when none can be admitted, runs one decode step
of every live slot. A request leaves its slot at an EOS token, one of its stop sequences or its own
`max_new_tokens`; the next waiting one takes the slot at the following step. Each request carries its own
sampling settings (and seed), so it produces what it would produce alone.

A speculative-decoding target (compiled with `num_speculative_tokens=K`) makes every decode step a verify step:
a `SlotProposer` proposes up to K tokens per live slot (from that slot's sequence alone, or from a draft model
with a slot of its own per target slot), one call scores each slot's last token and its proposals, and each slot
accepts its own prefix with its own sampler (`runtime.speculative.verify_row`), gaining 1..K+1 tokens. Its stop
rules apply token by token: what a slot gained after its stop is dropped. A slot's rejected proposals stay in its
cache after its accepted length, where no query attends them until they are written over (the argument of
`runtime.speculative`); positions past a request's room are padding (−1). The draft's calls are charged on the
same simulated clock as the target's.

Two clocks run side by side: host wall time and the simulated device's (each call charged by the cost model at
its context bucket). `Request.arrival_s` is on the simulated clock by default (`arrivals="device"`): an offline
workload (`run`) replays arrival times, idling the device until the next request arrives, and the simulated
figures measure the stream. With `arrivals="host"` the arrival times are replayed on the wall clock instead (the
engine sleeps until the next one), so the host figures measure serving under that load on this machine.

Threading: `submit` and `cancel` may be called from any thread (they only touch a locked inbox, drained at the
start of `step`); `step` is called by one engine thread.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import MptConfig

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.ir.program import Program
from qeff_compiler.runtime.proposers import NoProposals
from qeff_compiler.runtime.sampling import SamplingConfig, TokenSampler
from qeff_compiler.runtime.serving_stats import RequestStats, ServingStats
from qeff_compiler.runtime.slot_proposers import DraftCall, SlotProposer, StatelessSlots
from qeff_compiler.runtime.slots import Executor, SlotCache, SlotClock
from qeff_compiler.runtime.speculative import verify_row
from qeff_compiler.runtime.threads import resolve_threads, torch_threads

FINISH_REASONS = ("eos", "length", "stop", "cancelled")
#: which clock `Request.arrival_s` is replayed on
ARRIVAL_CLOCKS = ("device", "host")


@dataclass(frozen=True)
class Request:
    """One generation request. `arrival_s` is simulated time (for offline workloads)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingConfig = SamplingConfig()
    eos_token_ids: frozenset[int] = frozenset()
    #: token-id sequences; generation stops after one appears (its tokens are kept in the output)
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    arrival_s: float = 0.0

    def __post_init__(self) -> None:
        """Refuse malformed fields here; what depends on the model (vocabulary, ctx_len) is checked at submit."""
        if not isinstance(self.request_id, str):
            raise InvalidArgumentError(f"request_id must be a string, got {self.request_id!r}")
        object.__setattr__(self, "prompt_ids", _ids(self.prompt_ids, f"request {self.request_id!r}: prompt_ids"))
        if not self.prompt_ids:
            raise InvalidArgumentError(f"request {self.request_id!r}: the prompt is empty")
        limit = self.max_new_tokens
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidArgumentError(
                f"request {self.request_id!r}: max_new_tokens must be a positive integer, got {limit!r}"
            )
        stops = tuple(_ids(s, f"request {self.request_id!r}: stop sequence") for s in self.stop_sequences)
        if any(not s for s in stops):
            raise InvalidArgumentError(f"request {self.request_id!r}: a stop sequence is empty")
        object.__setattr__(self, "stop_sequences", stops)
        object.__setattr__(self, "eos_token_ids", frozenset(self.eos_token_ids))
        if not isinstance(self.arrival_s, (int, float)) or not 0 <= self.arrival_s < float("inf"):
            raise InvalidArgumentError(
                f"request {self.request_id!r}: arrival_s must be a finite time ≥ 0, got {self.arrival_s!r}"
            )


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one request, or its end (`token` None only on a pure finish event, e.g. cancelled)."""

    request_id: str
    token: int | None
    #: None while running; "eos" | "length" | "stop" | "cancelled"
    finish_reason: str | None
    #: the slot the request held (−1: cancelled before it was admitted)
    slot: int
    #: host wall seconds and simulated device seconds of the call that produced it
    host_s: float
    device_s: float


@dataclass(frozen=True)
class RequestResult:
    """A finished request: its new tokens, why it ended, and its latency figures."""

    request_id: str
    tokens: tuple[int, ...]
    finish_reason: str
    stats: RequestStats


class ServableModel(Protocol):
    """What the scheduler needs of a compiled model (`CompiledModel` is one)."""

    @property
    def config(self) -> MptConfig: ...

    @property
    def prefill(self) -> Program: ...

    @property
    def decode(self) -> Program: ...

    @property
    def clock(self) -> SlotClock: ...

    @property
    def context_buckets(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]: ...

    def generation_executors(self, engine: str = "host", threads: int | None = None) -> tuple[Executor, Executor]: ...


@dataclass(frozen=True)
class CallRecord:
    """One program call the scheduler made, on the simulated clock: what a per-slot trace draws."""

    #: "prefill" (one chunk of one request into its slot), "decode" (one step of every live slot: for a
    #: speculative target, its verify step), or a draft model's "draft-prefill" / "draft" (one decode step)
    kind: str
    #: slots the call served (prefill: one; decode: every live slot)
    slots: tuple[int, ...]
    request_ids: tuple[str, ...]
    #: the context bucket the call ran at
    bucket: int
    start_s: float
    seconds: float


@dataclass
class _Live:
    """A request in a slot, or waiting for one."""

    request: Request
    order: int
    arrival_s: float
    host_submit_s: float
    sampler: TokenSampler
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    device_times: list[float] = field(default_factory=list)
    host_times: list[float] = field(default_factory=list)

    @property
    def next_position(self) -> int:
        """Cache position of its last token, which the next decode step feeds."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1


class ContinuousBatchScheduler:
    """Serves requests over the slots of a compiled model; see the module docstring."""

    def __init__(
        self,
        model: ServableModel,
        *,
        engine: str | None = None,
        arrivals: str = "device",
        proposer: SlotProposer | None = None,
        threads: int | None = None,
    ) -> None:
        """`proposer` proposes the tokens of a speculative target's verify steps (default: none, one token per
        step); `CompiledModel.slot_proposer` makes one from a draft model or "prompt-lookup". `threads`: the CPU
        threads every step runs on (default: chosen from the load, `runtime.threads`, since a small model's
        multi-threaded ops stall at their barriers on a busy machine)."""
        if arrivals not in ARRIVAL_CLOCKS:
            raise InvalidArgumentError(f"arrivals must be one of {', '.join(ARRIVAL_CLOCKS)}, got {arrivals!r}")
        self._host_arrivals = arrivals == "host"
        #: CPU threads of every step (torch's, and ONNX Runtime's when that is the engine)
        self.threads = resolve_threads(threads)
        prefill_buckets, decode_buckets = model.context_buckets
        executors = model.generation_executors(engine or "host", self.threads)
        self._slots = SlotCache(model.prefill, model.decode, executors, prefill_buckets, decode_buckets)
        self._clock = model.clock
        #: proposals per verify step (K); 0: plain decoding
        self.num_speculative_tokens = self._slots.decode_len - 1
        if proposer is not None and not self.num_speculative_tokens:
            raise InvalidArgumentError(
                "a proposer needs a speculative-decoding target: compile the model with num_speculative_tokens=K"
            )
        self._proposer = proposer or StatelessSlots(NoProposals())
        self._proposed = self._accepted = self._verify_slot_steps = 0
        self._vocab = model.config.vocab_size
        self._lock = threading.Lock()
        self._inbox: list[_Live] = []
        self._cancelled: set[str] = set()
        self._known: set[str] = set()  # ids submitted and not finished: refused again
        self._order = 0
        self._waiting: list[_Live] = []
        self._live: dict[int, _Live] = {}
        self._finished: list[tuple[str, RequestStats]] = []  # (request id, figures) in finishing order
        self._last_host_s = 0.0  # host seconds from the start to the last finish
        self._decode_live: list[int] = []
        self._decode_buckets: list[int] = []
        #: every program call made, in order (`slot_trace` draws them)
        self.calls: list[CallRecord] = []
        self._started = time.perf_counter()
        #: the simulated device clock (seconds since the scheduler started)
        self.device_time_s = 0.0

    # -- the public surface ---------------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        return self._slots.num_slots

    @property
    def ctx_len(self) -> int:
        return self._slots.ctx_len

    @property
    def live_slots(self) -> int:
        return len(self._live)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._inbox)

    @property
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox or self._waiting or self._live)

    def submit(self, request: Request) -> None:
        """Queue `request`; refuses at once one that cannot run (too long, ids outside the vocabulary, an id
        already queued or running). Thread-safe."""
        if not isinstance(request, Request):
            raise InvalidArgumentError(f"submit takes a Request, got {type(request).__name__}")
        self.check(request)
        with self._lock:
            if request.request_id in self._known:
                raise InvalidArgumentError(f"request id {request.request_id!r} is already queued or running")
            self._known.add(request.request_id)
            self._order += 1
            self._inbox.append(_Live(request, self._order, request.arrival_s, time.perf_counter(), _sampler(request)))

    def check(self, request: Request) -> None:
        """Refuse a request this model cannot serve, naming what is wrong."""
        prompt, limit = len(request.prompt_ids), request.max_new_tokens
        if prompt + limit > self.ctx_len:
            raise InvalidArgumentError(
                f"request {request.request_id!r}: prompt ({prompt} tokens) + max_new_tokens ({limit}) exceeds "
                f"ctx_len={self.ctx_len}"
            )
        bad = [t for t in request.prompt_ids if not 0 <= t < self._vocab]
        if bad:
            raise InvalidArgumentError(
                f"request {request.request_id!r}: token ids outside the vocabulary [0, {self._vocab}): {bad[:5]}"
            )

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request; its slot is freed at the next step. Thread-safe; unknown or
        finished ids are ignored (a request may finish while its cancel is in flight)."""
        with self._lock:
            self._cancelled.add(request_id)

    def step(self) -> list[TokenEvent]:
        """One scheduling step: admit and prefill waiting requests into free slots, else one decode step of every
        live slot. Returns the tokens (and finishes) it produced."""
        with torch_threads(self.threads):
            return self._step()

    def _step(self) -> list[TokenEvent]:
        events = self._drain()
        admitted = self._admit()
        if admitted:
            return events + admitted
        if self._live:
            return events + (self._verify_step() if self.num_speculative_tokens else self._decode_step())
        return events

    def run(self, requests: Iterable[Request]) -> list[RequestResult]:
        """Offline: submit every request, step until all are done; results in the order given."""
        requests = list(requests)
        first = len(self._finished)
        if self._host_arrivals and not self.has_work:
            self._started = time.perf_counter()  # arrival times count from the start of the replay
        for request in requests:
            self.submit(request)
        tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
        reasons: dict[str, str] = {}
        while self.has_work:
            for event in self.step():
                if event.token is not None:
                    tokens[event.request_id].append(event.token)
                if event.finish_reason is not None:
                    reasons[event.request_id] = event.finish_reason
        stats = dict(self._finished[first:])
        return [
            RequestResult(r.request_id, tuple(tokens[r.request_id]), reasons[r.request_id], stats[r.request_id])
            for r in requests
        ]

    def stats(self) -> ServingStats:
        """Figures of every request finished so far."""
        finished = tuple(s for _, s in self._finished)
        last = max((s.finish_s for s in finished), default=0.0)
        return ServingStats(
            requests=finished,
            device=self._clock.device,
            num_slots=self.num_slots,
            makespan_s=last,
            host_makespan_s=self._last_host_s,
            decode_live_slots=tuple(self._decode_live),
            decode_buckets=tuple(self._decode_buckets),
            proposed_tokens=self._proposed,
            accepted_tokens=self._accepted,
            verify_slot_steps=self._verify_slot_steps,
        )

    # -- steps ----------------------------------------------------------------------------------------------

    def _drain(self) -> list[TokenEvent]:
        """Move submissions into the queue and apply cancellations."""
        with self._lock:
            inbox, self._inbox = self._inbox, []
            cancelled, self._cancelled = self._cancelled, set()
        for item in inbox:
            if self._host_arrivals:  # replayed on the wall clock: figures count from the arrival, not the submit
                item.host_submit_s = max(item.host_submit_s, self._started + item.arrival_s)
                item.arrival_s = self.device_time_s
            else:
                item.arrival_s = max(item.arrival_s, self.device_time_s)
        self._waiting += inbox
        events = []
        for item in [w for w in self._waiting if w.request.request_id in cancelled]:
            self._waiting.remove(item)
            events.append(self._finish(item, "cancelled", None, 0.0, 0.0))
        for item in list(self._live.values()):
            if item.request.request_id in cancelled:
                events.append(self._finish(item, "cancelled", None, 0.0, 0.0))
        return events

    def _admit(self) -> list[TokenEvent]:
        """Prefill arrived requests (earliest first) into free slots; idles the clock to the next arrival when
        nothing runs and nothing has arrived yet."""
        free = [slot for slot in range(self.num_slots) if slot not in self._live]
        if not free or not self._waiting:
            return []
        if self._host_arrivals:
            if not self._live:  # idle until the next request arrives
                time.sleep(max(0.0, min(w.host_submit_s for w in self._waiting) - time.perf_counter()))
            now = time.perf_counter()
            ready = sorted((w for w in self._waiting if w.host_submit_s <= now), key=_host_order)
        else:
            if not self._live:  # the device idles until the next request arrives
                self.device_time_s = max(self.device_time_s, min(w.arrival_s for w in self._waiting))
            ready = sorted((w for w in self._waiting if w.arrival_s <= self.device_time_s), key=_queue_order)
        events = []
        for item, slot in zip(ready, free, strict=False):
            self._waiting.remove(item)
            events.append(self._prefill(item, slot))
        return events

    def _prefill(self, item: _Live, slot: int) -> TokenEvent:
        """Write a request's prompt into `slot`; its first token comes from the last chunk's logits."""
        start = time.perf_counter()
        results = self._slots.prefill(slot, item.request.prompt_ids)
        device_s = 0.0
        for result in results:
            seconds = self._clock.prefill_call_s(result.bucket)
            self.calls.append(
                CallRecord("prefill", (slot,), (item.request.request_id,), result.bucket, self.device_time_s, seconds)
            )
            self.device_time_s += seconds
            device_s += seconds
        item.slot = slot
        self._live[slot] = item
        token = int(item.sampler(results[-1].logits)[0])
        event = self._accept(item, token, time.perf_counter() - start, device_s)
        if self.num_speculative_tokens and event.finish_reason is None:  # a draft fills its slot after the token
            self._record_draft(self._proposer.admit(slot, item.request.prompt_ids, item.sampler))
        return event

    def _record_draft(self, calls: list[DraftCall]) -> float:
        """Charge a proposer's program calls on the simulated clock; returns their seconds."""
        seconds = 0.0
        for call in calls:
            ids = tuple(self._live[slot].request.request_id for slot in call.slots)
            self.calls.append(CallRecord(call.kind, call.slots, ids, call.bucket, self.device_time_s, call.seconds))
            self.device_time_s += call.seconds
            seconds += call.seconds
        return seconds

    def _verify_step(self) -> list[TokenEvent]:
        """One verify step: every live slot's proposal, one call scoring each slot's last token and proposals at
        the smallest bucket holding every position written, then each slot's own acceptance and stop rules."""
        start = time.perf_counter()
        histories: list[list[int]] = [[] for _ in range(self.num_slots)]
        counts = [0] * self.num_slots
        for slot, item in self._live.items():
            histories[slot] = [*item.request.prompt_ids, *item.tokens]
            room = min(item.request.max_new_tokens - len(item.tokens) - 1, self.ctx_len - len(histories[slot]))
            counts[slot] = min(self.num_speculative_tokens, room)
        proposal, draft_calls = self._proposer.propose(histories, counts)
        draft_s = self._record_draft(draft_calls)
        proposed = {slot: proposal.tokens[slot][: counts[slot]] for slot in self._live}
        feeds = {slot: ([histories[slot][-1], *proposed[slot]], len(histories[slot]) - 1) for slot in self._live}
        result = self._slots.verify(feeds)
        verify_s = self._record_decode_call(result.bucket)
        gained = {}
        for slot, item in self._live.items():
            scored = result.logits[slot, : len(proposed[slot]) + 1]
            gained[slot] = verify_row(proposed[slot], scored, proposal.probabilities[slot], item.sampler)
            self._proposed += len(proposed[slot])
            self._accepted += len(gained[slot]) - 1
            self._verify_slot_steps += 1
        host_s = time.perf_counter() - start
        events = []
        for slot, item in list(self._live.items()):
            for token in gained[slot]:  # token by token: a stop rule drops the rest
                events.append(self._accept(item, token, host_s, verify_s + draft_s))
                if events[-1].finish_reason is not None:
                    break
        return events

    def _decode_step(self) -> list[TokenEvent]:
        """One decode call over every slot at the smallest bucket holding every live position; each live slot
        then samples its own next token with its own settings."""
        start = time.perf_counter()
        result = self._slots.decode({slot: (i.tokens[-1], i.next_position) for slot, i in self._live.items()})
        device_s = self._record_decode_call(result.bucket)
        host_s = time.perf_counter() - start
        events = []
        for slot, item in list(self._live.items()):
            token = int(item.sampler(result.logits[slot : slot + 1])[0])
            events.append(self._accept(item, token, host_s, device_s))
        return events

    def _record_decode_call(self, bucket: int) -> float:
        """Charge a decode (or verify) call of every live slot at `bucket` on the simulated clock and record it
        for the trace and the stats; returns its simulated seconds."""
        seconds = self._clock.decode_call_s(bucket)
        live = tuple(self._live)
        ids = tuple(self._live[slot].request.request_id for slot in live)
        self.calls.append(CallRecord("decode", live, ids, bucket, self.device_time_s, seconds))
        self.device_time_s += seconds
        self._decode_live.append(len(live))
        self._decode_buckets.append(bucket)
        return seconds

    def _accept(self, item: _Live, token: int, host_s: float, device_s: float) -> TokenEvent:
        """Record `token` for `item` at the current clocks; finish it when a stop rule says so."""
        item.tokens.append(token)
        item.device_times.append(self.device_time_s)
        item.host_times.append(time.perf_counter())
        request = item.request
        reason = None
        if token in request.eos_token_ids:
            reason = "eos"
        elif any(tuple(item.tokens[-len(s) :]) == s for s in request.stop_sequences):
            reason = "stop"
        elif len(item.tokens) >= request.max_new_tokens:
            reason = "length"
        if reason is None:
            return TokenEvent(request.request_id, token, None, item.slot, host_s, device_s)
        return self._finish(item, reason, token, host_s, device_s)

    def _finish(self, item: _Live, reason: str, token: int | None, host_s: float, device_s: float) -> TokenEvent:
        """Free the request's slot and record its figures."""
        self._live.pop(item.slot, None)
        with self._lock:
            self._known.discard(item.request.request_id)
        now = time.perf_counter()
        self._last_host_s = now - self._started
        devices = item.device_times or [self.device_time_s]
        hosts = item.host_times or [now]
        stats = RequestStats(
            prompt_tokens=len(item.request.prompt_ids),
            generated_tokens=len(item.tokens),
            arrival_s=item.arrival_s,
            first_token_s=devices[0],
            finish_s=devices[-1],
            token_latencies_s=_gaps(devices),
            host_ttft_s=hosts[0] - item.host_submit_s,
            host_token_latencies_s=_gaps(hosts),
        )
        self._finished.append((item.request.request_id, stats))
        return TokenEvent(item.request.request_id, token, reason, item.slot, host_s, device_s)


def _queue_order(item: _Live) -> tuple[float, int]:
    return item.arrival_s, item.order


def _host_order(item: _Live) -> tuple[float, int]:
    return item.host_submit_s, item.order


def _sampler(request: Request) -> TokenSampler:
    return TokenSampler(request.sampling)


def _gaps(times: Sequence[float]) -> tuple[float, ...]:
    return tuple(b - a for a, b in zip(times, times[1:], strict=False))


def _ids(values: object, what: str) -> tuple[int, ...]:
    """A tuple of token ids, refusing anything that is not a sequence of integers."""
    if isinstance(values, (str, bytes, torch.Tensor)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{what} must be a sequence of integer token ids, got {values!r}")
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a sequence of integer token ids, got {values!r}") from None
