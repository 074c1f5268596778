"""The default pass pipelines, built as lists of configured pass objects.

`compile`, `evaluate` and `tune` build their pipelines here, so a precision means the same passes everywhere:

    fp32   no lowering
    fp16   lower-fp16                      weights, activations and KV cache fp16 (fp32 accumulation)
    int8   lower-fp16,lower-int8           W8A16: matmul weights int8 per output channel
    w8a8   lower-fp16,lower-w8a8{...}      int8 activations (calibrated per tensor, SmoothQuant) and weights in the
                                           linears; the fused attention's weights int8 with fp16 activations
    mxfp6  lower-fp16,lower-mxfp6          matmul weights MXFP6 E2M3, decompressed to fp16

Pruning runs before the lowering: `strip-export-noise,patch-attention,prune{...},<lowering>,kv-cache{...},dce`.
Options go to the passes as values, never through pipeline text, so a calibration table path may hold any
character; `pipeline_text` renders a pipeline for printing and for the artifact manifest.
"""

from __future__ import annotations

from pathlib import Path

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.options import CompileOptions
from qeff_compiler.passes import Pass
from qeff_compiler.passes.pipeline import configure, pipeline_text
from qeff_compiler.precision import check_precision, check_pruning

__all__ = [
    "compile_pipeline",
    "evaluation_pipeline",
    "kv_cache_pass",
    "lowering_passes",
    "pipeline_text",
    "prune_passes",
    "serving_passes",
    "verify_pipeline",
]

#: the lowering passes after lower-fp16, per precision (w8a8 needs its calibration table: see `lowering_passes`)
_QUANTIZATION = {"int8": "lower-int8", "mxfp6": "lower-mxfp6"}


def lowering_passes(precision: str, calibration: Path | None = None, *, check_overflow: bool = True) -> list[Pass]:
    """The lowering passes of `precision`; w8a8 needs a calibration table file (`calibration.calibration_file`).
    `check_overflow=False` skips lower-fp16's overflow check (see `compile_pipeline`)."""
    check_precision(precision)
    if precision == "fp32":
        return []
    fp16 = configure("lower-fp16", check_overflow=check_overflow)
    if precision == "w8a8":
        if calibration is None:
            raise InvalidArgumentError(
                "precision w8a8 needs a calibration table (qc.calibrate) for its activation scales"
            )
        return [fp16, configure("lower-w8a8", calibration=str(calibration))]
    return [fp16, *([configure(_QUANTIZATION[precision])] if precision in _QUANTIZATION else [])]


def prune_passes(
    ffn: float = 0.0, heads: float = 0.0, score: str = "magnitude", calibration: Path | None = None
) -> list[Pass]:
    """The `prune` pass for these shares (none when nothing is removed). It goes after `patch-attention` and
    before the lowering passes (pruning runs on the fp graph); `calibration` is the table score=activation reads."""
    check_pruning(ffn, heads, score)
    if not (ffn or heads):
        return []
    table = None
    if score == "activation" and ffn:
        if calibration is None:
            raise InvalidArgumentError("prune_score='activation' needs a calibration table (qc.calibrate)")
        table = str(calibration)
    return [configure("prune", ffn=float(ffn), heads=float(heads), score=score, calibration=table)]


def kv_cache_pass(ctx_len: int, kv_cache_dtype: str | None, *, all_logits: bool = False) -> Pass:
    """The `kv-cache` pass (`all_logits`: logits for every position, to score a text)."""
    return configure(
        "kv-cache", ctx_len=ctx_len, dtype=kv_cache_dtype or "auto", logits="all" if all_logits else "last"
    )


def compile_pipeline(
    options: CompileOptions, calibration: Path | None = None, *, check_overflow: bool = True
) -> list[Pass]:
    """The default pipeline of a compile: capture clean-up, attention, pruning, precision, cache. `calibration` is
    the table file of a w8a8 compile or of activation-scored pruning. `check_overflow=False` skips lower-fp16's
    overflow check: a streamed decode specialization reads the same weights the prefill one already checked."""
    pruning = prune_passes(options.prune_ffn, options.prune_heads, options.prune_score, calibration)
    lowering = lowering_passes(options.precision, calibration, check_overflow=check_overflow)
    cache = kv_cache_pass(options.ctx_len, options.kv_cache_dtype)
    front = [configure("strip-export-noise"), configure("patch-attention")]
    return [*front, *pruning, *lowering, cache, *serving_passes(options), configure("dce")]


def serving_passes(options: CompileOptions) -> list[Pass]:
    """Continuous batching (`full_batch_size`) and compute-context-length buckets, after the cache exists."""
    passes = []
    if options.full_batch_size is not None:
        passes.append(configure("continuous-batching", full_batch_size=options.full_batch_size))
    if options.comp_ctx_lengths_prefill is not None or options.comp_ctx_lengths_decode is not None:
        passes.append(configure("compute-context-length"))
    return passes


def verify_pipeline(pipeline: list[Pass], options: CompileOptions) -> list[Pass]:
    """A speculative-decoding target's decode pipeline: `pipeline` with a kv-cache pass that keeps the logits of
    all K+1 positions (the decode specialization then has exactly K+1 of them, QEfficient's num_logits_to_keep)."""
    cache = kv_cache_pass(options.ctx_len, options.kv_cache_dtype, all_logits=True)
    return [cache if p.name == "kv-cache" else p for p in pipeline]


def evaluation_pipeline(
    precision: str,
    kv_cache_dtype: str | None,
    window: int,
    calibration: Path | None = None,
    pruning: list[Pass] | None = None,
) -> list[Pass]:
    """The pipeline that scores every position of a window: stateless, or through a cache of `kv_cache_dtype`;
    `pruning` is the `prune` pass (if any), which runs before the lowering."""
    cache = [] if kv_cache_dtype is None else [kv_cache_pass(window, kv_cache_dtype, all_logits=True)]
    lowering = lowering_passes(precision, calibration)
    return [
        configure("strip-export-noise"),
        configure("patch-attention"),
        *(pruning or []),
        *lowering,
        *cache,
        configure("dce"),
    ]
