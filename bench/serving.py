"""Serving: continuous batching under load, and what compute-context-length buckets save.

Two parts, one section (`serving` of `python -m bench`):

- curves: the shipped model compiled with full_batch_size F in {1, 4, 8} (context buckets 64/128/256) serves a
  Poisson stream of requests (prompts 8-64 tokens, 8-48 new tokens) at offered loads of 25 %-125 % of its own
  capacity (the throughput of the same stream all arriving at once), on the simulated device (arrivals on the
  simulated clock) and on this machine (arrivals replayed on the wall clock, host engine). Per point: throughput
  (tok/s), TTFT p50/p99, per-token p50/p99 and slot occupancy.
- ccl_decode: host decode tok/s of a 200-token sequence at ctx_len 2048 (MPT-125M shape, random weights) with
  buckets [256, 512, 1024, 2048] (the step runs at bucket 256) against the same compile without buckets, for one
  sequence and for 8 slots all at position 200; medians of interleaved timed steps, on the torch threads a
  generation would use (`runtime.threads`: the CPUs the load leaves free, recorded as `threads`): on a loaded
  machine two threads wait at every op's barrier for a time slice, which hides the work the buckets cut. The
  simulated decode step of both is reported too.

    python -m bench.serving [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
from transformers import MptForCausalLM

import qeff_compiler as qc
from bench.decode_cost import interleaved_times
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.data import TINY_MPT
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler
from qeff_compiler.runtime.threads import resolve_threads, torch_threads
from qeff_compiler.runtime.workload import PoissonWorkload

SHIPPED_BUCKETS = [64, 128, 256]
LOADS = (0.25, 0.5, 0.75, 1.0, 1.25)
CCL_BUCKETS = [256, 512, 1024, 2048]
POSITION = 200


def _stream(requests: int, rate: float | None, vocab: int) -> list:
    return PoissonWorkload(requests, rate, (8, 64), (8, 48), seed=0).requests(vocab)


def _serve(compiled: qc.CompiledModel, clock: str, requests: int, rate: float | None) -> dict:
    scheduler = ContinuousBatchScheduler(compiled, arrivals=clock)
    scheduler.run(_stream(requests, rate, compiled.config.vocab_size))
    stats = scheduler.stats()
    host = clock == "host"
    ttft = stats.host_ttft_percentile_s if host else stats.ttft_percentile_s
    token = stats.host_token_percentile_s if host else stats.token_percentile_s
    return {
        "throughput_tokens_per_s": stats.host_throughput_tokens_per_s if host else stats.throughput_tokens_per_s,
        "ttft_p50_ms": 1e3 * ttft(50),
        "ttft_p99_ms": 1e3 * ttft(99),
        "token_p50_ms": 1e3 * token(50),
        "token_p99_ms": 1e3 * token(99),
        "slot_occupancy": stats.slot_occupancy,
        "generated_tokens": stats.generated_tokens,
        "host_threads": scheduler.threads,
    }


def curves(quick: bool) -> list[dict]:
    """Throughput and latency vs offered load per slot count and clock (see the module docstring)."""
    slots, loads, requests = ((1, 4), (0.5, 1.0), 8) if quick else ((1, 4, 8), LOADS, 24)
    rows = []
    for full_batch_size in slots:
        compiled = qc.compile(
            TINY_MPT,
            ctx_len=256,
            prefill_len=32,
            full_batch_size=full_batch_size,
            comp_ctx_lengths_prefill=SHIPPED_BUCKETS,
            comp_ctx_lengths_decode=SHIPPED_BUCKETS,
            verify=False,
        )
        for clock in ("device", "host"):
            saturated = _serve(compiled, clock, requests, None)
            mean_tokens = saturated["generated_tokens"] / requests
            capacity = saturated["throughput_tokens_per_s"] / mean_tokens  # requests per second
            for load in loads:
                row = _serve(compiled, clock, requests, load * capacity)
                rows.append(
                    {"full_batch_size": full_batch_size, "clock": clock, "offered_load": load,
                     "rate_per_s": load * capacity, "capacity_requests_per_s": capacity,
                     "saturated_tokens_per_s": saturated["throughput_tokens_per_s"], **row}
                )
                print(f"F={full_batch_size} {clock:<6} load {load:.2f}: {row['throughput_tokens_per_s']:.1f} tok/s, "
                      f"TTFT p50 {row['ttft_p50_ms']:.2f} ms p99 {row['ttft_p99_ms']:.2f} ms", flush=True)
    return rows


def _decode_call(compiled: qc.CompiledModel, bucket: int | None, position: int) -> Callable[[], object]:
    """One decode step of every slot at `position` over a random cache, through the generation (cache-donating)
    executor the scheduler uses."""
    decode = compiled.generation_executors("host")[1]
    spec = {s.name: s for s in compiled.decode.inputs}
    slots = spec["input_ids"].shape[0]
    inputs = {name: torch.randn(s.shape).to(s.dtype) for name, s in spec.items() if s.role.startswith("past_")}
    inputs |= {"input_ids": torch.ones(slots, 1, dtype=torch.int64), "position_ids": torch.full((slots, 1), position)}
    if "batch_index" in spec:
        inputs["batch_index"] = torch.arange(slots)[:, None]
    if bucket is not None:
        inputs["comp_ctx_lengths"] = torch.zeros(bucket, dtype=torch.int64)
    return lambda: decode(inputs)


def ccl_decode(quick: bool) -> list[dict]:
    """Host decode tok/s with and without context buckets (see the module docstring; quick: the shipped model at
    its ctx_len 256, buckets 64/128/256, position 50, 8 slots only)."""
    model: object
    if quick:
        model, ctx_len, buckets, name, position, repeats = TINY_MPT, 256, SHIPPED_BUCKETS, "shipped", 50, 5
    else:
        torch.manual_seed(0)
        model = MptForCausalLM(preset_config("mpt-125m")).eval()
        ctx_len, buckets, name, position, repeats = 2048, CCL_BUCKETS, "mpt-125m shape (random weights)", POSITION, 15
    rows = []
    for slots in (8,) if quick else (1, 8):
        serving = {"full_batch_size": slots} if slots > 1 else {}
        plain = qc.compile(model, ctx_len=ctx_len, prefill_len=32, verify=False, **serving)
        bucketed = qc.compile(
            model, ctx_len=ctx_len, prefill_len=32, comp_ctx_lengths_decode=buckets, verify=False, **serving
        )
        bucket = next(b for b in buckets if b > position)
        calls = [_decode_call(plain, None, position), _decode_call(bucketed, bucket, position)]
        threads = resolve_threads(None)  # as `CompiledModel.generate` runs the scheduler
        with torch_threads(threads):
            without, with_buckets = interleaved_times(calls, repeats)
        row = {
            "model": name, "ctx_len": ctx_len, "slots": slots, "position": position, "buckets": buckets, "bucket": bucket,
            "threads": threads,
            "without_buckets_ms": 1e3 * statistics.median(without), "with_buckets_ms": 1e3 * statistics.median(with_buckets),
            "without_min_max_ms": [1e3 * min(without), 1e3 * max(without)],
            "with_min_max_ms": [1e3 * min(with_buckets), 1e3 * max(with_buckets)],
            "simulated_without_ms": 1e3 * plain.simulation.decode_call_s(ctx_len),
            "simulated_with_ms": 1e3 * bucketed.simulation.decode_call_s(bucket),
        }
        row["host_decode_tokens_per_s_without"] = slots / (row["without_buckets_ms"] / 1e3)
        row["host_decode_tokens_per_s_with"] = slots / (row["with_buckets_ms"] / 1e3)
        row["host_speedup_with_vs_without"] = row["without_buckets_ms"] / row["with_buckets_ms"]
        row["simulated_speedup_with_vs_without"] = row["simulated_without_ms"] / row["simulated_with_ms"]
        print(f"{name} ctx {ctx_len} slots {slots}: {row['without_buckets_ms']:.1f} ms -> {row['with_buckets_ms']:.1f} ms "
              f"(x{row['host_speedup_with_vs_without']:.2f}; simulated x{row['simulated_speedup_with_vs_without']:.2f})",
              flush=True)
        rows.append(row)
    return rows


def run(quick: bool = False) -> dict:
    return {"curves": curves(quick), "ccl_decode": ccl_decode(quick)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("curves", "ccl_decode"))
    args = parser.parse_args()
    parts = {"curves": curves, "ccl_decode": ccl_decode}
    for name, part in parts.items():
        if args.only in (None, name):
            print(json.dumps(part(args.quick), indent=2))


if __name__ == "__main__":
    main()
