"""Latency figures of a request stream served by continuous batching (`runtime.scheduler`).

Two clocks, as in `runtime.stats`: the unprefixed figures are *simulated* device seconds (the cost model's time of
every program call the scheduler made, each step charged at its context bucket, plus idle time until a request
arrives); `host_*` figures are wall-clock seconds of the host engine on this machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qeff_compiler.runtime.acceptance import AcceptanceFigures
from qeff_compiler.runtime.stats import percentile


@dataclass(frozen=True)
class RequestStats:
    """One request's timeline. Device times are on the scheduler's simulated clock (0 = its start)."""

    prompt_tokens: int
    generated_tokens: int
    #: simulated time the request became admissible: its arrival_s, or when it was submitted if later
    arrival_s: float
    #: simulated time its first new token was known (its prefill ended)
    first_token_s: float
    #: simulated time its last token was known
    finish_s: float
    #: simulated gap before each token after the first (other requests' prefills and decode steps included)
    token_latencies_s: tuple[float, ...]
    #: wall time from submit to the first new token, and the wall gap before each later token
    host_ttft_s: float
    host_token_latencies_s: tuple[float, ...]

    @property
    def ttft_s(self) -> float:
        """Simulated time to first token: queueing for a slot plus the prefill."""
        return self.first_token_s - self.arrival_s


@dataclass(frozen=True)
class ServingStats(AcceptanceFigures):
    """Figures of a request stream: TTFT and per-token latency percentiles, throughput, slot occupancy."""

    requests: tuple[RequestStats, ...]
    #: the simulated device ("ai100-standard, 14 cores x 1 SoC")
    device: str
    num_slots: int
    #: simulated seconds from the scheduler's start to the last token
    makespan_s: float
    host_makespan_s: float
    #: live slots of every decode step (its share of num_slots is the occupancy)
    decode_live_slots: tuple[int, ...]
    #: context bucket every decode step ran at
    decode_buckets: tuple[int, ...]
    #: speculative decoding: tokens proposed and accepted over every slot and verify step, and the (slot, verify
    #: step) pairs, each of which gained 1 + its accepted proposals (all 0 without speculation)
    proposed_tokens: int = 0
    accepted_tokens: int = 0
    verify_slot_steps: int = 0

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.requests)

    @property
    def throughput_tokens_per_s(self) -> float:
        """Simulated generated tokens per second across all requests."""
        return self.generated_tokens / self.makespan_s if self.makespan_s > 0 else float("nan")

    @property
    def host_throughput_tokens_per_s(self) -> float:
        return self.generated_tokens / self.host_makespan_s if self.host_makespan_s > 0 else float("nan")

    @property
    def slot_occupancy(self) -> float:
        """Mean share of the slots that held a live request, over the decode steps."""
        if not self.decode_live_slots:
            return float("nan")
        return sum(self.decode_live_slots) / (len(self.decode_live_slots) * self.num_slots)

    def ttft_percentile_s(self, percent: int) -> float:
        return percentile(tuple(r.ttft_s for r in self.requests), percent)

    def host_ttft_percentile_s(self, percent: int) -> float:
        return percentile(tuple(r.host_ttft_s for r in self.requests), percent)

    def token_percentile_s(self, percent: int) -> float:
        """Simulated per-token latency percentile over every token after a request's first."""
        return percentile(_all(r.token_latencies_s for r in self.requests), percent)

    def host_token_percentile_s(self, percent: int) -> float:
        return percentile(_all(r.host_token_latencies_s for r in self.requests), percent)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a table."""
        return [
            ("requests", str(len(self.requests))),
            ("generated tokens", str(self.generated_tokens)),
            ("slots", str(self.num_slots)),
            (f"simulated throughput ({self.device})", f"{self.throughput_tokens_per_s:.2f} tok/s"),
            ("simulated TTFT p50 / p99", _ms_pair(self.ttft_percentile_s(50), self.ttft_percentile_s(99))),
            (
                "simulated per-token p50 / p90 / p99",
                " / ".join(f"{self.token_percentile_s(p) * 1e3:.3f}" for p in (50, 90, 99)) + " ms",
            ),
            ("slot occupancy", f"{self.slot_occupancy:.1%}"),
            *self._speculative_rows(),
            ("host throughput", f"{self.host_throughput_tokens_per_s:.1f} tok/s"),
            ("host TTFT p50 / p99", _ms_pair(self.host_ttft_percentile_s(50), self.host_ttft_percentile_s(99))),
            (
                "host per-token p50 / p90 / p99",
                " / ".join(f"{self.host_token_percentile_s(p) * 1e3:.2f}" for p in (50, 90, 99)) + " ms",
            ),
        ]

    def _speculative_rows(self) -> list[tuple[str, str]]:
        if not self.verify_slot_steps:
            return []
        return [
            ("acceptance rate", f"{self.acceptance_rate:.3f} ({self.accepted_tokens}/{self.proposed_tokens})"),
            ("accepted tokens per slot per step", f"{self.accepted_tokens_per_step:.2f}"),
        ]


def _all(series: Iterable[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(value for values in series for value in values)


def _ms_pair(first: float, second: float) -> str:
    return f"{first * 1e3:.3f} / {second * 1e3:.3f} ms"
