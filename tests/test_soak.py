"""Soak (slow, not in the default run): 1,000 `generate` calls with random prompts on one CompiledModel of the
shipped model, and 200 cycles of `load_compiled` + `generate` of its saved artifact (a server reloading models).
Resident memory must not grow after warm-up beyond the bounds, and a call repeated with the same prompt and seed
must give the same tokens.

    python -m pytest tests/test_soak.py --run-slow -s      # prints the RSS figures
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT

CALLS = 1000
WARM_UP = 100
#: allowed RSS growth from the end of warm-up to the last call. Steady state allocates and frees the same tensors
#: each call, so real growth is the allocator's noise; a leak of one 4 KB page per call would already exceed it.
RSS_GROWTH_BOUND = 4 * 2**20
#: every this many calls, the call is repeated with the same prompt and seed and must give the same tokens
REPEAT_EVERY = 10


def rss_bytes() -> int:
    """VmRSS of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_thousand_generate_calls_keep_memory_flat_and_seeded_results_identical() -> None:
    compiled = qc.compile(TINY_MPT, precision="fp32", ctx_len=128, prefill_len=32)
    vocab = compiled.config.vocab_size
    rng = random.Random(0)
    samples: list[tuple[int, int]] = []
    start = time.perf_counter()
    for call in range(CALLS):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 64))]
        new_tokens = rng.randint(1, 32)
        sampling = {"do_sample": True, "temperature": 0.8, "top_k": 50, "seed": rng.randrange(2**31)} if call % 2 else {}
        out = compiled.generate([prompt], new_tokens, **sampling)
        assert 1 <= len(out.new_tokens[0]) <= new_tokens
        if call % REPEAT_EVERY == 0:
            again = compiled.generate([prompt], new_tokens, **sampling)
            assert again.new_tokens == out.new_tokens, f"call {call}: the same prompt and seed gave other tokens"
        if call + 1 >= WARM_UP:
            samples.append((call + 1, rss_bytes()))
    seconds = time.perf_counter() - start
    warm, last = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    print(
        f"\nsoak: {CALLS} generate calls in {seconds:.1f} s (loadavg {os.getloadavg()[0]:.2f}); RSS after warm-up "
        f"{warm / 2**20:.1f} MiB, at the end {last / 2**20:.1f} MiB (growth {(last - warm) / 2**20:+.2f} MiB), "
        f"peak {peak / 2**20:.1f} MiB"
    )
    assert peak - warm <= RSS_GROWTH_BOUND, f"RSS grew by {(peak - warm) / 2**20:.2f} MiB after warm-up"


LOAD_CYCLES = 200
LOAD_WARM_UP = 20
#: allowed RSS growth over the load + generate cycles after warm-up. Each load builds new graph modules, weight
#: tensors and executors and frees the previous ones; torch.fx keeping every generated source (fixed by
#: `ir.fx_sources`) grew ~0.5-0.75 MiB per cycle, i.e. ~100-150 MiB over the run
LOAD_RSS_GROWTH_BOUND = 8 * 2**20


@pytest.mark.slow
def test_two_hundred_load_and_generate_cycles_keep_memory_flat(tmp_path: Path) -> None:
    qc.compile(TINY_MPT, ctx_len=128, prefill_len=32).save(tmp_path / "artifact")
    prompt = list(range(1, 20))
    expected = None
    samples: list[int] = []
    start = time.perf_counter()
    for cycle in range(LOAD_CYCLES):
        tokens = qc.load_compiled(tmp_path / "artifact").generate([prompt], 8).new_tokens
        expected = expected or tokens
        assert tokens == expected, f"cycle {cycle}: the reloaded artifact generated other tokens"
        if cycle + 1 >= LOAD_WARM_UP:
            samples.append(rss_bytes())
    seconds = time.perf_counter() - start
    warm, peak = samples[0], max(samples)
    print(
        f"\nsoak: {LOAD_CYCLES} load + generate cycles in {seconds:.1f} s (loadavg {os.getloadavg()[0]:.2f}); RSS "
        f"after {LOAD_WARM_UP} cycles {warm / 2**20:.1f} MiB, at the end {samples[-1] / 2**20:.1f} MiB, peak "
        f"{peak / 2**20:.1f} MiB (growth {(peak - warm) / 2**20:+.2f} MiB)"
    )
    assert peak - warm <= LOAD_RSS_GROWTH_BOUND, f"RSS grew by {(peak - warm) / 2**20:.2f} MiB after warm-up"
