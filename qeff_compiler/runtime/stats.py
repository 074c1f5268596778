"""Latency statistics of one `generate` call.

Host figures are wall-clock times of the host executor on this machine, named `host_*` so they are never
mistaken for device figures; simulated device figures come from the AI 100 backend's cost model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyStats:
    """Timing of a generate call. Decode rates are per sequence (one token per row per step)."""

    prompt_tokens: tuple[int, ...]
    generated_tokens: tuple[int, ...]
    #: wall time from the call until the first new token of every row is known (all prefill chunks + sampling)
    host_ttft_s: float
    host_prefill_s: float
    host_decode_s: float
    #: wall time of each decode step
    host_token_latencies_s: tuple[float, ...]

    @property
    def host_decode_tokens_per_s(self) -> float:
        steps = len(self.host_token_latencies_s)
        return steps / self.host_decode_s if self.host_decode_s > 0 else float("nan")

    @property
    def host_token_p50_s(self) -> float:
        return _percentile(self.host_token_latencies_s, 50)

    @property
    def host_token_p90_s(self) -> float:
        return _percentile(self.host_token_latencies_s, 90)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a table."""
        return [
            ("prompt tokens", ", ".join(map(str, self.prompt_tokens))),
            ("generated tokens", ", ".join(map(str, self.generated_tokens))),
            ("host TTFT", f"{self.host_ttft_s * 1e3:.1f} ms"),
            ("host prefill", f"{self.host_prefill_s * 1e3:.1f} ms"),
            ("host decode", f"{self.host_decode_tokens_per_s:.1f} tok/s per sequence"),
            ("host per-token p50 / p90", f"{self.host_token_p50_s * 1e3:.2f} / {self.host_token_p90_s * 1e3:.2f} ms"),
        ]


def _percentile(values: tuple[float, ...], percent: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]
