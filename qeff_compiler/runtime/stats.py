"""Latency statistics of one `generate` call.

The unprefixed figures (`ttft_s`, `prefill_s`, `decode_tokens_per_s`, `token_p50_s`, ...) are *simulated*
device times: the AI 100 cost model's time of every program call the generation made. Host figures are
wall-clock times of the host executor on this machine, named `host_*` so they are never mistaken for device
figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyStats:
    """Timing of a generate call. Decode rates are per sequence (one token per row per step)."""

    prompt_tokens: tuple[int, ...]
    generated_tokens: tuple[int, ...]
    #: the simulated device ("ai100-standard, 14 cores x 1 SoC")
    device: str
    #: simulated time until the first new token: every prefill chunk (sampling on the host is not counted)
    ttft_s: float
    prefill_s: float
    #: simulated time of each decode step
    token_latencies_s: tuple[float, ...]
    #: wall time from the call until the first new token of every row is known (all prefill chunks + sampling);
    #: None for an estimate, which runs nothing on the host
    host_ttft_s: float | None = None
    host_prefill_s: float | None = None
    host_decode_s: float | None = None
    #: wall time of each decode step
    host_token_latencies_s: tuple[float, ...] = ()

    @property
    def decode_s(self) -> float:
        return sum(self.token_latencies_s)

    @property
    def decode_tokens_per_s(self) -> float:
        """Simulated decode rate per sequence."""
        return len(self.token_latencies_s) / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def token_p50_s(self) -> float:
        return percentile(self.token_latencies_s, 50)

    @property
    def token_p90_s(self) -> float:
        return percentile(self.token_latencies_s, 90)

    @property
    def host_decode_tokens_per_s(self) -> float:
        steps = len(self.host_token_latencies_s)
        return steps / self.host_decode_s if self.host_decode_s else float("nan")

    @property
    def host_token_p50_s(self) -> float:
        return percentile(self.host_token_latencies_s, 50)

    @property
    def host_token_p90_s(self) -> float:
        return percentile(self.host_token_latencies_s, 90)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a table; host rows only when the host ran the generation."""
        rows = [
            ("prompt tokens", ", ".join(map(str, self.prompt_tokens))),
            ("generated tokens", ", ".join(map(str, self.generated_tokens))),
            (f"simulated TTFT ({self.device})", f"{self.ttft_s * 1e3:.2f} ms"),
            ("simulated prefill", f"{self.prefill_s * 1e3:.2f} ms"),
            ("simulated decode", f"{self.decode_tokens_per_s:.2f} tok/s per sequence"),
            ("simulated per-token p50 / p90", f"{self.token_p50_s * 1e3:.3f} / {self.token_p90_s * 1e3:.3f} ms"),
        ]
        if self.host_ttft_s is None:
            return rows
        if self.host_prefill_s is None:
            raise ValueError("LatencyStats: host_ttft_s is set but host_prefill_s is None")
        return rows + [
            ("host TTFT", f"{self.host_ttft_s * 1e3:.1f} ms"),
            ("host prefill", f"{self.host_prefill_s * 1e3:.1f} ms"),
            ("host decode", f"{self.host_decode_tokens_per_s:.1f} tok/s per sequence"),
            ("host per-token p50 / p90", f"{self.host_token_p50_s * 1e3:.2f} / {self.host_token_p90_s * 1e3:.2f} ms"),
        ]


def percentile(values: tuple[float, ...], percent: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]
