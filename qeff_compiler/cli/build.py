"""`qeffc compile` and `calibrate`: write an artifact, or the calibration table a w8a8 compile reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    PruneScoreOption,
    app,
    model_source,
    print_plain,
    status,
)
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.options import DEFAULTS
from qeff_compiler.progress import make_progress


@app.command("compile")
def compile_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="artifact directory to write")],
    model: ModelArgument = SHIPPED_MODEL,
    ctx_len: CtxLenOption = DEFAULTS.ctx_len,
    prefill_len: PrefillLenOption = DEFAULTS.prefill_len,
    batch_size: BatchSizeOption = DEFAULTS.batch_size,
    precision: PrecisionOption = DEFAULTS.precision,
    kv_cache_dtype: KVCacheDtypeOption = DEFAULTS.kv_cache_dtype,
    device: DeviceOption = DEFAULTS.device,
    num_cores: NumCoresOption = DEFAULTS.num_cores,
    num_devices: NumDevicesOption = DEFAULTS.num_devices,
    p2p_format: P2PFormatOption = DEFAULTS.p2p_format,
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="w8a8 calibration table (default: calibrate on MODEL's calibration.txt)"),
    ] = None,
    passes: Annotated[str | None, typer.Option("--passes", help="replace the default pipeline")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
    time_passes: Annotated[bool, typer.Option("--time-passes", help="print time per pass")] = False,
    prune_ffn: PruneFfnOption = DEFAULTS.prune_ffn,
    prune_heads: PruneHeadsOption = DEFAULTS.prune_heads,
    prune_score: PruneScoreOption = DEFAULTS.prune_score,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="keep weights on disk, lowered one at a time (default: checkpoints over ~170 MiB of bf16 or "
            "512 MiB of fp32, or beyond the available memory)",
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="read pytorch_model*.bin (pickle: runs code from the file; trusted only)"),
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="progress bars with bytes and ETA (default: on a terminal)"),
    ] = None,
    qaic: Annotated[
        bool,
        typer.Option(
            "--qaic", help="also write OUTPUT/qaic: the ONNX, specializations and compile.sh for qaic-compile"
        ),
    ] = False,
    full_batch_size: Annotated[
        int | None, typer.Option("--full-batch-size", help="continuous batching: decode slots (batch size 1)")
    ] = None,
    ccl_prefill: Annotated[
        str | None,
        typer.Option("--comp-ctx-lengths-prefill", help="context buckets of prefill calls, e.g. 256,512,1024"),
    ] = None,
    ccl_decode: Annotated[
        str | None,
        typer.Option("--comp-ctx-lengths-decode", help="context buckets of decode steps, e.g. 256,512,1024"),
    ] = None,
    num_speculative_tokens: Annotated[
        int | None,
        typer.Option(
            "--num-speculative-tokens",
            help="K: a speculative-decoding target whose decode call verifies K+1 positions (qeffc run --draft)",
        ),
    ] = None,
) -> None:
    """Compile MODEL into a prefill and a decode program and write the artifact directory."""
    from qeff_compiler.artifact import check_output
    from qeff_compiler.backends.qaic.handoff import check_handoff
    from qeff_compiler.cli.qaic import write_handoff
    from qeff_compiler.compiler import compile as compile_model, expected_memory

    check_writable(output)  # before the compile's work, which a refusal would waste
    check_output(output, overwrite=force)
    source = model_source(model)
    if not isinstance(source, Path) and not qaic:  # before the compile, which would end with nothing to write
        raise InvalidArgumentError(
            f"{model!r} is a config-only preset (no weights): an artifact needs weights. Use 'qeffc estimate {model}' "
            "for simulated figures, or add --qaic to write the Cloud AI 100 hand-off files alone (the graph and "
            "compile command, with zero weights); compile a checkpoint directory for a runnable artifact"
        )
    bars = make_progress(progress)
    if isinstance(source, Path):  # before any weight is read; an in-memory compile that cannot fit is refused
        print_plain(expected_memory(source, stream=stream, allow_pickle=allow_pickle).describe())
    with status(f"compiling {model}", bars):
        compiled = compile_model(
            source,
            precision=precision,
            ctx_len=ctx_len,
            prefill_len=prefill_len,
            batch_size=batch_size,
            kv_cache_dtype=kv_cache_dtype,
            device=device,
            num_cores=num_cores,
            num_devices=num_devices,
            p2p_format=p2p_format,
            calibration=calibration,
            passes=passes,
            stream=stream,
            allow_pickle=allow_pickle,
            progress=bars,
            prune_ffn=prune_ffn,
            prune_heads=prune_heads,
            prune_score=prune_score,
            full_batch_size=full_batch_size,
            comp_ctx_lengths_prefill=_lengths("--comp-ctx-lengths-prefill", ccl_prefill),
            comp_ctx_lengths_decode=_lengths("--comp-ctx-lengths-decode", ccl_decode),
            num_speculative_tokens=num_speculative_tokens,
        )
    if time_passes:
        print_plain(compiled.timing_report())
    if qaic:
        check_handoff(compiled)  # before anything is written
    if compiled.prefill.has_weight_data or not qaic:  # a config-only compile hands off without an artifact
        with status(f"writing {output}", bars):
            compiled.save(output, overwrite=force, progress=bars)
        print_plain(f"compiled {model} → {output} (pipeline: {compiled.pipeline})")
    if qaic:
        print_plain(write_handoff(compiled, output))


@app.command("calibrate")
def calibrate_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="calibration table file to write (safetensors)")],
    model: ModelArgument = SHIPPED_MODEL,
    text: Annotated[Path | None, typer.Option("--text", help="text file (default: MODEL's calibration.txt)")] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="a progress bar of the text windows (default: on a terminal)"),
    ] = None,
) -> None:
    """Measure the activation maxima of every linear on a text: the table w8a8 compiles from (--calibration)."""
    from qeff_compiler.calibration import calibrate, save_calibration

    check_writable(output)
    source = model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(
            f"calibrate needs a model directory with weights and a tokenizer, got preset {model!r}"
        )
    table = calibrate(source, text, progress=make_progress(progress))
    save_calibration(table, output)
    print_plain(f"calibrated {len(table)} linears of {model} → {output}")


def _lengths(option: str, text: str | None) -> list[int] | None:
    """A comma-separated list of context lengths."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"{option} must be comma-separated integers, got {text!r}") from None
