"""One HTTP generation request as it runs: its prompts submitted to the engine loop, each choice's tokens turned
into text pieces, its finish reason and latency figures on both clocks, recorded in the metrics when it ends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import Request
from qeff_compiler.serve.engine import Delivery, EngineFailed, EngineLoop, Ticket
from qeff_compiler.serve.metrics import DEVICE, HOST, ServerMetrics
from qeff_compiler.serve.openai_errors import ApiError
from qeff_compiler.serve.text import TextStream

#: the scheduler's finish reasons as OpenAI names them (a stop string found in the text is "stop" too)
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "cancelled"}


@dataclass(frozen=True)
class Piece:
    """New text of one choice, the tokens that arrived with it, and its finish reason once it has ended."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None


@dataclass
class ChoiceTiming:
    """When a choice's tokens arrived, on the host wall clock and the simulated device clock (seconds)."""

    arrival: tuple[float, float]
    tokens: list[tuple[float, float]] = field(default_factory=list)

    def figures(self) -> dict[str, float | None]:
        """TTFT and total latency per clock: what the `qeff` extension of a response reports."""
        if not self.tokens:
            return {"host_ttft_s": None, "host_latency_s": None, "simulated_ttft_s": None, "simulated_latency_s": None}
        (first_host, first_device), (last_host, last_device) = self.tokens[0], self.tokens[-1]
        return {
            "host_ttft_s": first_host - self.arrival[0],
            "host_latency_s": last_host - self.arrival[0],
            "simulated_ttft_s": first_device - self.arrival[1],
            "simulated_latency_s": last_device - self.arrival[1],
        }


class Generation:
    """The choices of one request, one scheduler request per prompt."""

    def __init__(
        self,
        engine: EngineLoop,
        metrics: ServerMetrics,
        endpoint: str,
        tokenizer: Any,
        prompts: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        sampling: SamplingConfig,
        eos_token_ids: frozenset[int],
        stops: tuple[str, ...],
        prefix: str,
    ) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.engine, self.metrics, self.endpoint = engine, metrics, endpoint
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.texts = [TextStream(tokenizer, stops) for _ in prompts]
        self.timings: list[ChoiceTiming] = []
        self.tickets: list[Ticket] = []
        self.finished: list[str | None] = [None] * len(prompts)
        try:
            for index, (prompt, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
                request = Request(f"{self.id}-{index}", tuple(prompt), limit, sampling, eos_token_ids)
                ticket = engine.submit(request)
                self.tickets.append(ticket)
                self.timings.append(ChoiceTiming((ticket.arrival_host_s, ticket.arrival_device_s)))
        except BaseException:
            self.close()
            raise
        metrics.prompt_tokens.inc(self.prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        return sum(len(text.tokens) for text in self.texts)

    async def pieces(self) -> AsyncIterator[Piece]:
        """Each choice's pieces in turn (the engine runs them all at once; their events wait in their queues)."""
        for index, ticket in enumerate(self.tickets):
            while self.finished[index] is None:
                item = await ticket.queue.get()
                if isinstance(item, EngineFailed):
                    self.close()
                    raise ApiError(500, str(item), kind="server_error")
                yield self._accept(index, item)

    async def run(self) -> list[Piece]:
        """Every choice to its end: one piece per choice with its whole text and tokens."""
        text: dict[int, list[str]] = {}
        tokens: dict[int, list[int]] = {}
        finish: dict[int, str | None] = {}
        async for piece in self.pieces():
            text.setdefault(piece.index, []).append(piece.text)
            tokens.setdefault(piece.index, []).extend(piece.token_ids)
            finish[piece.index] = piece.finish_reason
        return [Piece(i, "".join(text[i]), tuple(tokens[i]), finish[i]) for i in range(len(self.tickets))]

    def _accept(self, index: int, delivery: Delivery) -> Piece:
        event, stream = delivery.event, self.texts[index]
        tokens: tuple[int, ...] = ()
        piece = ""
        if event.token is not None:
            tokens = (event.token,)
            piece = stream.push(event.token)
            self._record_token(index, delivery)
        reason = FINISH_REASONS[event.finish_reason] if event.finish_reason is not None else None
        if reason is None and stream.stopped:
            self.engine.cancel(event.request_id)  # a stop string: the slot is freed at the next step
            reason = "stop"
        if reason is not None:
            piece += stream.finish()
            self._end(index, reason)
        return Piece(index, piece, tokens, reason)

    def _record_token(self, index: int, delivery: Delivery) -> None:
        timing = self.timings[index]
        now = (delivery.host_s, delivery.device_s)
        previous = timing.tokens[-1] if timing.tokens else None
        timing.tokens.append(now)
        self.metrics.generated_tokens.inc()
        if previous is None:
            self.metrics.ttft.labels(HOST).observe(now[0] - timing.arrival[0])
            self.metrics.ttft.labels(DEVICE).observe(now[1] - timing.arrival[1])
        else:
            self.metrics.token_latency.labels(HOST).observe(now[0] - previous[0])
            self.metrics.token_latency.labels(DEVICE).observe(now[1] - previous[1])

    def _end(self, index: int, reason: str) -> None:
        self.finished[index] = reason
        self.metrics.requests.labels(self.endpoint, reason).inc()
        figures = self.timings[index].figures()
        if figures["host_latency_s"] is not None and figures["simulated_latency_s"] is not None:
            self.metrics.request_latency.labels(HOST).observe(figures["host_latency_s"])
            self.metrics.request_latency.labels(DEVICE).observe(figures["simulated_latency_s"])

    def close(self) -> None:
        """Cancel every choice that has not ended (the client went away, or an error): their slots are freed."""
        for index, ticket in enumerate(self.tickets):
            if self.finished[index] is None:
                self.engine.cancel(ticket.request.request_id)
                self._end(index, "cancelled")
