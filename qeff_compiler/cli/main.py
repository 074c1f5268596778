"""`qeffc`: the compiler driver (typer + rich).

Exit codes: 0 success; 2 a wrong request (usage, unknown pass, bad option, unsupported model); 1 the work failed.
A `QeffError` is printed as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qeff_compiler.capture import capture
from qeff_compiler.capture.presets import preset_config, preset_names
from qeff_compiler.errors import QeffError
from qeff_compiler.ir.printer import format_program
from qeff_compiler.ir.program import Program
from qeff_compiler.passes import PassManager, registered_passes
from qeff_compiler.passes.base import NoOptions

app = typer.Typer(
    name="qeffc",
    help="Compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

ModelArgument = Annotated[
    str,
    typer.Argument(help=f"model directory (config.json + safetensors) or preset ({', '.join(preset_names())})"),
]
SeqLenOption = Annotated[int | None, typer.Option("--seq-len", help="example sequence length of the capture")]


def _load(model: str, seq_len: int | None) -> Program:
    source = Path(model) if Path(model).exists() else preset_config(model)
    return capture(source, seq_len=seq_len)


@app.command("capture")
def capture_command(model: ModelArgument, seq_len: SeqLenOption = None) -> None:
    """Capture MODEL to an FX graph and print a summary: shape, parameters, operator histogram."""
    program = _load(model, seq_len)
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
    table = Table(title="registered passes")
    for column in ("pass", "summary", "options", "requires", "ensures"):
        table.add_column(column)
    for name, cls in registered_passes().items():
        options = "" if cls.Options is NoOptions else "\n".join(_describe_options(cls.Options))
        table.add_row(name, cls.summary, options, ", ".join(sorted(cls.requires)), ", ".join(sorted(cls.ensures)))
    console.print(table)


def _describe_options(options_class: type) -> list[str]:
    import dataclasses

    return [f"{f.name}={f.default}: {f.metadata.get('help', '')}" for f in dataclasses.fields(options_class)]


@app.command("opt")
def opt_command(
    model: ModelArgument,
    passes: Annotated[str, typer.Option("--passes", help="pipeline, e.g. 'strip-export-noise,dce'")],
    print_ir_after: Annotated[
        list[str] | None, typer.Option("--print-ir-after", help="print the IR after this pass (repeatable)")
    ] = None,
    print_ir_after_all: Annotated[bool, typer.Option("--print-ir-after-all", help="print the IR after every pass")] = False,
    print_ir_before: Annotated[bool, typer.Option("--print-ir-before", help="print the captured IR first")] = False,
    time_passes: Annotated[bool, typer.Option("--time-passes", help="print time per pass")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="lint, shape and numeric checks per pass")] = True,
    seq_len: SeqLenOption = None,
) -> None:
    """Run a pass pipeline on MODEL, verifying each pass."""
    manager = PassManager(
        passes,
        verify=verify,
        print_ir_after=print_ir_after or (),
        print_ir_after_all=print_ir_after_all,
        printer=_print_plain,
    )
    program = _load(model, seq_len)
    if print_ir_before:
        _print_plain(f"// ----- IR after capture -----\n{format_program(program)}")
    result = manager.run(program)
    if time_passes:
        _print_plain(manager.timing_report())
    console.print(
        f"ran {len(manager.records)} passes: {len(program.graph.nodes)} → {len(result.graph.nodes)} nodes, "
        f"{result.num_parameters():,} parameters",
        highlight=False,
    )


def _print_plain(text: str) -> None:
    """IR contains brackets that rich would read as markup; print it verbatim."""
    sys.stdout.write(text + "\n")


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and their exit code."""
    try:
        app()
    except QeffError as error:
        sys.stderr.write(f"qeffc: error: {error}\n")
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
