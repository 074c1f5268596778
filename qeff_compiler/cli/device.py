"""`qeffc estimate` and `inspect`: the simulated device's memory plan, partition plan and latency figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from qeff_compiler.atomic import check_writable
from qeff_compiler.cli.app import (
    SHIPPED_MODEL,
    BatchSizeOption,
    CtxLenOption,
    DeviceOption,
    KVCacheDtypeOption,
    ModelArgument,
    NumCoresOption,
    NumDevicesOption,
    P2PFormatOption,
    PrecisionOption,
    PrefillLenOption,
    PruneFfnOption,
    PruneHeadsOption,
    app,
    console,
    model_source,
    print_memory,
    print_plain,
    size,
)
from qeff_compiler.cli.costs import print_cost_breakdown
from qeff_compiler.options import DEFAULTS

if TYPE_CHECKING:
    from qeff_compiler.backends.ai100.plan import PartitionPlan
    from qeff_compiler.compiler import CompiledModel


@app.command("estimate")
def estimate_command(
    model: ModelArgument = SHIPPED_MODEL,
    precision: PrecisionOption = DEFAULTS.precision,
    kv_cache_dtype: KVCacheDtypeOption = DEFAULTS.kv_cache_dtype,
    device: DeviceOption = DEFAULTS.device,
    num_cores: NumCoresOption = DEFAULTS.num_cores,
    num_devices: NumDevicesOption = DEFAULTS.num_devices,
    p2p_format: P2PFormatOption = DEFAULTS.p2p_format,
    ctx_len: CtxLenOption = DEFAULTS.ctx_len,
    prefill_len: PrefillLenOption = DEFAULTS.prefill_len,
    batch_size: BatchSizeOption = DEFAULTS.batch_size,
    prompt_len: Annotated[int | None, typer.Option("--prompt-len", help="prompt tokens (default: prefill_len)")] = None,
    generation_len: Annotated[
        int | None, typer.Option("--generation-len", help="generated tokens (default: the rest of ctx_len)")
    ] = None,
    prune_ffn: PruneFfnOption = DEFAULTS.prune_ffn,
    prune_heads: PruneHeadsOption = DEFAULTS.prune_heads,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw where a decode step's time goes, per op role and layer (PNG)")
    ] = None,
) -> None:
    """What-if from MODEL's config alone (no weights read): the simulated device's memory plan and latency.
    With --prune-ffn / --prune-heads the program has the pruned shapes (which channels go needs weights)."""
    from qeff_compiler.backends.ai100.simulator import check_request_lengths
    from qeff_compiler.capture import resolve_model
    from qeff_compiler.compiler import compile as compile_model
    from qeff_compiler.options import check_config_only

    if plot is not None:
        check_writable(plot)
    source = model_source(model)
    config = resolve_model(source).config if isinstance(source, Path) else source
    check_config_only(precision)
    prompt = prefill_len if prompt_len is None else prompt_len
    generation = ctx_len - prompt if generation_len is None else generation_len
    check_request_lengths(prompt, generation, ctx_len)  # before the compile, whose work a refusal would waste
    with console.status(f"compiling {model} for {device} (config only)"):
        compiled = compile_model(
            config,
            precision=precision,
            kv_cache_dtype=kv_cache_dtype,
            ctx_len=ctx_len,
            prefill_len=prefill_len,
            batch_size=batch_size,
            device=device,
            num_cores=num_cores,
            num_devices=num_devices,
            p2p_format=p2p_format,
            verify=False,
            prune_ffn=prune_ffn,
            prune_heads=prune_heads,
        )
    print_memory(compiled)
    stats = compiled.estimate(prompt, generation)
    table = Table(
        title=f"estimate: {model} {precision}, {shape_label(compiled, prompt, generation)}", show_header=False
    )
    for label, value in stats.rows():
        table.add_row(label, value)
    console.print(table)
    for figure, provenance in compiled.simulation.provenance.items():
        console.print(f"simulated {figure}: {provenance}", soft_wrap=True)
    print_cost_breakdown(compiled.simulation)
    if plot is not None:
        from qeff_compiler.backends.ai100.plot import plot_costs

        plot_costs(compiled.simulation, plot, f"{model} {precision}")
        print_plain(f"wrote {plot}")


def shape_label(compiled: CompiledModel, prompt_len: int | None = None, generation_len: int | None = None) -> str:
    """What a figure depends on, for every table header: ctx_len, prefill_len, batch, and the request."""
    options = compiled.options
    text = f"ctx_len {options.ctx_len}, prefill_len {options.prefill_len}, batch {options.batch_size}"
    return text if prompt_len is None else f"{text}, prompt {prompt_len}, generate {generation_len}"


@app.command("inspect")
def inspect_command(
    artifact: Annotated[Path, typer.Argument(help="compiled artifact directory")],
    prompt_len: Annotated[
        int | None, typer.Option("--prompt-len", help="for the estimate (default: prefill_len)")
    ] = None,
    generation_len: Annotated[
        int | None, typer.Option("--generation-len", help="for the estimate (default: the rest of ctx_len)")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw per-core utilisation and the memory plan (PNG)")
    ] = None,
) -> None:
    """Print a compiled artifact's target, partition plan per SoC and core, memory plan and estimated figures."""
    from qeff_compiler.backends.ai100.plot import plot_simulation
    from qeff_compiler.cli.qaic import handoff_listing
    from qeff_compiler.compiler import load_compiled

    if plot is not None:
        check_writable(plot)
    compiled = load_compiled(artifact)
    simulation, options = compiled.simulation, compiled.options
    print_plain(
        f"{artifact}: {options.precision}, ctx_len {options.ctx_len}, prefill_len {options.prefill_len}, "
        f"batch {options.batch_size} on {simulation.device}; pipeline {compiled.pipeline}"
    )
    console.print(_per_core_table(simulation.plans["decode"]))
    print_memory(compiled)
    prompt = prompt_len or options.prefill_len
    stats = compiled.estimate(prompt, generation_len or options.ctx_len - prompt)
    estimate = Table(
        title=f"estimate: {shape_label(compiled, prompt, stats.generated_tokens[0])}", show_header=False
    )
    for label, value in stats.rows():
        estimate.add_row(label, value)
    console.print(estimate)
    print_cost_breakdown(simulation)
    for line in handoff_listing(artifact):
        print_plain(line)
    if plot is not None:
        plot_simulation(simulation, plot)
        print_plain(f"wrote {plot}")


#: at most this many SoCs get a column each in the per-core table (more: one row per SoC, min / max per core)
_SOC_COLUMNS = 4


def _per_core_table(plan: PartitionPlan) -> Table:
    """Weight bytes per core of the decode plan: a row per core and a column per SoC (fits 100 columns up to
    `_SOC_COLUMNS` SoCs), or for more SoCs a row per SoC with its least and most loaded core."""
    title = "partition plan: weights per core (decode)"
    if plan.num_devices > _SOC_COLUMNS:
        table = Table(title=title)
        for column in ("SoC", "cores", "least per core", "most per core", "shared", "total"):
            table.add_column(column, justify="right")
        for device in range(plan.num_devices):
            per_core = [plan.weight_bytes(device, core) for core in range(plan.num_cores)]
            total = plan.weight_bytes(device)
            table.add_row(
                str(device),
                str(plan.num_cores),
                size(min(per_core)),
                size(max(per_core)),
                size(total - sum(per_core)),
                size(total),
            )
        return table
    table = Table(title=title, min_width=len(title))
    table.add_column("core", justify="right")
    for device in range(plan.num_devices):
        table.add_column(f"SoC {device}", justify="right")
    for core in range(plan.num_cores):
        table.add_row(str(core), *(size(plan.weight_bytes(device, core)) for device in range(plan.num_devices)))
    cores = range(plan.num_cores)
    shared = [plan.weight_bytes(d) - sum(plan.weight_bytes(d, c) for c in cores) for d in range(plan.num_devices)]
    table.add_row("shared", *(size(b) for b in shared))
    return table
