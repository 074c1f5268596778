"""Host decode cost vs position: a decode step must cost the same early and late in the cache.

The stateful program attends over the whole fixed ctx_len buffer and never re-runs the prompt, so the time of
one decode step at position 16 and at ctx_len − 16 should be equal (within noise). Each figure is the median of
`--repeats` timed steps after warm-up (the two positions interleaved), batch 1, on a model shaped like MPT-125M
with random weights and on the shipped model at its max_seq_len of 256.

    python -m bench.decode_cost [--ctx-len 512] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import MptForCausalLM

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT
from qeff_compiler.capture import resolve_model
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "decode_cost.json"


def decode_step(compiled: qc.CompiledModel, position: int) -> Callable[[], object]:
    """One batch-1 decode step at `position` over a random cache, as a call to time."""
    decode = compiled.host_executors()[1]
    caches = {s.name: torch.randn(s.shape).to(s.dtype) for s in compiled.decode.inputs if s.role.startswith("past")}
    inputs = {"input_ids": torch.tensor([[1]]), "position_ids": torch.tensor([[position]]), **caches}
    return lambda: decode(inputs)


def interleaved_times(calls: list[Callable[[], object]], repeats: int, warmup: int = 5) -> list[list[float]]:
    """Wall times of each call, `repeats` times, interleaved so that load changes on the machine hit all alike."""
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for series, call in zip(times, calls, strict=True):
            start = time.perf_counter()
            call()
            series.append(time.perf_counter() - start)
    return times


def measure(name: str, model: object, ctx_len: int, repeats: int) -> dict:
    ctx_len = min(ctx_len, resolve_model(model).config.max_seq_len)
    compiled = qc.compile(model, precision="fp32", ctx_len=ctx_len, prefill_len=32, verify=False)
    early, late = interleaved_times([decode_step(compiled, 16), decode_step(compiled, ctx_len - 16)], repeats)
    row = {
        "model": name,
        "ctx_len": ctx_len,
        "position_early": 16,
        "position_late": ctx_len - 16,
        "early_median_ms": 1e3 * statistics.median(early),
        "late_median_ms": 1e3 * statistics.median(late),
        "early_min_max_ms": [1e3 * min(early), 1e3 * max(early)],
        "late_min_max_ms": [1e3 * min(late), 1e3 * max(late)],
    }
    row["late_over_early"] = row["late_median_ms"] / row["early_median_ms"]
    return row


def run(quick: bool = False, repeats: int = 30, ctx_len: int = 512) -> list[dict]:
    """Both models (quick: the shipped one, 5 repeats) at the torch threads already set."""
    torch.manual_seed(0)
    models: dict[str, object] = {} if quick else {"mpt-125m shape (random weights)": MptForCausalLM(preset_config("mpt-125m")).eval()}
    models["tiny-mpt-pystdlib (shipped)"] = TINY_MPT
    return [measure(name, model, ctx_len, 5 if quick else repeats) for name, model in models.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(repeats=args.repeats, ctx_len=args.ctx_len)
    print(f"{'model':<34} {'pos':>5} {'median ms':>10} {'pos':>5} {'median ms':>10} {'late/early':>10}")
    for r in rows:
        print(f"{r['model']:<34} {r['position_early']:>5} {r['early_median_ms']:>10.2f} "
              f"{r['position_late']:>5} {r['late_median_ms']:>10.2f} {r['late_over_early']:>10.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
