"""`qc.compile`: model → two verified, stateful specializations (prefill and decode) sharing one weight store."""

from __future__ import annotations

import contextlib
import dataclasses
import reprlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import MptConfig

from qeff_compiler.artifact import CALIBRATION_TABLE, ONNX_FILES, PLAN, WEIGHTS, load_artifact, save_artifact
from qeff_compiler.backends.ai100.memory import check_kv_cache_fits, check_weights_fit
from qeff_compiler.backends.ai100.partition import PartitionPlan
from qeff_compiler.backends.ai100.simulator import SimulatedDevice
from qeff_compiler.backends.ai100.slot_trace import write_slot_trace
from qeff_compiler.backends.ai100.trace import check_trace_detail
from qeff_compiler.backends.ai100.verify_cost import single_token_step_s
from qeff_compiler.calibration import calibration_file, load_calibration
from qeff_compiler.capture import ModelSource, ResolvedModel, capture_resolved, resolve_model
from qeff_compiler.errors import ArtifactIntegrityError, InvalidArgumentError, PipelineError, VerificationError
from qeff_compiler.host_memory import MemoryEstimate, check_fits, checkpoint_bytes, estimate_compile_memory
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.weights import WeightStore
from qeff_compiler.options import DEFAULTS, CompileOptions
from qeff_compiler.passes import PassManager
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.fp16_overflow import CheckFp16Range
from qeff_compiler.passes.pipeline import build_passes, pipeline_text
from qeff_compiler.pipelines import compile_pipeline, verify_pipeline
from qeff_compiler.precision import kv_cache_bits
from qeff_compiler.progress import Progress, make_progress
from qeff_compiler.runtime.batch_generate import generate_in_slots
from qeff_compiler.runtime.draft_check import PROMPT_LOOKUP, check_draft, check_slot_draft
from qeff_compiler.runtime.generate import (
    Executor,
    GenerationOutput,
    StaticShapes,
    Streamer,
    eos_token_ids,
    generate,
    normalize_prompts,
)
from qeff_compiler.runtime.proposers import DraftModel, NoProposals, PromptLookup, Proposer
from qeff_compiler.runtime.sampling import SamplingConfig, TokenSampler
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler
from qeff_compiler.runtime.slot_proposers import SlotDraft, SlotProposer, StatelessSlots
from qeff_compiler.runtime.slots import SlotCache
from qeff_compiler.runtime.speculative import SpeculativeShapes, generate_speculative
from qeff_compiler.runtime.stats import LatencyStats
from qeff_compiler.runtime.threads import resolve_threads, torch_threads
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
    precision: str = DEFAULTS.precision,
    ctx_len: int = DEFAULTS.ctx_len,
    prefill_len: int = DEFAULTS.prefill_len,
    batch_size: int = DEFAULTS.batch_size,
    full_batch_size: int | None = None,
    comp_ctx_lengths_prefill: Sequence[int] | None = None,
    comp_ctx_lengths_decode: Sequence[int] | None = None,
    kv_cache_dtype: str | None = DEFAULTS.kv_cache_dtype,
    device: str = DEFAULTS.device,
    num_cores: int | None = DEFAULTS.num_cores,
    num_devices: int = DEFAULTS.num_devices,
    p2p_format: str = DEFAULTS.p2p_format,
    calibration: str | Path | None = None,
    passes: str | Sequence[Pass] | None = None,
    verify: bool = True,
    prune_ffn: float = 0.0,
    prune_heads: float = 0.0,
    prune_score: str = "magnitude",
    stream: bool | None = None,
    allow_pickle: bool = False,
    progress: bool | Progress = False,
    num_speculative_tokens: int | None = None,
) -> CompiledModel:
    """Capture `model` at the prefill and decode shapes and run the pass pipeline on both.

    The defaults (`options.DEFAULTS`) are the facade's and every `qeffc` command's; precision fp16, as on the
    device, which has no fp32 path (fp32 stays available: exact HF numerics on the host).

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

    `full_batch_size=F` compiles for continuous batching (QEfficient's spelling): decode runs F slots, prefill
    one request (batch_size must be 1) into the slot its `batch_index` input names; `generate` then takes any
    number of prompts, and `runtime.scheduler.ContinuousBatchScheduler` serves request streams.
    `comp_ctx_lengths_prefill` / `comp_ctx_lengths_decode` are compute-context-length buckets (ascending, the
    last = ctx_len): each call's attention reads only the smallest bucket holding its positions.
    `num_speculative_tokens=K` makes a speculative-decoding target: its decode specialization scores K+1
    positions per row and returns the logits of all of them (`generate(..., draft=...)`, `runtime.speculative`).
    """
    options = CompileOptions(
        precision=precision,
        ctx_len=ctx_len,
        prefill_len=prefill_len,
        batch_size=batch_size,
        full_batch_size=full_batch_size,
        comp_ctx_lengths_prefill=_buckets(
            "comp_ctx_lengths_prefill", comp_ctx_lengths_prefill, comp_ctx_lengths_decode, ctx_len
        ),
        comp_ctx_lengths_decode=_buckets(
            "comp_ctx_lengths_decode", comp_ctx_lengths_decode, comp_ctx_lengths_prefill, ctx_len
        ),
        kv_cache_dtype=kv_cache_dtype,
        device=device,
        num_cores=num_cores,
        num_devices=num_devices,
        p2p_format=p2p_format,
        prune_ffn=prune_ffn,
        prune_heads=prune_heads,
        prune_score=prune_score,
        num_speculative_tokens=num_speculative_tokens,
    )
    options.check()
    if num_speculative_tokens is not None and passes is not None:
        raise InvalidArgumentError("num_speculative_tokens needs the default pipeline; drop passes= to use it")
    resolved = resolve_model(model, allow_pickle=allow_pickle)
    source_weights = resolved.weights  # lazy (checkpoint or the model's own tensors): the qaic hand-off reads them
    max_seq_len = resolved.config.max_seq_len
    if prefill_len > max_seq_len:
        raise InvalidArgumentError(f"prefill_len={prefill_len} exceeds the model's max_seq_len={max_seq_len}")
    if passes is None and ctx_len > max_seq_len:
        raise InvalidArgumentError(f"ctx_len={ctx_len} exceeds the model's max_seq_len={max_seq_len}")
    cache_bits, spec = kv_cache_bits(precision, kv_cache_dtype), options.target.spec()
    slots = full_batch_size or batch_size
    check_kv_cache_fits(resolved.config, slots, ctx_len, cache_bits, spec, num_devices)
    if passes is None and not (prune_ffn or prune_heads):  # pruned or custom pipelines: the memory plan checks
        check_weights_fit(resolved.config, precision, slots, ctx_len, cache_bits, spec, num_devices)
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
            table_file = stack.enter_context(calibration_file(resolved.directory, calibration, reporter))
            table = load_calibration(table_file)
        recorded = _recorded_pipeline(options, passes, table_file is not None)
        if streaming and verify:  # a calibration table names the full model's layers: only layer 0 matches it
            layers = (0,) if table_file is not None else tuple(sorted({0, source.config.n_layers - 1}))
            with reporter.stage("check reduced programs", None):
                checks = check_streamed(
                    source, lambda: _pipeline(options, passes, table_file), layers, batch_size, prefill_len
                )
        programs, reports = {}, {}
        decode_rows = full_batch_size or batch_size
        for name, seq_len, rows in (("prefill", prefill_len, batch_size), ("decode", options.decode_len, decode_rows)):
            pipeline = _pipeline(options, passes, table_file)
            if name == "decode" and num_speculative_tokens is not None:
                pipeline = verify_pipeline(pipeline, options)
            manager = PassManager(pipeline, verify=verify)
            with reporter.stage(f"compile {name}", weights.nbytes() if streaming else None) as meter.advance:
                captured = capture_resolved(resolved, batch_size=rows, seq_len=seq_len)
                if streaming and name == "decode":  # checking reads the whole checkpoint; prefill checked more tokens
                    captured = captured.evolve(properties=captured.properties | CheckFp16Range.ensures)
                program = manager.run(captured)
            if "kv-cache" not in program.properties:
                raise PipelineError(
                    f"pipeline {recorded!r} does not make the program stateful: add kv-cache{{ctx_len=N}}"
                )
            _check_serving_passes(options, program, recorded)
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


def _check_serving_passes(options: CompileOptions, program: Program, recorded: str) -> None:
    """A compile asked for slots or context buckets needs the passes that make them (a custom pipeline may lack
    them): the runtime would otherwise feed inputs the program does not have."""
    asked = {
        "continuous-batching": options.full_batch_size is not None,
        "compute-context-length": options.comp_ctx_lengths_decode is not None,
    }
    for name, wanted in asked.items():
        if wanted and name not in program.properties:
            raise PipelineError(f"pipeline {recorded!r} lacks the {name} pass its options ask for: add {name}")


def _buckets(
    name: str, buckets: Sequence[int] | None, other: Sequence[int] | None, ctx_len: int
) -> tuple[int, ...] | None:
    """A bucket list as a tuple (`CompileOptions.check` checks its values); when only the other phase has
    buckets, this phase reads the whole cache."""
    if buckets is None:
        return None if other is None else (ctx_len,)
    if not isinstance(buckets, (list, tuple)):
        raise InvalidArgumentError(f"{name} must be a list of context lengths, got {buckets!r}")
    return tuple(buckets)


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

    def __repr__(self) -> str:
        """What was compiled for what: the model, the options that shape it, the target and the pipeline."""
        o = self.options
        cache = f", kv_cache_dtype={o.kv_cache_dtype}" if o.kv_cache_dtype else ""
        return (
            f"CompiledModel({self.origin}: {o.precision}{cache}, ctx_len={o.ctx_len}, prefill_len={o.prefill_len}, "
            f"batch_size={o.batch_size} on {self.simulation.device}; pipeline {self.pipeline})"
        )

    @property
    def config(self) -> MptConfig:
        return self.prefill.config

    @property
    def shapes(self) -> StaticShapes:
        return StaticShapes.of(self.prefill)

    @property
    def clock(self) -> SimulatedDevice:
        """The simulated device timing every program call (the scheduler's `SlotClock`)."""
        return self.simulation

    @property
    def context_buckets(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """The compute-context-length buckets of prefill and decode calls (None: the whole ctx_len)."""
        return self.options.comp_ctx_lengths_prefill, self.options.comp_ctx_lengths_decode

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
        threads: int | None = None,
        trace_detail: str = "layer",
        draft: CompiledModel | str | None = None,
    ) -> GenerationOutput:
        """Greedy (default) or sampled generation for up to `batch_size` prompts of any lengths (any number of
        prompts when compiled with `full_batch_size`: they take turns in its slots).

        `input_ids` is a [batch, len] tensor or a list of token-id lists (ragged). Generation stops per row at
        `eos_token_id` (default: the config's) or after `max_new_tokens`. `trace` names a Chrome/Perfetto
        trace-event JSON file to write with the simulated device's timeline of the run (`trace_detail` "layer":
        every call, the first of each program by layer and op; "op": every op of every call, per core). `engine`
        runs the numerics: "host" (the reference executor) or "onnxruntime" (the artifact's ONNX files on ONNX
        Runtime: faster on a CPU, equal up to float rounding); the simulated figures are the same for both.
        `threads` is the CPU threads the engine (and torch) use: default chosen from the load so that they do not
        oversubscribe the machine (`runtime.threads`).
        `draft` turns on speculative decoding on a target compiled with `num_speculative_tokens=K`: a compiled
        draft MPT with the same vocabulary and batch size, or "prompt-lookup" (`runtime.speculative`); the
        stats are then `SpeculativeStats` (acceptance rate, accepted tokens per step, simulated speed-up). A target
        that also has slots (`full_batch_size`) or context buckets speculates per slot (`runtime.scheduler`; a
        draft needs as many slots, `slot_proposer`) and its stats are `SlotSpeculativeStats`.
        """
        if trace is not None:
            check_trace_detail(trace_detail)  # before the work
        shapes = self.shapes
        slots = self.options.full_batch_size
        prompts = normalize_prompts(input_ids, shapes, any_count=slots is not None)
        sampling = SamplingConfig(do_sample, temperature, top_k, top_p, seed)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        eos_ids = eos_token_ids(eos)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else min(eos_ids, default=0)
        self._check_speculative_target(draft)
        threads = resolve_threads(threads)
        if slots is not None or self.options.comp_ctx_lengths_decode is not None:  # slots, or buckets per call
            slot_proposer = self.slot_proposer(draft, engine)
            scheduler = ContinuousBatchScheduler(self, engine=engine, proposer=slot_proposer, threads=threads)
            output = generate_in_slots(scheduler, prompts, max_new_tokens, sampling, eos_ids, pad, streamer)
            if trace is not None:
                write_slot_trace(trace, scheduler.calls, scheduler.num_slots, self.simulation.device)
            return output
        with torch_threads(threads):
            if draft is not None or self.options.num_speculative_tokens is not None:
                sampler = TokenSampler(sampling)
                proposer = self._proposer(draft, sampler, engine, max(map(len, prompts)) + max_new_tokens)
                k = self.options.num_speculative_tokens or 0  # _proposer refused a draft for a model without K
                prefill, decode = self.generation_executors(engine, threads)
                output = generate_speculative(
                    prefill, decode, SpeculativeShapes(shapes, k), self.cache_specs, prompts, max_new_tokens, sampler,
                    proposer, eos_ids, pad, self.simulation, self.plain_decode_step_s, streamer,
                )
            else:
                prefill, decode = self.generation_executors(engine, threads)
                output = generate(
                    prefill,
                    decode,
                    shapes,
                    self.cache_specs,
                    prompts,
                    max_new_tokens,
                    sampling,
                    eos_ids,
                    pad,
                    self.simulation,
                    streamer,
                )
        if trace is not None:
            self.simulation.write_trace(trace, output.stats, trace_detail)
        return output

    @property
    def cache_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every KV-cache input, by name."""
        return {s.name: (s.shape, s.dtype) for s in self.prefill.inputs if s.role in ("past_key", "past_value")}

    @property
    def plain_decode_step_s(self) -> float:
        """Simulated seconds of a single-token decode step (for a speculative target: derived from its verify
        step, `backends.ai100.verify_cost`)."""
        if self.options.num_speculative_tokens is None:
            return self.simulation.decode_step_s
        simulation = self.simulation
        return single_token_step_s(self.decode, simulation.plans["decode"], simulation.spec, simulation.memory.tier)

    def _proposer(self, draft: CompiledModel | str | None, sampler: TokenSampler, engine: str, length: int) -> Proposer:
        """What proposes the tokens each verify step checks; refuses a draft that cannot serve this target."""
        if draft is None:
            return NoProposals()
        if isinstance(draft, str) and draft == PROMPT_LOOKUP:
            return PromptLookup()
        if not isinstance(draft, CompiledModel):
            raise InvalidArgumentError(
                f"draft must be a compiled model or {PROMPT_LOOKUP!r}, got {reprlib.repr(draft)}"
            )
        check_draft(self, draft, length)
        prefill, decode = draft.generation_executors(engine)
        return DraftModel(prefill, decode, draft.shapes, draft.cache_specs, draft.simulation, sampler)

    def _check_speculative_target(self, draft: object) -> None:
        """Refuse a draft for a model that verifies nothing."""
        if draft is not None and self.options.num_speculative_tokens is None:
            raise InvalidArgumentError(
                "generate(draft=...) needs a target compiled with num_speculative_tokens=K, e.g. "
                "qc.compile(model, num_speculative_tokens=4)"
            )

    def slot_proposer(self, draft: CompiledModel | str | None, engine: str = "host") -> SlotProposer | None:
        """What proposes the tokens of each slot's verify steps when this speculative target serves through
        `ContinuousBatchScheduler`: a compiled draft with one slot per target slot (its own cache of them), or
        "prompt-lookup"; None: no proposals. Refuses a draft that cannot serve this target's slots."""
        self._check_speculative_target(draft)
        if draft is None:
            return None
        if isinstance(draft, str) and draft == PROMPT_LOOKUP:
            return StatelessSlots(PromptLookup())
        if not isinstance(draft, CompiledModel):
            raise InvalidArgumentError(
                f"draft must be a compiled model or {PROMPT_LOOKUP!r}, got {reprlib.repr(draft)}"
            )
        check_slot_draft(self, draft)
        prefill, decode = draft.context_buckets
        cache = SlotCache(draft.prefill, draft.decode, draft.generation_executors(engine), prefill, decode)
        return SlotDraft(cache, draft.clock)

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

    def generation_executors(self, engine: str = "host", threads: int | None = None) -> tuple[Executor, Executor]:
        """The executors a generation loop uses: on the host, ones that write the KV cache in place (the loop owns
        its cache and feeds the outputs back, so no call copies the whole cache); else `executors(engine, threads)`."""
        if engine != "host":
            return self.executors(engine, threads)
        if "host-donating" not in self._executors:
            self._executors["host-donating"] = (
                HostExecutor(self.prefill, donate_caches=True),
                HostExecutor(self.decode, donate_caches=True),
            )
        return self._executors["host-donating"]

    def executors(self, engine: str = "host", threads: int | None = None) -> tuple[Executor, Executor]:
        """The (prefill, decode) executors of `engine` (one of ENGINES), created once per engine and, for
        onnxruntime, per thread count (its sessions fix theirs; the host engine uses torch's, set per run)."""
        check_engine(engine)
        key = engine if engine == "host" else f"{engine}:{threads}"
        if key not in self._executors:
            if engine == "host":
                self._executors[key] = (HostExecutor(self.prefill), HostExecutor(self.decode))
            else:
                from qeff_compiler.backends.onnxruntime_host import OnnxRuntimeExecutor
                from qeff_compiler.backends.qaic.engine import handoff_executors, runs_handoff_graph

                if runs_handoff_graph(self):  # fp32: the hand-off graph, one session, cache written by scatter
                    self._executors[key] = handoff_executors(self, threads)  # type: ignore[assignment]
                else:  # the emulation files: the lowered precision's exact numerics
                    sources = self._onnx_sources()
                    self._executors[key] = tuple(  # type: ignore[assignment]
                        OnnxRuntimeExecutor(program, sources[name][0], threads, initializers=sources[name][1])
                        for name, program in (("prefill", self.prefill), ("decode", self.decode))
                    )
        return self._executors[key]

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
