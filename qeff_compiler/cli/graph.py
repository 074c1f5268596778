"""`qeffc capture`, `passes`, `opt`: look at a captured graph and run pass pipelines on it."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.table import Table

from qeff_compiler.cli.app import (
    SHIPPED_MODEL,
    ModelArgument,
    SeqLenOption,
    app,
    console,
    load_program,
    print_plain,
    size,
)


@app.command("capture")
def capture_command(model: ModelArgument = SHIPPED_MODEL, seq_len: SeqLenOption = None) -> None:
    """Capture MODEL to an FX graph and print a summary: shape, parameters, operator histogram."""
    program = load_program(model, seq_len)
    config = program.config
    summary = Table(title=f"captured {model}", show_header=False)
    for label, value in (
        ("layers", config.n_layers),
        ("d_model / heads", f"{config.d_model} / {config.n_heads}"),
        ("vocab / max_seq_len", f"{config.vocab_size} / {config.max_seq_len}"),
        ("parameters", f"{program.num_parameters():,}"),
        ("weights", "real" if program.has_weight_data else "meta (config only)"),
        ("inputs", ", ".join(s.describe() for s in program.inputs)),
        ("outputs", ", ".join(s.describe() for s in program.outputs)),
        ("graph nodes", len(program.graph.nodes)),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    histogram = Table(title="operators")
    histogram.add_column("op")
    histogram.add_column("count", justify="right")
    for op, count in program.op_histogram().most_common():
        histogram.add_row(op, str(count))
    console.print(histogram)


@app.command("passes")
def passes_command() -> None:
    """List the registered passes with their options."""
    from qeff_compiler.passes import registered_passes
    from qeff_compiler.passes.base import NoOptions

    table = Table(title="registered passes")
    for column in ("pass", "summary", "options", "requires", "ensures"):
        table.add_column(column)
    for name, cls in registered_passes().items():
        options = "" if cls.Options is NoOptions else "\n".join(_describe_options(cls.Options))
        table.add_row(name, cls.summary, options, ", ".join(sorted(cls.requires)), ", ".join(sorted(cls.ensures)))
    console.print(table)


def _describe_options(options_class: type) -> list[str]:
    return [f"{f.name}={f.default}: {f.metadata.get('help', '')}" for f in dataclasses.fields(options_class)]


@app.command("opt")
def opt_command(
    passes: Annotated[str, typer.Option("--passes", help="pipeline, e.g. 'strip-export-noise,dce'")],
    model: ModelArgument = SHIPPED_MODEL,
    print_ir_after: Annotated[
        list[str] | None, typer.Option("--print-ir-after", help="print the IR after this pass (repeatable)")
    ] = None,
    print_ir_after_all: Annotated[
        bool, typer.Option("--print-ir-after-all", help="print the IR after every pass")
    ] = False,
    print_ir_before: Annotated[bool, typer.Option("--print-ir-before", help="print the captured IR first")] = False,
    time_passes: Annotated[bool, typer.Option("--time-passes", help="print time per pass")] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="lint, shape and numeric checks per pass")
    ] = True,
    seq_len: SeqLenOption = None,
) -> None:
    """Run a pass pipeline on MODEL, verifying each pass."""
    from qeff_compiler.ir.printer import format_program
    from qeff_compiler.passes import PassManager

    manager = PassManager(
        passes,
        verify=verify,
        print_ir_after=print_ir_after or (),
        print_ir_after_all=print_ir_after_all,
        printer=print_plain,
    )
    program = load_program(model, seq_len)
    if print_ir_before:
        print_plain(f"// ----- IR after capture -----\n{format_program(program)}")
    result = manager.run(program)
    if time_passes:
        print_plain(manager.timing_report())
    if manager.notes_report():
        print_plain(manager.notes_report())
    stored = result.weights.nbytes(result.weight_placeholders().values())
    console.print(
        f"ran {len(manager.records)} passes: {len(program.graph.nodes)} → {len(result.graph.nodes)} nodes; "
        f"{program.num_parameters():,} parameters captured, stored as {size(stored)} "
        f"({result.num_parameters():,} stored elements: codes, scales and smoothing factors count as stored)",
        highlight=False,
    )
