"""HTTP serving under load: `qeffc serve` on loopback, driven by the official `openai` client at several concurrencies.

The shipped model (fp32, `full_batch_size` 8 continuous-batching slots, host engine) is served from a subprocess; at each concurrency
C, C clients stream completions back to back (closed loop) until 2·C requests (quick: C) have finished. Per point:
throughput (completion tokens per wall second, all clients together), TTFT and TPOT (time per output token after
the first) p50/p99 as the clients see them on this machine, and the same run's simulated-device figures: the
`qeff` extension's simulated TTFT and latency of every request, and tokens per simulated second of device time
(the engine's `simulated_device` busy seconds from /metrics).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT, TINY_MPT_VALIDATION_TEXT

CONCURRENCY = (1, 4, 16, 64)
QUICK_CONCURRENCY = (1, 4)
#: the served model: the shipped MPT, fp32 (the host engine's fastest), 8 continuous-batching slots
SLOTS, CTX_LEN, PREFILL_LEN = 8, 128, 32
PROMPT_TOKENS, MAX_TOKENS, QUICK_MAX_TOKENS = 32, 64, 8


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="qeff-bench-serve-") as root:
        artifact = Path(root) / "shipped"
        qc.compile(
            TINY_MPT, ctx_len=CTX_LEN, prefill_len=PREFILL_LEN, full_batch_size=SLOTS, precision="fp32"
        ).save(artifact)
        port = _free_port()
        server = _start(artifact, port, Path(root) / "server.log")
        try:
            prompts = _prompts(artifact, 2 * max(CONCURRENCY))
            asyncio.run(_point(port, prompts, 1, 1, 2))  # warm-up: the first calls of a process are slower
            points = [
                asyncio.run(_point(port, prompts, c, c if quick else 2 * c, QUICK_MAX_TOKENS if quick else MAX_TOKENS))
                for c in (QUICK_CONCURRENCY if quick else CONCURRENCY)
            ]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
    return {
        "model": "tiny-mpt-pystdlib (shipped), fp32, full_batch_size 8, host engine",
        "slots": SLOTS,
        "prompt_tokens": PROMPT_TOKENS,
        "max_tokens": QUICK_MAX_TOKENS if quick else MAX_TOKENS,
        "points": points,
    }


async def _point(port: int, prompts: list[list[int]], concurrency: int, requests: int, max_tokens: int) -> dict:
    """`concurrency` closed-loop streaming clients until `requests` have finished."""
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    queue = list(range(requests))
    samples: list[dict] = []

    async def one(index: int) -> None:
        start = time.perf_counter()
        first = None
        tokens = 0
        final: dict = {}
        stream = await client.completions.create(
            model="shipped", prompt=prompts[index], max_tokens=max_tokens, temperature=0, stream=True
        )
        async for chunk in stream:
            ids = chunk.model_extra["qeff"]["token_ids"]
            if ids and first is None:
                first = time.perf_counter()
            tokens += len(ids)
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                final = chunk.model_extra["qeff"]
        end = time.perf_counter()
        assert first is not None and final, "a stream ended without tokens"
        samples.append({
            "tokens": tokens,
            "ttft_s": first - start,
            "tpot_s": (end - first) / (tokens - 1) if tokens > 1 else None,
            "simulated_ttft_s": final["simulated_ttft_s"],
            "simulated_tpot_s": (final["simulated_latency_s"] - final["simulated_ttft_s"]) / (tokens - 1)
            if tokens > 1 else None,
        })

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    busy_before = _simulated_busy_s(port)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    simulated = _simulated_busy_s(port) - busy_before
    await client.close()
    tokens = sum(s["tokens"] for s in samples)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "simulated_device_s": simulated,
        "simulated_tokens_per_s": tokens / simulated,
        **_percentiles("ttft", [s["ttft_s"] for s in samples]),
        **_percentiles("tpot", [s["tpot_s"] for s in samples if s["tpot_s"] is not None]),
        **_percentiles("simulated_ttft", [s["simulated_ttft_s"] for s in samples]),
        **_percentiles("simulated_tpot", [s["simulated_tpot_s"] for s in samples if s["simulated_tpot_s"] is not None]),
        "load_average": os.getloadavg()[0],
    }


def _percentiles(name: str, values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {f"{name}_p50_ms": values[0] * 1e3, f"{name}_p99_ms": values[0] * 1e3}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"{name}_p50_ms": cuts[49] * 1e3, f"{name}_p99_ms": cuts[98] * 1e3}


def _prompts(artifact: Path, count: int) -> list[list[int]]:
    """`count` prompts of PROMPT_TOKENS tokens, consecutive windows of the shipped validation text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact, model_max_length=2**31)
    ids = tokenizer.encode(TINY_MPT_VALIDATION_TEXT.read_text()[:40_000])
    return [ids[i * PROMPT_TOKENS : (i + 1) * PROMPT_TOKENS] for i in range(count)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(artifact: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "qeff_compiler.cli.main", "serve", str(artifact), "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qeffc serve exited with {server.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if json.loads(response.read())["status"] == "ok":
                    return server
        except OSError:
            time.sleep(0.25)
    server.kill()
    raise RuntimeError(f"qeffc serve did not come up: {log.read_text()}")


def _simulated_busy_s(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('qeff_engine_busy_seconds_total{clock="simulated_device"}'):
                return float(line.split()[-1])
    raise RuntimeError("/metrics has no qeff_engine_busy_seconds_total")
