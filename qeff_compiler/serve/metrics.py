"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not share counts).

Every latency is recorded twice under the `clock` label: `host` is wall-clock time on this machine (what a client
waits now), `simulated_device` is the AI 100 cost model's time for the same steps (what the card would take).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: bucket bounds in seconds: simulated device steps are sub-millisecond on small models, host steps far longer
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the `clock` label values
HOST, DEVICE = "host", "simulated_device"


class ServerMetrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qeff_requests",
            "requests finished, by endpoint and finish reason (eos, stop, length, cancelled, error)",
            ["endpoint", "finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "qeff_rejected_requests", "requests refused before admission, by HTTP status", ["status"], registry=r
        )
        self.prompt_tokens = Counter("qeff_prompt_tokens", "prompt tokens admitted", registry=r)
        self.generated_tokens = Counter("qeff_generated_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("qeff_queue_depth", "requests submitted and waiting for a slot", registry=r)
        self.live_slots = Gauge("qeff_slots_live", "continuous-batching slots holding a request", registry=r)
        self.num_slots = Gauge("qeff_slots_total", "continuous-batching slots of the compiled model", registry=r)
        self.in_flight = Gauge("qeff_requests_in_flight", "HTTP generation requests being answered", registry=r)
        self.ttft = Histogram(
            "qeff_time_to_first_token_seconds",
            "arrival to first generated token",
            ["clock"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.token_latency = Histogram(
            "qeff_time_per_output_token_seconds",
            "time between consecutive generated tokens of a request",
            ["clock"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_latency = Histogram(
            "qeff_request_latency_seconds", "arrival to last token", ["clock"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.engine_steps = Counter("qeff_engine_steps", "scheduler steps run by the engine loop", registry=r)
        self.engine_seconds = Counter(
            "qeff_engine_busy_seconds", "time spent in scheduler steps", ["clock"], registry=r
        )

        for clocked in (self.ttft, self.token_latency, self.request_latency, self.engine_seconds):
            for clock in (HOST, DEVICE):
                clocked.labels(clock)  # both clocks exported from the start, at zero
        for status in ("429", "503"):
            self.rejected.labels(status)

    def render(self) -> bytes:
        return generate_latest(self.registry)
