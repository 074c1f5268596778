"""`qc.compile`: model → two verified, stateful specializations (prefill and decode) sharing one weight store."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import MptConfig

from qeff_compiler.artifact import CALIBRATION_TABLE, ONNX_FILES, PLAN, WEIGHTS, load_artifact, save_artifact
from qeff_compiler.backends.ai100.memory import check_kv_cache_fits
from qeff_compiler.backends.ai100.partition import PartitionPlan
from qeff_compiler.backends.ai100.simulator import SimulatedDevice
from qeff_compiler.calibration import calibration_file, load_calibration
from qeff_compiler.capture import ModelSource, ResolvedModel, capture_resolved, resolve_model
from qeff_compiler.errors import ArtifactIntegrityError, InvalidArgumentError, PipelineError, VerificationError
from qeff_compiler.host_memory import MemoryEstimate, check_fits, checkpoint_bytes, estimate_compile_memory
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.weights import WeightStore
from qeff_compiler.options import CompileOptions
from qeff_compiler.passes import PassManager
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.fp16_overflow import CheckFp16Range
from qeff_compiler.passes.pipeline import build_passes, pipeline_text
from qeff_compiler.pipelines import compile_pipeline
from qeff_compiler.precision import kv_cache_bits
from qeff_compiler.progress import Progress, make_progress
from qeff_compiler.runtime.generate import (
    Executor,
    GenerationOutput,
    StaticShapes,
    Streamer,
    eos_token_ids,
    generate,
    normalize_prompts,
)
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.stats import LatencyStats
from qeff_compiler.streamed_check import check_streamed

__all__ = [
    "ENGINES",
    "CompileOptions",
    "CompiledModel",
    "check_engine",
    "compile",
    "expected_memory",
    "load_compiled",
]

#: what can run a compiled model's numerics on this machine: the reference executor, or ONNX Runtime over the ONNX emit
ENGINES = ("host", "onnxruntime")


def compile(  # noqa: A001 (the public API's name)
    model: ModelSource,
    *,
    precision: str = "fp32",
    ctx_len: int = 128,
    prefill_len: int = 32,
    batch_size: int = 1,
    kv_cache_dtype: str | None = None,
    device: str = "ai100-standard",
    num_cores: int | None = None,
    num_devices: int = 1,
    p2p_format: str = "fp16",
    calibration: str | Path | None = None,
    passes: str | Sequence[Pass] | None = None,
    verify: bool = True,
    prune_ffn: float = 0.0,
    prune_heads: float = 0.0,
    prune_score: str = "magnitude",
    stream: bool | None = None,
    allow_pickle: bool = False,
    progress: bool | Progress = False,
) -> CompiledModel:
    """Capture `model` at the prefill and decode shapes and run the pass pipeline on both.

    `passes` replaces the default pipeline (`pipelines.compile_pipeline`): pipeline text or configured passes
    (`passes.pipeline.configure`); it must produce a stateful program.
    `calibration` is the w8a8 calibration table file (`qc.calibrate`); by default a w8a8 compile calibrates on
    the model directory's calibration.txt. The artifact keeps the table, and its recorded pipeline names it.
    The programs are then partitioned over `num_cores` cores (default: all) of `num_devices` SoCs of `device`,
    placed in its memory (a model that does not fit is refused with the numbers) and timed by the cost model;
    `p2p_format="mxint8"` compresses the partial results SoCs exchange.
    `prune_ffn` / `prune_heads` remove that share of every layer's FFN channels / attention heads before the
    lowering (the `prune` pass; `prune_score="activation"` ranks FFN channels with the calibration table).
    A config (meta weights) compiles too: everything but running and saving works, `estimate` included.

    `stream` keeps the weights on disk: lowering records recipes (cast, clip, quantize, pack) that run one
    weight at a time when the artifact is saved, and host runs read each weight as an op needs it, so a 7B
    checkpoint compiles in a few GB. The full programs are not run after each pass (each run would read the
    checkpoint); the pipeline is checked instead on reduced programs with the real weights of the first and
    last layer (`streamed_check`), and lower-fp16's overflow check runs, streaming, on the prefill
    specialization. None (default) streams a checkpoint directory unless it is small enough to compile in
    memory within its streamed bound (`host_memory`); a model object streams only when asked. Compiling a
    checkpoint in memory that the available memory cannot hold is refused (`HostMemoryError`). `allow_pickle` accepts
    `pytorch_model*.bin` checkpoints (pickles can run code: only for trusted files). `progress` shows rich
    progress bars (True, or a `Progress`) for the stages that read weights.
    """
    options = CompileOptions(
        precision=precision,
        ctx_len=ctx_len,
        prefill_len=prefill_len,
        batch_size=batch_size,
        kv_cache_dtype=kv_cache_dtype,
        device=device,
        num_cores=num_cores,
        num_devices=num_devices,
        p2p_format=p2p_format,
        prune_ffn=prune_ffn,
        prune_heads=prune_heads,
        prune_score=prune_score,
    )
    options.check()
    resolved = resolve_model(model, allow_pickle=allow_pickle)
    source_weights = resolved.weights  # lazy (checkpoint or the model's own tensors): the qaic hand-off reads them
    max_seq_len = resolved.config.max_seq_len
    if prefill_len > max_seq_len:
        raise InvalidArgumentError(f"prefill_len={prefill_len} exceeds the model's max_seq_len={max_seq_len}")
    if passes is None and ctx_len > max_seq_len:
        raise InvalidArgumentError(f"ctx_len={ctx_len} exceeds the model's max_seq_len={max_seq_len}")
    check_kv_cache_fits(
        resolved.config,
        batch_size,
        ctx_len,
        kv_cache_bits(precision, kv_cache_dtype),
        options.target.spec(),
        num_devices,
    )
    reporter = progress if not isinstance(progress, bool) else make_progress(progress)
    memory = _memory_estimate(resolved, stream)
    check_fits(memory, resolved.directory is not None)
    streaming = memory.streaming
    meter = ReadMeter()
    source = resolved
    if streaming:
        weights = resolved.weights.streamed(meter.advance)
    else:  # one fp32 copy; prefill and decode share the lowered weights
        weights = resolved.weights.materialized().sharing_derivations()
    resolved = dataclasses.replace(resolved, weights=weights)
    table = None
    checks = []
    with contextlib.ExitStack() as stack:
        table_file = None
        if options.needs_calibration and passes is None:
            table_file = stack.enter_context(calibration_file(resolved.directory, calibration))
            table = load_calibration(table_file)
        recorded = _recorded_pipeline(options, passes, table_file is not None)
        if streaming and verify:  # a calibration table names the full model's layers: only layer 0 matches it
            layers = (0,) if table_file is not None else tuple(sorted({0, source.config.n_layers - 1}))
            with reporter.stage("check reduced programs", None):
                checks = check_streamed(
                    source, lambda: _pipeline(options, passes, table_file), layers, batch_size, prefill_len
                )
        programs, reports = {}, {}
        for name, seq_len in (("prefill", prefill_len), ("decode", 1)):
            manager = PassManager(_pipeline(options, passes, table_file), verify=verify)
            with reporter.stage(f"compile {name}", weights.nbytes() if streaming else None) as meter.advance:
                captured = capture_resolved(resolved, batch_size=batch_size, seq_len=seq_len)
                if streaming and name == "decode":  # checking reads the whole checkpoint; prefill checked more tokens
                    captured = captured.evolve(properties=captured.properties | CheckFp16Range.ensures)
                program = manager.run(captured)
            if "kv-cache" not in program.properties:
                raise PipelineError(
                    f"pipeline {recorded!r} does not make the program stateful: add kv-cache{{ctx_len=N}}"
                )
            programs[name], reports[name] = program, manager.timing_report()
        for check in checks:
            reports["prefill"] += f"\n{check.describe()}\n{check.report}"
        meter.advance = ReadMeter().advance  # saving reports its own progress
    compiled = CompiledModel(
        options, recorded, programs["prefill"], programs["decode"], resolved.origin, resolved.directory
    )
    compiled.pass_reports = reports
    compiled.memory_estimate = memory
    compiled.calibration_table = table
    compiled.source_weights = source_weights
    return compiled


def expected_memory(model: ModelSource, *, stream: bool | None = None, allow_pickle: bool = False) -> MemoryEstimate:
    """What `compile(model, stream=stream)` expects to need at its peak, read from the checkpoint's headers and
    config before any weight (`qeffc compile` prints it first); `host_memory` says how it is estimated."""
    return _memory_estimate(resolve_model(model, allow_pickle=allow_pickle), stream)


def _memory_estimate(resolved: ResolvedModel, stream: bool | None) -> MemoryEstimate:
    stored = checkpoint_bytes(resolved.directory) if resolved.directory is not None else None
    return estimate_compile_memory(resolved.weights, stream, stored)


def _pipeline(options: CompileOptions, passes: str | Sequence[Pass] | None, table: Path | None) -> list[Pass]:
    """The passes one specialization runs: the default pipeline for `options`, or the ones the caller gave."""
    if passes is None:
        return compile_pipeline(options, table)
    return build_passes(passes) if isinstance(passes, str) else list(passes)


def _recorded_pipeline(options: CompileOptions, passes: str | Sequence[Pass] | None, calibrated: bool) -> str:
    """The pipeline text the artifact records: a calibration table is named as the artifact stores it."""
    if passes is not None:
        return passes if isinstance(passes, str) else pipeline_text(passes)
    return pipeline_text(compile_pipeline(options, Path(CALIBRATION_TABLE) if calibrated else None))


class ReadMeter:
    """Routes the bytes a streaming store reads to the progress stage that is current."""

    def __init__(self) -> None:
        self.advance: Callable[[int], None] = lambda _bytes: None


class CompiledModel:
    """A compiled MPT: prefill and decode programs, runnable on the host, savable as an artifact."""

    def __init__(
        self,
        options: CompileOptions,
        pipeline: str,
        prefill: Program,
        decode: Program,
        origin: str,
        source_directory: Path | None = None,
        plans: Mapping[str, PartitionPlan] | None = None,
    ) -> None:
        """`plans` are a loaded artifact's partition plans; a fresh compile (None) partitions the programs."""
        self.options = options
        self.pipeline = pipeline
        self.prefill = prefill
        self.decode = decode
        self.origin = origin
        #: HF directory the model came from; its tokenizer files are copied into saved artifacts
        self.source_directory = source_directory
        #: `--time-passes` tables of the compile, per specialization (empty for a loaded artifact)
        self.pass_reports: dict[str, str] = {}
        #: the compile's expected peak memory and whether it streamed (None for a loaded artifact)
        self.memory_estimate: MemoryEstimate | None = None
        #: the calibration table the compile used (w8a8, activation-scored pruning), saved as CALIBRATION_TABLE
        self.calibration_table: dict[str, torch.Tensor] | None = None
        #: the full-precision weights the model was compiled from (None for a loaded artifact); see `export_qaic`
        self.source_weights: WeightStore | None = None
        #: set by `load_compiled`: the artifact directory whose ONNX files the onnxruntime engine runs
        self.artifact_directory: Path | None = None
        #: set by `load_compiled`: the manifest's size and SHA-256 per file, which the onnxruntime engine re-checks
        self.artifact_files: Mapping[str, Mapping[str, Any]] | None = None
        self._executors: dict[str, tuple[Executor, Executor]] = {}
        self._onnx_directory: tempfile.TemporaryDirectory | None = None
        #: the programs partitioned, placed and timed on the target device (raises if they do not fit)
        self.simulation = SimulatedDevice(prefill, decode, options.target, plans)

    @property
    def config(self) -> MptConfig:
        return self.prefill.config

    @property
    def shapes(self) -> StaticShapes:
        return StaticShapes.of(self.prefill)

    def generate(
        self,
        input_ids: torch.Tensor | Sequence[Sequence[int]],
        max_new_tokens: int = 32,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Streamer | None = None,
        trace: str | Path | None = None,
        engine: str = "host",
    ) -> GenerationOutput:
        """Greedy (default) or sampled generation for up to `batch_size` prompts of any lengths.

        `input_ids` is a [batch, len] tensor or a list of token-id lists (ragged). Generation stops per row at
        `eos_token_id` (default: the config's) or after `max_new_tokens`. `trace` names a Chrome/Perfetto
        trace-event JSON file to write with the simulated device's timeline of the run. `engine` runs the numerics:
        "host" (the reference executor) or "onnxruntime" (the artifact's ONNX files on ONNX Runtime: faster on a
        CPU, equal up to float rounding); the simulated figures are the same for both.
        """
        shapes = self.shapes
        prompts = normalize_prompts(input_ids, shapes)
        sampling = SamplingConfig(do_sample, temperature, top_k, top_p, seed)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        eos_ids = eos_token_ids(eos)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else min(eos_ids, default=0)
        prefill, decode = self.executors(engine)
        cache_specs = {s.name: (s.shape, s.dtype) for s in self.prefill.inputs if s.role in ("past_key", "past_value")}
        output = generate(
            prefill,
            decode,
            shapes,
            cache_specs,
            prompts,
            max_new_tokens,
            sampling,
            eos_ids,
            pad,
            self.simulation,
            streamer,
        )
        if trace is not None:
            self.simulation.write_trace(trace, output.stats)
        return output

    def estimate(self, prompt_len: int, generation_len: int, batch_size: int | None = None) -> LatencyStats:
        """Simulated TTFT, prefill and decode figures from the cost model alone (no numerics; works on a
        config-only compile). The batch is the compiled one: static shapes run every row slot anyway."""
        if batch_size is not None and batch_size != self.options.batch_size:
            raise InvalidArgumentError(
                f"this model was compiled for batch_size={self.options.batch_size}; "
                f"recompile to estimate batch_size={batch_size}"
            )
        return self.simulation.estimate(prompt_len, generation_len)

    def timing_report(self) -> str:
        """Per-pass timings of the compile that produced this model, per specialization."""
        return "\n".join(f"// {name} specialization\n{report}" for name, report in self.pass_reports.items())

    def save(self, path: str | Path, *, overwrite: bool = False, progress: bool | Progress = False) -> None:
        """Write the compiled-model directory (manifest, weights, ONNX per specialization) atomically;
        `progress` shows rich progress bars (True, or a `Progress`): at 7B, writing takes minutes."""
        reporter = progress if not isinstance(progress, bool) else make_progress(progress)
        save_artifact(self, Path(path), overwrite=overwrite, progress=reporter)

    @property
    def has_default_pipeline(self) -> bool:
        """Whether the recorded pipeline is the default one of the options: the only kind the device compiler's
        flags (precision, KV-cache dtype) can express in a hand-off."""
        return self.pipeline == _recorded_pipeline(self.options, None, self.options.needs_calibration)

    def export_qaic(
        self, path: str | Path, *, named_specializations: bool = True, weight_dtype: str = "fp32"
    ) -> list[Path]:
        """Write the Cloud AI 100 hand-off into directory `path`: one ONNX for prefill and decode, its weights,
        specializations.json, custom_io.yaml (mdp_ts_<N>.json) and compile.sh; returns the files written."""
        from qeff_compiler.backends.qaic.handoff import QaicOptions, export_qaic

        return export_qaic(self, path, QaicOptions(named_specializations, weight_dtype))

    def host_executors(self) -> tuple[Executor, Executor]:
        """The (prefill, decode) reference executors, created once; they share the weight tensors."""
        return self.executors("host")

    def executors(self, engine: str = "host") -> tuple[Executor, Executor]:
        """The (prefill, decode) executors of `engine` (one of ENGINES), created once per engine."""
        check_engine(engine)
        if engine not in self._executors:
            if engine == "host":
                self._executors[engine] = (HostExecutor(self.prefill), HostExecutor(self.decode))
            else:
                from qeff_compiler.backends.onnxruntime_host import OnnxRuntimeExecutor
                from qeff_compiler.backends.qaic.engine import handoff_executors, runs_handoff_graph

                if runs_handoff_graph(self):  # fp32: the hand-off graph, one session, cache written by scatter
                    self._executors[engine] = handoff_executors(self)  # type: ignore[assignment]
                else:  # the emulation files: the lowered precision's exact numerics
                    sources = self._onnx_sources()
                    self._executors[engine] = tuple(  # type: ignore[assignment]
                        OnnxRuntimeExecutor(program, sources[name][0], initializers=sources[name][1])
                        for name, program in (("prefill", self.prefill), ("decode", self.decode))
                    )
        return self._executors[engine]

    def _onnx_sources(self) -> Mapping[str, tuple[Path | bytes, Mapping | None]]:
        """Per specialization, what its ONNX Runtime session is built from: the artifact's files as read and
        checked against the manifest `load_compiled` verified, or the files of a private temporary directory
        (exported once, removed with this object) for a model compiled in this process."""
        if self.artifact_directory is not None:
            from qeff_compiler.backends.verified_onnx import verified_sources

            return verified_sources(self.artifact_directory, self.artifact_files or {}, ONNX_FILES, WEIGHTS)
        if self._onnx_directory is None:
            from qeff_compiler.backends.onnx_export import export_onnx

            self._onnx_directory = tempfile.TemporaryDirectory(prefix="qeff-onnx-")
            for name, program in (("prefill", self.prefill), ("decode", self.decode)):
                export_onnx(program, Path(self._onnx_directory.name) / ONNX_FILES[name])
        return {name: (Path(self._onnx_directory.name) / file, None) for name, file in ONNX_FILES.items()}


def check_engine(engine: str) -> None:
    """Refuse an engine name that is not one of ENGINES."""
    if engine not in ENGINES:
        raise InvalidArgumentError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")


def load_compiled(path: str | Path, *, stream: bool | None = None) -> CompiledModel:
    """Load a compiled-model directory; refuses tampered, truncated or wrong-version artifacts. `stream` keeps
    the weights in the file, read as ops need them (None: when they exceed `STREAM_ABOVE_BYTES`). Nothing is
    compiled again: the saved programs and partition plans are read."""
    contents = load_artifact(Path(path), stream=stream)
    try:
        compiled = CompiledModel(
            contents.options,
            contents.pipeline,
            contents.prefill,
            contents.decode,
            str(contents.directory),
            contents.tokenizer_directory,
            contents.plans,
        )
    except VerificationError as exc:
        raise ArtifactIntegrityError(f"{contents.directory / PLAN} does not fit the saved programs: {exc}") from exc
    compiled.artifact_directory = contents.directory
    compiled.artifact_files = contents.files
    return compiled
