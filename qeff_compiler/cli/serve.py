"""`qeffc run --requests FILE`: serve a workload through an artifact's slots and print the serving figures."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from transformers import AutoTokenizer

from qeff_compiler.backends.ai100.slot_trace import write_slot_trace
from qeff_compiler.cli.app import console
from qeff_compiler.compiler import load_compiled
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler
from qeff_compiler.runtime.workload import load_workload


def serve_workload(
    artifact: Path,
    requests: Path,
    engine: str,
    arrivals: str,
    trace: Path | None,
    draft: Path | str | None = None,
    threads: int | None = None,
) -> None:
    """Run every request of the workload file through a continuous batch; one row per request, then the stream's
    figures (simulated device, and this machine's engine on `threads` CPU threads, default from the load).
    `draft` (an artifact directory, or "prompt-lookup") proposes the tokens of a speculative target's verify
    steps."""
    compiled = load_compiled(artifact)
    proposer = compiled.slot_proposer(load_compiled(draft) if isinstance(draft, Path) else draft, engine)
    tokenize = None
    if (artifact / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(artifact)
        tokenize = tokenizer.encode
    stream = load_workload(requests, compiled.config.vocab_size, tokenize)
    scheduler = ContinuousBatchScheduler(compiled, engine=engine, arrivals=arrivals, proposer=proposer, threads=threads)
    results = scheduler.run(stream)
    table = Table(title=f"requests ({scheduler.num_slots} slots)")
    for column in ("id", "prompt", "new tokens", "finish", "simulated TTFT", "host TTFT"):
        table.add_column(column)
    for result in results:
        stats = result.stats
        table.add_row(
            result.request_id,
            str(stats.prompt_tokens),
            str(stats.generated_tokens),
            result.finish_reason,
            f"{stats.ttft_s * 1e3:.3f} ms",
            f"{stats.host_ttft_s * 1e3:.1f} ms",
        )
    console.print(table)
    summary = Table(
        title=f"serving: simulated device, and the {engine} engine on {scheduler.threads} thread"
        f"{'s' * (scheduler.threads > 1)} here",
        show_header=False,
    )
    for label, value in scheduler.stats().rows():
        summary.add_row(label, value)
    console.print(summary)
    if trace is not None:
        write_slot_trace(trace, scheduler.calls, scheduler.num_slots, compiled.simulation.device)
