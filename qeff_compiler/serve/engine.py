"""The engine loop: one thread owns the compiled model and runs the continuous-batching scheduler's `step()`,
fanning each step's token events out to the asyncio queue of the request they belong to.

Requests join free slots as they arrive and leave on EOS, a stop rule, `max_tokens` or `cancel` (a client that
went away): the scheduler frees the slot at its next step. Each delivered token carries two clocks: the host wall
clock and the scheduler's simulated device clock (which stands still while the engine idles), so a request's
simulated latency is the device time of the steps between its arrival and its token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request, TokenEvent
from qeff_compiler.serve.metrics import DEVICE, HOST, ServerMetrics

log = logging.getLogger("qeff_compiler.serve")


@dataclass(frozen=True)
class Delivery:
    """A token event with the two clocks read when its step ended."""

    event: TokenEvent
    host_s: float
    device_s: float


class EngineFailed(Exception):
    """The scheduler raised while stepping: every request in flight ends with this."""


@dataclass
class Ticket:
    """A submitted request as the HTTP side sees it: where its events arrive, and when it arrived on each clock."""

    request: Request
    queue: asyncio.Queue[Delivery | EngineFailed]
    loop: asyncio.AbstractEventLoop
    arrival_host_s: float
    arrival_device_s: float
    started: bool = field(default=False)


class EngineLoop:
    """Runs `scheduler.step()` in a dedicated thread while requests are queued or live."""

    def __init__(self, scheduler: ContinuousBatchScheduler, metrics: ServerMetrics) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.failure: EngineFailed | None = None
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qeff-engine", daemon=True)
        metrics.num_slots.set(scheduler.num_slots)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop stepping (after the current step) and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def waiting(self) -> int:
        """Requests submitted that have no token yet (queued, or admitted and prefilling)."""
        with self._lock:
            return sum(not ticket.started for ticket in self._tickets.values())

    def submit(self, request: Request) -> Ticket:
        """Hand a request to the scheduler (which validates it and may raise InvalidArgumentError); its events
        arrive on the returned ticket's queue, in the calling event loop."""
        if self.failure is not None:
            raise self.failure
        ticket = Ticket(
            request, asyncio.Queue(), asyncio.get_running_loop(), time.perf_counter(), self.scheduler.device_time_s
        )
        with self._lock:
            self._tickets[request.request_id] = ticket
        try:
            self.scheduler.submit(request)
        except BaseException:
            with self._lock:
                del self._tickets[request.request_id]
            raise
        self._wake.set()
        return ticket

    def cancel(self, request_id: str) -> None:
        """Stop delivering to a request and free its slot at the next step (a client that disconnected)."""
        with self._lock:
            known = self._tickets.pop(request_id, None) is not None
        if known:
            self.scheduler.cancel(request_id)
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                pending = bool(self._tickets)
            if not (pending or self.scheduler.has_work):
                self._wake.wait(0.5)
                continue
            started, device_before_s = time.perf_counter(), self.scheduler.device_time_s
            try:
                events = self.scheduler.step()
            except Exception as exc:  # noqa: BLE001 (the thread's boundary: every waiting client must hear of it)
                log.error("the engine loop stopped: the scheduler raised", exc_info=exc)
                self._fail(EngineFailed(f"the engine stopped: {type(exc).__name__}: {exc}"))
                return
            self._account(events, time.perf_counter() - started, device_before_s)
            if not events and not self.scheduler.has_work:
                self._wake.wait(0.01)  # submitted requests not visible to the scheduler yet: do not spin

    def _account(self, events: list[TokenEvent], host_s: float, device_before_s: float) -> None:
        """Advance the clocks, update the gauges and deliver the events of one step."""
        device_after_s = self.scheduler.device_time_s
        self.metrics.engine_steps.inc()
        self.metrics.engine_seconds.labels(HOST).inc(host_s)
        self.metrics.engine_seconds.labels(DEVICE).inc(device_after_s - device_before_s)
        self.metrics.queue_depth.set(self.scheduler.queue_depth)
        self.metrics.live_slots.set(self.scheduler.live_slots)
        now = time.perf_counter()
        batches: dict[str, tuple[Ticket, list[Delivery | EngineFailed]]] = {}
        admitted_s = device_before_s  # an admitting step prefills its requests one after another
        with self._lock:
            for event in events:
                ticket = self._tickets.get(event.request_id)
                if ticket is None:  # cancelled: the client is gone
                    continue
                first = not ticket.started
                if first:
                    admitted_s += event.device_s
                ticket.started = True
                device_s = admitted_s if first else device_after_s
                batches.setdefault(event.request_id, (ticket, []))[1].append(Delivery(event, now, device_s))
                if event.finish_reason is not None:
                    del self._tickets[event.request_id]
        for ticket, items in batches.values():
            _deliver(ticket, items)

    def _fail(self, failure: EngineFailed) -> None:
        self.failure = failure
        with self._lock:
            tickets, self._tickets = list(self._tickets.values()), {}
        for ticket in tickets:
            _deliver(ticket, [failure])


def _deliver(ticket: Ticket, items: list[Delivery | EngineFailed]) -> None:
    def put() -> None:
        for item in items:
            ticket.queue.put_nowait(item)

    try:
        ticket.loop.call_soon_threadsafe(put)
    except RuntimeError:  # the event loop has closed (server shutting down): nobody is listening
        pass
