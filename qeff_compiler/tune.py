"""`qc.tune` / `qeffc tune`: search compile settings with the cost model under an accuracy budget.

The search space is the product of the accuracy-relevant settings (precision, KV-cache dtype, FFN pruning level)
and the placement settings (cores per SoC, SoCs, prefill chunk length). Placement does not change the numerics, so
each accuracy setting is scored once (`evaluate.Evaluator`, HF's reference logits computed once for all), on the
first `max_tokens` tokens of the text; each (accuracy setting, prefill length) is compiled once from the config
alone (meta weights: pruning keeps the right shapes) and every placement is a `SimulatedDevice` over those
programs. A placement the partitioner or the memory plan refuses is left out.

Objective: simulated end-to-end tokens/s per sequence of one request of `prompt_len` prompt tokens and
`generation_len` new tokens (TTFT + decode, so the prefill length matters). The Pareto front is over
(tokens/s higher, perplexity lower); the chosen configuration is the fastest whose perplexity is within
`max_ppl_increase` of HF's fp32 model on the same tokens (ties: fewer SoCs, then fewer cores).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qeff_compiler.backends.ai100.simulator import SimulatedDevice, Target
from qeff_compiler.capture import ResolvedModel, capture_resolved, resolve_model
from qeff_compiler.capture.sources import meta_weights
from qeff_compiler.compiler import CompiledModel, compile as compile_model
from qeff_compiler.errors import InvalidArgumentError, ModelDoesNotFitError, PartitionError
from qeff_compiler.evaluate import EvaluationReport, Evaluator
from qeff_compiler.ir.program import Program
from qeff_compiler.options import DEFAULTS, CompileOptions
from qeff_compiler.passes import PassManager
from qeff_compiler.pipelines import compile_pipeline
from qeff_compiler.precision import check_precision, check_pruning

#: tokens of the text each accuracy setting is scored on by default (8 windows of the shipped model)
DEFAULT_MAX_TOKENS = 2048
DEFAULT_PRECISIONS = ("fp16", "int8", "mxfp6")
DEFAULT_KV_CACHE_DTYPES: tuple[str | None, ...] = (None, "mxint8")
DEFAULT_PRUNE_LEVELS = (0.0, 0.125, 0.25)


@dataclass(frozen=True)
class Setting:
    """What decides the numerics of a compile."""

    precision: str
    kv_cache_dtype: str | None
    prune_ffn: float

    def describe(self) -> str:
        cache = f", {self.kv_cache_dtype} KV" if self.kv_cache_dtype else ""
        prune = f", FFN -{100 * self.prune_ffn:g}%" if self.prune_ffn else ""
        return f"{self.precision}{cache}{prune}"


@dataclass(frozen=True)
class Candidate:
    """One configuration: its setting, its placement, its simulated speed and its measured accuracy."""

    setting: Setting
    num_cores: int
    num_devices: int
    prefill_len: int
    #: simulated end-to-end tokens/s per sequence of the tuned request (TTFT + decode)
    tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float
    perplexity: float
    perplexity_increase: float

    def describe(self) -> str:
        socs = f"{self.num_devices} SoC" + ("s" if self.num_devices > 1 else "")
        return f"{self.setting.describe()}; {self.num_cores} cores x {socs}, prefill {self.prefill_len}"


@dataclass(frozen=True)
class TuneResult:
    """Every feasible candidate, the Pareto front, the choice, and what the search cost."""

    device: str
    ctx_len: int
    max_ppl_increase: float
    reference_perplexity: float
    tokens_scored: int
    candidates: tuple[Candidate, ...]
    pareto_front: tuple[Candidate, ...]
    #: the fastest candidate within the budget; None when none is
    chosen: Candidate | None
    evaluations: int
    seconds: float

    def compile(self, model: str | Path, **overrides: Any) -> CompiledModel:
        """Compile the chosen configuration from `model` (real weights)."""
        if self.chosen is None:
            raise InvalidArgumentError(
                f"no configuration meets the +{100 * self.max_ppl_increase:g}% perplexity budget: nothing to compile"
            )
        return compile_model(model, **{**_compile_options(self.chosen, self.device, self.ctx_len), **overrides})


def tune(
    model_dir: str | Path,
    *,
    device: str = DEFAULTS.device,
    max_ppl_increase: float = 0.02,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    kv_cache_dtypes: Sequence[str | None] = DEFAULT_KV_CACHE_DTYPES,
    prune_levels: Sequence[float] = DEFAULT_PRUNE_LEVELS,
    num_cores: Sequence[int] | None = None,
    num_devices: Sequence[int] = (1, 2),
    prefill_lens: Sequence[int] = (16, 32, 64),
    ctx_len: int = DEFAULTS.ctx_len,
    prompt_len: int = 64,
    generation_len: int = 64,
    text: str | Path | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    on_setting: Callable[[int, int, Setting], None] | None = None,
) -> TuneResult:
    """Search the product of the given settings; see the module docstring. `num_cores` None tries a quarter,
    half and all of the device's cores per SoC. `on_setting(n, total, setting)` is called as the n-th (1-based) of
    `total` accuracy settings starts, the slow part of the search (a progress display)."""
    start = time.perf_counter()
    if isinstance(max_ppl_increase, bool) or not isinstance(max_ppl_increase, int | float) or max_ppl_increase < 0:
        raise InvalidArgumentError(
            f"max_ppl_increase must be a non-negative share (0.02 = 2 %), got {max_ppl_increase!r}"
        )
    settings = [Setting(p, k, f) for p, k, f in itertools.product(precisions, kv_cache_dtypes, prune_levels)]
    if not settings:
        raise InvalidArgumentError(
            "the search space is empty: give at least one precision, KV-cache dtype and pruning level"
        )
    for setting in settings:
        check_precision(setting.precision, setting.kv_cache_dtype)
        check_pruning(setting.prune_ffn, 0.0, "magnitude")
        if setting.precision == "w8a8":
            raise InvalidArgumentError("tune searches fp32, fp16, int8 and mxfp6: w8a8 needs a calibration per model")
    if prompt_len + generation_len > ctx_len:
        raise InvalidArgumentError(
            f"prompt_len ({prompt_len}) + generation_len ({generation_len}) exceeds ctx_len={ctx_len}"
        )
    cores_per_soc = Target(device).cores()
    cores = (
        list(num_cores)
        if num_cores is not None
        else sorted({max(1, cores_per_soc // 4), cores_per_soc // 2, cores_per_soc})
    )
    resolved = resolve_model(model_dir)
    meta = ResolvedModel(resolved.config, meta_weights(resolved.config), "tune")
    captures = {n: capture_resolved(meta, batch_size=1, seq_len=n) for n in {1, *prefill_lens}}  # shared by settings
    evaluator = Evaluator(model_dir, text, max_tokens=max_tokens)
    candidates: list[Candidate] = []
    reports: dict[Setting, EvaluationReport] = {}
    for number, setting in enumerate(settings, 1):
        if on_setting is not None:
            on_setting(number, len(settings), setting)
        report = reports[setting] = evaluator(setting.precision, setting.kv_cache_dtype, prune_ffn=setting.prune_ffn)
        decode = _program(captures[1], setting, ctx_len)
        for prefill_len in prefill_lens:
            prefill = _program(captures[prefill_len], setting, ctx_len)
            for core_count, soc_count in itertools.product(cores, num_devices):
                try:
                    simulation = SimulatedDevice(prefill, decode, Target(device, core_count, soc_count))
                except (ModelDoesNotFitError, PartitionError):
                    continue
                stats = simulation.estimate(prompt_len, generation_len)
                candidates.append(
                    Candidate(
                        setting,
                        core_count,
                        soc_count,
                        prefill_len,
                        tokens_per_s=generation_len / (stats.ttft_s + stats.decode_s),
                        decode_tokens_per_s=stats.decode_tokens_per_s,
                        ttft_s=stats.ttft_s,
                        perplexity=report.perplexity,
                        perplexity_increase=report.perplexity_increase,
                    )
                )
    within = [c for c in candidates if c.perplexity_increase <= max_ppl_increase]
    chosen = min(within, key=lambda c: (-c.tokens_per_s, c.num_devices, c.num_cores, c.perplexity), default=None)
    first = next(iter(reports.values()))
    return TuneResult(
        device=device,
        ctx_len=ctx_len,
        max_ppl_increase=max_ppl_increase,
        reference_perplexity=first.reference_perplexity,
        tokens_scored=first.tokens_scored,
        candidates=tuple(candidates),
        pareto_front=pareto_front(candidates),
        chosen=chosen,
        evaluations=len(reports),
        seconds=time.perf_counter() - start,
    )


def pareto_front(candidates: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """The candidates no other beats on both tokens/s (higher) and perplexity (lower), fastest first; of equal
    pairs the one on fewer SoCs and cores stands for them."""
    ordered = sorted(candidates, key=lambda c: (-c.tokens_per_s, c.perplexity, c.num_devices, c.num_cores))
    front: list[Candidate] = []
    for candidate in ordered:
        if not front or candidate.perplexity < front[-1].perplexity:
            front.append(candidate)
    return tuple(front)


def _program(captured: Program, setting: Setting, ctx_len: int) -> Program:
    """The program of `setting` from a config-only capture (shapes are all the cost model reads)."""
    options = CompileOptions(
        precision=setting.precision, ctx_len=ctx_len, kv_cache_dtype=setting.kv_cache_dtype, prune_ffn=setting.prune_ffn
    )
    return PassManager(compile_pipeline(options), verify=False).run(captured)


def _compile_options(candidate: Candidate, device: str, ctx_len: int) -> dict[str, Any]:
    setting = candidate.setting
    return {
        "precision": setting.precision,
        "kv_cache_dtype": setting.kv_cache_dtype,
        "prune_ffn": setting.prune_ffn,
        "device": device,
        "num_cores": candidate.num_cores,
        "num_devices": candidate.num_devices,
        "prefill_len": candidate.prefill_len,
        "ctx_len": ctx_len,
    }
