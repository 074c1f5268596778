"""`qeffc`: the compiler driver (typer + rich).

Exit codes: 0 success; 2 a wrong request (usage, unknown pass, bad option, unsupported model); 1 the work failed;
130 interrupted (Ctrl-C). Each is printed as one line on stderr, never as a traceback (docs/errors.md lists them).
"""

from __future__ import annotations

import functools
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import torch
import typer
from transformers import MptConfig
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import BadParameter, ClickException, NoArgsIsHelpError, UsageError  # typer vendors click; these are its errors

from qeff_compiler.artifact import check_output
from qeff_compiler.backends.qaic.handoff import check_handoff
from qeff_compiler.cli.qaic import handoff_listing, write_handoff
from qeff_compiler.atomic import check_writable
from qeff_compiler.calibration import calibrate, save_calibration
from qeff_compiler.capture import capture, resolve_model
from qeff_compiler.capture.presets import preset_config, preset_names
from qeff_compiler.compiler import CompiledModel, check_engine, load_compiled
from qeff_compiler.compiler import compile as compile_model
from qeff_compiler.data import TINY_MPT
from qeff_compiler.evaluate import MXINT8_CACHE_GATE, EvaluationReport, Evaluator, mxint8_cache_increase
from qeff_compiler.errors import ArtifactExistsError, InvalidArgumentError, ModelSourceError, QeffError
from qeff_compiler.ir.printer import format_program
from qeff_compiler.ir.program import Program
from qeff_compiler.passes import PassManager, registered_passes
from qeff_compiler.passes.base import NoOptions
from qeff_compiler.tune import DEFAULT_KV_CACHE_DTYPES, DEFAULT_PRECISIONS, DEFAULT_PRUNE_LEVELS, tune
from qeff_compiler.tune import DEFAULT_MAX_TOKENS as DEFAULT_TUNE_TOKENS
from qeff_compiler.progress import NO_PROGRESS, Progress, make_progress

app = typer.Typer(
    name="qeffc",
    help="Compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: tables are not cut to 80 columns when the output is a pipe or a file (rich's default width there)
console = Console(width=None if sys.stdout.isatty() else 160)

#: the model used when none is given: the small MPT shipped with the package
SHIPPED_MODEL = "tiny-mpt-pystdlib"
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
KVCacheDtypeOption = Annotated[
    str | None, typer.Option("--kv-cache-dtype", help="fp16 or mxint8 (default: the activations' dtype)")
]
PruneFfnOption = Annotated[float, typer.Option("--prune-ffn", help="share of each layer's FFN channels pruned, [0, 1)")]
PruneHeadsOption = Annotated[float, typer.Option("--prune-heads", help="share of each layer's attention heads pruned, [0, 1)")]
PruneScoreOption = Annotated[
    str, typer.Option("--prune-score", help="pruning importance: magnitude, or activation (calibration text)")
]


def _model_source(model: str) -> Path | MptConfig:
    if Path(model).exists():
        return Path(model)
    if model == SHIPPED_MODEL:
        return TINY_MPT
    if "/" in model or model.startswith("."):
        raise ModelSourceError(f"model directory {model!r} does not exist")
    return preset_config(model)


def _load(model: str, seq_len: int | None) -> Program:
    return capture(_model_source(model), seq_len=seq_len)


@app.command("capture")
def capture_command(model: ModelArgument = SHIPPED_MODEL, seq_len: SeqLenOption = None) -> None:
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
    passes: Annotated[str, typer.Option("--passes", help="pipeline, e.g. 'strip-export-noise,dce'")],
    model: ModelArgument = SHIPPED_MODEL,
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
    if manager.notes_report():
        _print_plain(manager.notes_report())
    console.print(
        f"ran {len(manager.records)} passes: {len(program.graph.nodes)} → {len(result.graph.nodes)} nodes, "
        f"{result.num_parameters():,} parameters",
        highlight=False,
    )


@app.command("compile")
def compile_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="artifact directory to write")],
    model: ModelArgument = SHIPPED_MODEL,
    ctx_len: Annotated[int, typer.Option("--ctx-len", help="KV cache length in tokens")] = 128,
    prefill_len: Annotated[int, typer.Option("--prefill-len", help="prompt chunk length of the prefill graph")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", help="sequences per call")] = 1,
    precision: PrecisionOption = "fp32",
    kv_cache_dtype: KVCacheDtypeOption = None,
    device: DeviceOption = "ai100-standard",
    num_cores: NumCoresOption = None,
    num_devices: NumDevicesOption = 1,
    p2p_format: P2PFormatOption = "fp16",
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="w8a8 calibration table (default: calibrate on MODEL's calibration.txt)")
    ] = None,
    passes: Annotated[str | None, typer.Option("--passes", help="replace the default pipeline")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
    time_passes: Annotated[bool, typer.Option("--time-passes", help="print time per pass")] = False,
    prune_ffn: PruneFfnOption = 0.0,
    prune_heads: PruneHeadsOption = 0.0,
    prune_score: PruneScoreOption = "magnitude",
    stream: Annotated[
        bool | None,
        typer.Option("--stream/--no-stream", help="keep weights on disk, lowered one at a time (default: above 4 GiB)"),
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="read pytorch_model*.bin (pickle: runs code from the file; trusted only)")
    ] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="progress bars with bytes and ETA (default: on a terminal)")
    ] = None,
    qaic: Annotated[
        bool, typer.Option("--qaic", help="also write OUTPUT/qaic: the ONNX, specializations and compile.sh for qaic-compile")
    ] = False,
) -> None:
    """Compile MODEL into a prefill and a decode program and write the artifact directory."""
    check_output(output, overwrite=force)  # before the compile's work, which the refusal would waste
    check_writable(output)
    source = _model_source(model)
    bars = make_progress(progress)
    with _status(f"compiling {model}", bars):
        compiled = compile_model(
            source, precision=precision, ctx_len=ctx_len, prefill_len=prefill_len, batch_size=batch_size,
            kv_cache_dtype=kv_cache_dtype, device=device, num_cores=num_cores, num_devices=num_devices,
            p2p_format=p2p_format, calibration=calibration, passes=passes, stream=stream,
            allow_pickle=allow_pickle, progress=bars,
            prune_ffn=prune_ffn, prune_heads=prune_heads, prune_score=prune_score,
        )
    if time_passes:
        _print_plain(compiled.timing_report())
    if qaic:
        check_handoff(compiled)  # before anything is written
    if compiled.prefill.has_weight_data or not qaic:  # a config-only compile hands off without an artifact
        with _status(f"writing {output}", bars):
            compiled.save(output, overwrite=force, progress=bars)
        _print_plain(f"compiled {model} → {output} (pipeline: {compiled.pipeline})")
    if qaic:
        _print_plain(write_handoff(compiled, output))


def _status(message: str, bars: Progress) -> contextlib.AbstractContextManager[object]:
    """A spinner, unless progress bars show instead (two live displays cannot share the terminal)."""
    return console.status(message) if bars is NO_PROGRESS else contextlib.nullcontext()


@app.command("estimate")
def estimate_command(
    model: ModelArgument = SHIPPED_MODEL,
    precision: PrecisionOption = "fp16",
    kv_cache_dtype: KVCacheDtypeOption = None,
    device: DeviceOption = "ai100-standard",
    num_cores: NumCoresOption = None,
    num_devices: NumDevicesOption = 1,
    p2p_format: P2PFormatOption = "fp16",
    ctx_len: Annotated[int, typer.Option("--ctx-len", help="KV cache length in tokens")] = 2048,
    prefill_len: Annotated[int, typer.Option("--prefill-len", help="prompt chunk length of the prefill graph")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", help="sequences per call")] = 1,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="prompt tokens")] = 1024,
    generation_len: Annotated[int, typer.Option("--generation-len", help="generated tokens")] = 1024,
    prune_ffn: PruneFfnOption = 0.0,
    prune_heads: PruneHeadsOption = 0.0,
) -> None:
    """What-if from MODEL's config alone (no weights read): the simulated device's memory plan and latency.
    With --prune-ffn / --prune-heads the program has the pruned shapes (which channels go needs weights)."""
    source = _model_source(model)
    config = resolve_model(source).config if isinstance(source, Path) else source
    if precision == "w8a8":
        raise InvalidArgumentError("estimate runs on the config alone; w8a8 needs calibration: compile, then estimate")
    with console.status(f"compiling {model} for {device} (config only)"):
        compiled = compile_model(
            config, precision=precision, kv_cache_dtype=kv_cache_dtype, ctx_len=min(ctx_len, config.max_seq_len),
            prefill_len=prefill_len, batch_size=batch_size, device=device, num_cores=num_cores,
            num_devices=num_devices, p2p_format=p2p_format, verify=False, prune_ffn=prune_ffn, prune_heads=prune_heads,
        )
    _print_memory(compiled)
    stats = compiled.estimate(prompt_len, generation_len)
    table = Table(title=f"estimate: {model} {precision}, prompt {prompt_len}, generate {generation_len}", show_header=False)
    for label, value in stats.rows():
        table.add_row(label, value)
    console.print(table)


def _print_memory(compiled: CompiledModel) -> None:
    """The memory plan per SoC as a table."""
    memory = compiled.simulation.memory
    table = Table(title=f"memory per SoC ({compiled.simulation.device}; weights in {memory.tier.upper()})")
    for column in ("SoC", "weights", "KV cache", "activations", "total", "capacity"):
        table.add_column(column, justify="right")
    for soc in memory.socs:
        table.add_row(
            str(soc.device), _gb(soc.weight_bytes), _gb(soc.kv_cache_bytes), _gb(soc.activation_bytes),
            _gb(soc.total_bytes), _gb(soc.capacity_bytes),
        )
    console.print(table)


def _gb(size: float) -> str:
    return f"{size / 1e9:.3f} GB"


@app.command("inspect")
def inspect_command(
    artifact: Annotated[Path, typer.Argument(help="compiled artifact directory")],
    prompt_len: Annotated[int | None, typer.Option("--prompt-len", help="for the estimate (default: prefill_len)")] = None,
    generation_len: Annotated[int | None, typer.Option("--generation-len", help="for the estimate (default: the rest of ctx_len)")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="draw per-core utilisation and the memory plan (PNG)")] = None,
) -> None:
    """Print a compiled artifact's target, partition plan per SoC and core, memory plan and estimated figures."""
    if plot is not None:
        check_writable(plot)
    compiled = load_compiled(artifact)
    simulation, options = compiled.simulation, compiled.options
    _print_plain(f"{artifact}: {options.precision}, ctx_len {options.ctx_len}, prefill_len {options.prefill_len}, "
                 f"batch {options.batch_size} on {simulation.device}; pipeline {compiled.pipeline}")
    plan = simulation.plans["decode"]
    table = Table(title="partition plan: weight bytes per core (decode)")
    table.add_column("SoC", justify="right")
    for core in range(plan.num_cores):
        table.add_column(f"core {core}", justify="right")
    table.add_column("shared", justify="right")
    for device in range(plan.num_devices):
        per_core = [plan.weight_bytes(device, core) for core in range(plan.num_cores)]
        shared = plan.weight_bytes(device) - sum(per_core)
        table.add_row(str(device), *(f"{b / 1e6:.2f} MB" for b in per_core), f"{shared / 1e6:.2f} MB")
    console.print(table)
    _print_memory(compiled)
    prompt = prompt_len or options.prefill_len
    stats = compiled.estimate(prompt, generation_len or options.ctx_len - prompt)
    estimate = Table(title=f"estimate: prompt {prompt}, generate {stats.generated_tokens[0]}", show_header=False)
    for label, value in stats.rows():
        estimate.add_row(label, value)
    console.print(estimate)
    for line in handoff_listing(artifact):
        _print_plain(line)
    if plot is not None:
        from qeff_compiler.backends.ai100.plot import plot_simulation

        plot_simulation(simulation, plot)
        _print_plain(f"wrote {plot}")


@app.command("calibrate")
def calibrate_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="calibration table file to write (safetensors)")],
    model: ModelArgument = SHIPPED_MODEL,
    text: Annotated[Path | None, typer.Option("--text", help="text file (default: MODEL's calibration.txt)")] = None,
) -> None:
    """Measure the activation maxima of every linear on a text: the table w8a8 compiles from (--calibration)."""
    check_writable(output)
    source = _model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(f"calibrate needs a model directory with weights and a tokenizer, got preset {model!r}")
    with console.status(f"calibrating {model}"):
        table = calibrate(source, text)
    save_calibration(table, output)
    _print_plain(f"calibrated {len(table)} linears of {model} → {output}")


@app.command("run")
def run_command(
    artifact: Annotated[Path, typer.Argument(help="compiled artifact directory")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="text to continue (tokenizer of the artifact)")] = None,
    token_ids: Annotated[str | None, typer.Option("--token-ids", help="comma-separated token ids instead of text")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate")] = 32,
    do_sample: Annotated[bool, typer.Option("--sample", help="sample instead of greedy")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="sampling temperature (> 0)")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="sample from the k most likely tokens (0: all)")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="sample from the smallest set of probability >= p")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the sampler (default: fresh entropy)")] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="write the simulated timeline (Perfetto JSON)")] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="what runs the numerics here: host (reference) or onnxruntime (faster)")
    ] = "host",
) -> None:
    """Generate from a compiled artifact, printing text as it streams and then the latency statistics."""
    if trace is not None:
        check_writable(trace)
    check_engine(engine)
    ids = _token_ids(prompt, token_ids)  # the options first: loading takes a while
    if ids is None and artifact.is_dir() and not (artifact / "tokenizer.json").is_file():
        raise InvalidArgumentError(f"{artifact} has no tokenizer (compile from a model directory with one, or use --token-ids)")
    compiled = load_compiled(artifact)
    tokenizer = _tokenizer(artifact) if ids is None else None
    ids = tokenizer.encode(prompt) if ids is None else ids
    stream = _TextStream(tokenizer)
    if tokenizer is not None:
        _print_plain_inline(tokenizer.decode(ids))
    out = compiled.generate(
        [ids], max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        streamer=stream, trace=trace, engine=engine,
    )
    sys.stdout.write("\n")
    table = Table(title=f"latency: simulated device, and the {engine} engine on this machine", show_header=False)
    for label, value in out.stats.rows():
        table.add_row(label, value)
    console.print(table)


@app.command("eval")
def eval_command(
    model: ModelArgument = SHIPPED_MODEL,
    precision: Annotated[list[str] | None, typer.Option("--precision", help="precision to score (repeatable)")] = None,
    kv_cache_dtype: Annotated[
        list[str] | None,
        typer.Option("--kv-cache-dtype", help="KV-cache dtype: none, fp16 or mxint8 (repeatable; default none)"),
    ] = None,
    text: Annotated[Path | None, typer.Option("--text", help="text file (default: the shipped validation text)")] = None,
    prune_ffn: Annotated[
        list[float] | None, typer.Option("--prune-ffn", help="share of each layer's FFN channels pruned (repeatable)")
    ] = None,
    prune_heads: PruneHeadsOption = 0.0,
    prune_score: PruneScoreOption = "magnitude",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="score only the first N tokens")] = None,
) -> None:
    """Score a text teacher-forced at each precision (and KV-cache dtype) against the fp32 HF model: perplexity,
    top-1 agreement, logit error and the accuracy gate; exits 1 when a gate is missed. With --prune-ffn /
    --prune-heads the rows show the accuracy cost of pruning (no fixed gate: see `qeffc tune`)."""
    source = _model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(f"eval needs a model directory with weights and a tokenizer, got preset {model!r}")
    # without a cache dtype first, so each MXINT8 row can be compared with its precision's row
    cache_dtypes = sorted({None if d.lower() == "none" else d for d in kv_cache_dtype or ["none"]}, key=lambda d: d or "")
    levels = sorted(set(prune_ffn or [0.0]))
    pruning = prune_heads > 0 or levels != [0.0]
    table = Table(title=f"accuracy vs fp32 HF reference ({model})")
    columns = ["precision", "KV cache", *(["pruned"] if pruning else []), "tokens", "ppl", "ref ppl", "Δppl"]
    for column in (*columns, "top-1 agree", "max|Δlogit|", "mean|Δlogit|", "gate"):
        table.add_column(column, justify="right")
    evaluator = Evaluator(source, text, max_tokens=max_tokens, keep_reference=False)
    reports: dict[tuple[str, str | None], EvaluationReport] = {}
    missed = []
    for name, cache, ffn in ((n, c, f) for n in precision or ["fp32"] for c in cache_dtypes for f in levels):
        with console.status(f"evaluating {name}" + (f" with a {cache} KV cache" if cache else "")):
            report = evaluator(name, cache, prune_ffn=ffn, prune_heads=prune_heads, prune_score=prune_score)
        if not report.pruning:
            reports[name, cache] = report
        failures = report.gate_failures()
        if cache == "mxint8" and not report.pruning and (name, None) in reports:
            extra = mxint8_cache_increase(report, reports[name, None])
            if extra > MXINT8_CACHE_GATE:
                failures.append(f"the MXINT8 cache adds +{100 * extra:.3f}% perplexity (gate +{100 * MXINT8_CACHE_GATE:g}%)")
        missed += [f"{name} ({cache or 'default'} KV cache): {failure}" for failure in failures]
        table.add_row(
            name,
            cache or "-",
            *([report.pruning or "-"] if pruning else []),
            f"{report.tokens_scored:,}",
            f"{report.perplexity:.4f}",
            f"{report.reference_perplexity:.4f}",
            f"{100 * report.perplexity_increase:+.3f}%",
            f"{100 * report.token_agreement:.2f}%",
            f"{report.max_logit_error:.2e}",
            f"{report.mean_logit_error:.2e}",
            "n/a" if report.pruning else "missed" if failures else "ok",
        )
    console.print(table)
    if missed:
        _print_plain("accuracy gate missed:\n" + "\n".join(f"  {line}" for line in missed))
        raise typer.Exit(1)


@app.command("tune")
def tune_command(
    model: ModelArgument = SHIPPED_MODEL,
    device: DeviceOption = "ai100-standard",
    max_ppl_increase: Annotated[
        str, typer.Option("--max-ppl-increase", help="perplexity budget over the fp32 HF model: 2% or 0.02")
    ] = "2%",
    write: Annotated[Path | None, typer.Option("--write", help="compile the chosen configuration into DIR")] = None,
    precision: Annotated[list[str] | None, typer.Option("--precision", help="precisions to try (repeatable)")] = None,
    kv_cache_dtype: Annotated[
        list[str] | None, typer.Option("--kv-cache-dtype", help="KV-cache dtypes to try: none, mxint8 (repeatable)")
    ] = None,
    prune_ffn: Annotated[list[float] | None, typer.Option("--prune-ffn", help="FFN pruning levels to try (repeatable)")] = None,
    num_cores: Annotated[list[int] | None, typer.Option("--num-cores", help="cores per SoC to try (repeatable)")] = None,
    num_devices: Annotated[list[int] | None, typer.Option("--num-devices", help="SoC counts to try (repeatable)")] = None,
    prefill_len: Annotated[list[int] | None, typer.Option("--prefill-len", help="prefill lengths to try (repeatable)")] = None,
    ctx_len: Annotated[int, typer.Option("--ctx-len", help="KV cache length in tokens")] = 128,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="prompt tokens of the tuned request")] = 64,
    generation_len: Annotated[int, typer.Option("--generation-len", help="generated tokens of the tuned request")] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="text tokens each setting is scored on")] = DEFAULT_TUNE_TOKENS,
    force: Annotated[bool, typer.Option("--force", help="replace the --write directory if it exists")] = False,
) -> None:
    """Search precision, KV-cache dtype, FFN pruning, cores, SoCs and prefill length with the cost model under a
    perplexity budget; print the Pareto front (simulated tok/s vs perplexity) and the chosen configuration."""
    source = _model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(f"tune needs a model directory with weights and a tokenizer, got preset {model!r}")
    if write is not None and write.exists() and not force:
        raise ArtifactExistsError(f"output directory {write} exists; pass --force to replace it")
    caches = [None if d.lower() == "none" else d for d in kv_cache_dtype] if kv_cache_dtype else DEFAULT_KV_CACHE_DTYPES
    with console.status(f"tuning {model} for {device}"):
        result = tune(
            source, device=device, max_ppl_increase=_share(max_ppl_increase), precisions=precision or DEFAULT_PRECISIONS,
            kv_cache_dtypes=caches, prune_levels=prune_ffn or DEFAULT_PRUNE_LEVELS, num_cores=num_cores,
            num_devices=num_devices or (1, 2), prefill_lens=prefill_len or (16, 32, 64), ctx_len=ctx_len,
            prompt_len=prompt_len, generation_len=generation_len, max_tokens=max_tokens,
        )
    table = Table(title=f"Pareto front: simulated tok/s vs perplexity ({device}, prompt {prompt_len}, generate {generation_len})")
    for column in ("configuration", "sim tok/s (E2E)", "sim decode tok/s", "sim TTFT", "ppl", "Δppl", "budget"):
        table.add_column(column, justify="right")
    for c in result.pareto_front:
        within = c.perplexity_increase <= result.max_ppl_increase
        table.add_row(
            c.describe() + (" ← chosen" if c == result.chosen else ""), f"{c.tokens_per_s:.1f}",
            f"{c.decode_tokens_per_s:.1f}", f"{c.ttft_s * 1e3:.3f} ms", f"{c.perplexity:.4f}",
            f"{100 * c.perplexity_increase:+.3f}%", "ok" if within else "over",
        )
    console.print(table)
    _print_plain(
        f"searched {len(result.candidates)} feasible configurations, {result.evaluations} accuracy evaluations on "
        f"{result.tokens_scored:,} tokens (fp32 HF perplexity {result.reference_perplexity:.4f}) in {result.seconds:.1f} s"
    )
    if result.chosen is None:
        _print_plain(f"no configuration is within +{100 * result.max_ppl_increase:g}% perplexity")
        raise typer.Exit(1)
    _print_plain(f"chosen: {result.chosen.describe()}")
    if write is not None:
        with console.status(f"compiling the chosen configuration into {write}"):
            result.compile(source).save(write, overwrite=force)
        _print_plain(f"compiled {model} → {write}")


def _share(text: str) -> float:
    """'2%' → 0.02; '0.02' → 0.02."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InvalidArgumentError(f"--max-ppl-increase must be a share like 2% or 0.02, got {text!r}") from None


def _tokenizer(artifact: Path):  # noqa: ANN202 (a transformers tokenizer)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifact)


def _token_ids(prompt: str | None, token_ids: str | None) -> list[int] | None:
    """The --token-ids as integers, None when --prompt (to be tokenized) is given; exactly one is required."""
    if (prompt is None) == (token_ids is None):
        raise InvalidArgumentError("give exactly one of --prompt TEXT or --token-ids IDS")
    if token_ids is None:
        return None
    try:
        return [int(t) for t in token_ids.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--token-ids must be comma-separated integers, got {token_ids!r}") from None


class _TextStream:
    """Prints each new token as it is generated: decoded text with a tokenizer, ids without."""

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, step: int, tokens: torch.Tensor) -> None:
        if int(tokens[0]) < 0:
            return
        self.tokens.append(int(tokens[0]))
        if self.tokenizer is None:
            _print_plain_inline(f"{'' if step == 0 else ','}{int(tokens[0])}")
            return
        text = self.tokenizer.decode(self.tokens)
        _print_plain_inline(text[len(self.printed) :])
        self.printed = text


def _print_plain_inline(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _print_plain(text: str) -> None:
    """IR contains brackets that rich would read as markup; print it verbatim."""
    sys.stdout.write(text + "\n")


def run(argv: Sequence[str] | None = None) -> int:
    """Run `qeffc` with `argv` (default: the process's arguments) and return its exit code. Every way it can end
    badly is one line on stderr: a `QeffError` (its `exit_code`), a usage error (2), Ctrl-C (130)."""
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        code = _click_command().main(args=args, prog_name="qeffc", standalone_mode=False)
    except QeffError as error:
        return _fail(str(error), error.exit_code)
    except NoArgsIsHelpError as error:  # the help has been printed
        return _fail(f"no command given (see '{error.ctx.command_path} --help')", error.exit_code)
    except UsageError as error:
        given = _given_value(args, error.param.opts) if isinstance(error, BadParameter) and error.param else None
        value = f" (got {given!r})" if given is not None else ""
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        return _fail(f"{error.format_message()}{value}{hint}", error.exit_code)
    except ClickException as error:
        return _fail(error.format_message(), error.exit_code)
    except typer.Abort:
        return _fail("aborted", 1)
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code after the command's cleanup has run
        return _fail("interrupted; no output was left half-written", INTERRUPTED)
    return code or 0


def _given_value(args: list[str], opts: Sequence[str]) -> str | None:
    """The value given on the command line for an option, its last occurrence as click reads it (typer's
    conversion errors do not repeat the value)."""
    for index, arg in reversed(list(enumerate(args))):
        for opt in opts:
            if arg == opt and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(f"{opt}="):
                return arg[len(opt) + 1 :]
    return None


@functools.cache
def _click_command() -> typer.core.TyperGroup:
    """The click command typer builds from `app` (built once: it takes ~13 ms, which in-process callers repeat)."""
    return typer.main.get_command(app)


#: exit code of a run interrupted by Ctrl-C (SIGINT), as shells report it (128 + signal 2)
INTERRUPTED = 130


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"qeffc: error: {' '.join(message.split())}\n")
    return code


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
