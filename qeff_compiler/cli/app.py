"""The `qeffc` typer app and what its commands share: the console, option types, model lookup, printing.

Commands live in one module per group (graph, build, device, generate, accuracy); `cli.main` assembles them and
turns every failure into one line on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from qeff_compiler.capture.presets import SHIPPED_MODEL, named_model, preset_names
from qeff_compiler.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:  # the heavy modules (torch, transformers) are imported by the commands that use them
    from transformers import MptConfig

    from qeff_compiler.compiler import CompiledModel
    from qeff_compiler.ir.program import Program

app = typer.Typer(
    name="qeffc",
    help="Compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: tables are not cut to 80 columns when the output is a pipe or a file (rich's default width there)
console = Console(width=None if sys.stdout is not None and sys.stdout.isatty() else 160)  # None: fd 1 closed

ModelArgument = Annotated[
    str,
    typer.Argument(
        help=f"model directory (config.json + safetensors), {SHIPPED_MODEL} (shipped), "
        f"or a config-only preset ({', '.join(preset_names())})"
    ),
]
SeqLenOption = Annotated[int | None, typer.Option("--seq-len", help="example sequence length of the capture")]
DeviceOption = Annotated[str, typer.Option("--device", help="ai100-standard, ai100-pro or ai100-ultra")]
NumCoresOption = Annotated[int | None, typer.Option("--num-cores", help="AI cores per SoC (default: all)")]
NumDevicesOption = Annotated[int, typer.Option("--num-devices", help="SoCs, tensor parallel")]
P2PFormatOption = Annotated[str, typer.Option("--p2p-format", help="SoC-to-SoC traffic: fp16 or mxint8")]
PrecisionOption = Annotated[str, typer.Option("--precision", help="fp32, fp16, int8, w8a8 or mxfp6")]


def kv_cache_dtype(value: str | None) -> str | None:
    """`--kv-cache-dtype none` is the default (the activations' dtype) in every command that takes the option."""
    return None if value is None or value.lower() == "none" else value


KVCacheDtypeOption = Annotated[
    str | None,
    typer.Option(
        "--kv-cache-dtype", help="fp16, mxint8 or none (default none: the activations' dtype)", callback=kv_cache_dtype
    ),
]
CtxLenOption = Annotated[int, typer.Option("--ctx-len", help="KV cache length in tokens")]
PrefillLenOption = Annotated[int, typer.Option("--prefill-len", help="prompt chunk length of the prefill graph")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="sequences per call")]
PruneFfnOption = Annotated[float, typer.Option("--prune-ffn", help="share of each layer's FFN channels pruned, [0, 1)")]
PruneHeadsOption = Annotated[
    float, typer.Option("--prune-heads", help="share of each layer's attention heads pruned, [0, 1)")
]
PruneScoreOption = Annotated[
    str, typer.Option("--prune-score", help="pruning importance: magnitude, or activation (calibration text)")
]


def model_source(model: str) -> Path | MptConfig:
    """MODEL as the library resolves a name (`capture.presets.named_model`)."""
    return named_model(model)


def load_program(model: str, seq_len: int | None) -> Program:
    from qeff_compiler.capture import capture

    return capture(model_source(model), seq_len=seq_len)


def status(message: str, bars: Progress) -> contextlib.AbstractContextManager[object]:
    """A spinner, unless progress bars show instead (two live displays cannot share the terminal)."""
    return console.status(message) if bars is NO_PROGRESS else contextlib.nullcontext()


def print_memory(compiled: CompiledModel) -> None:
    """The memory plan per SoC as a table: what the SoC's DDR holds, and whether the weights and KV cache also fit
    the on-chip VTCM of the cores used (then the cores stream them from there)."""
    memory = compiled.simulation.memory
    options = compiled.options
    where = "VTCM (on-chip)" if memory.tier == "vtcm" else "DDR"
    table = Table(
        title=f"memory per SoC ({compiled.simulation.device}; ctx_len {options.ctx_len}, prefill_len "
        f"{options.prefill_len}, batch {options.batch_size}); weights, KV cache in {where}"
    )
    for column in ("SoC", "weights", "KV cache", "activations", "total", "DDR capacity", "VTCM of cores used"):
        table.add_column(column, justify="right")
    for soc in memory.socs:
        table.add_row(
            str(soc.device),
            size(soc.weight_bytes),
            size(soc.kv_cache_bytes),
            size(soc.activation_bytes),
            size(soc.total_bytes),
            size(soc.capacity_bytes),
            size(soc.vtcm_bytes),
        )
    console.print(table)


def size(nbytes: float) -> str:
    """Bytes in the largest decimal unit that keeps the number at least 1 ("3.67 MB", "1.07 GB"), 3 significant
    digits: a 7 MB model never prints as 0.007 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{_digits(nbytes / scale)} {unit}"
    return f"{nbytes:.0f} B"


def duration(seconds: float) -> str:
    """Seconds in the unit that keeps the number at least 1 (s, ms, µs), 3 significant digits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{_digits(seconds / scale)} {unit}"
    return f"{_digits(seconds * 1e6)} µs"


def _digits(value: float) -> str:
    """Three significant digits, trailing zeros kept (8.00, 64.5, 645, 1,234)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:#.3g}"


def print_plain_inline(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def print_plain(text: str) -> None:
    """IR contains brackets that rich would read as markup; print it verbatim."""
    sys.stdout.write(text + "\n")
