"""`qc.evaluate`: the accuracy a precision costs, measured against the fp32 Hugging Face model.

The text is tokenized with the model directory's tokenizer and cut into non-overlapping windows of max_seq_len
tokens (the incomplete last window is dropped; the first token of each window is not scored), the windowing the
shipped model's card uses. Both the compiled program (captured at one window, attention patched, lowered to the
precision) and HF's fp32 model score every window teacher-forced, so the figures compare the same predictions:

- perplexity and reference_perplexity: exp of the mean negative log-likelihood of the scored tokens;
- token_agreement: share of positions where the program's top-1 token equals the reference's;
- max_logit_error / mean_logit_error: absolute logit differences over all scored positions and the vocabulary.

With a KV-cache dtype the program also gets a `kv-cache{ctx_len=window,dtype=...,logits=all}`: each window runs
through an empty cache, so every query attends to keys and values as the cache stores them (e.g. MXINT8), as in
decode, and the logits of every position are scored.

w8a8 calibrates on the model directory's `calibration.txt` (never the evaluated text) first.

`ACCURACY_GATES` holds the largest perplexity increase each precision may cost on the shipped model (and the least
top-1 agreement for fp16); `EvaluationReport.gate_failures` says which a report misses, and `qeffc eval` exits
non-zero when one is missed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from qeff_compiler.calibration import calibration_file
from qeff_compiler.capture import capture_resolved, resolve_model
from qeff_compiler.errors import InvalidArgumentError, ModelSourceError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import Program
from qeff_compiler.options import DEFAULTS
from qeff_compiler.passes import PassManager
from qeff_compiler.pipelines import evaluation_pipeline, prune_passes
from qeff_compiler.precision import check_precision, check_pruning, pruning_options

#: precision → (largest perplexity increase over fp32, least top-1 agreement or None)
ACCURACY_GATES: dict[str, tuple[float, float | None]] = {
    "fp32": (1e-4, 0.999),
    "fp16": (0.005, 0.98),
    "int8": (0.015, None),
    "mxfp6": (0.03, None),
    "w8a8": (0.05, None),
}
#: the largest perplexity increase an MXINT8 KV cache may add over the same precision without it
MXINT8_CACHE_GATE = 0.01


@dataclass(frozen=True)
class EvaluationReport:
    """Accuracy of one precision against the fp32 HF reference on one text."""

    precision: str
    kv_cache_dtype: str | None
    tokens_scored: int
    perplexity: float
    reference_perplexity: float
    token_agreement: float
    max_logit_error: float
    mean_logit_error: float
    #: the `prune` pass's options the program ran with, e.g. "ffn=0.25,heads=0,score=magnitude" ("" unpruned)
    pruning: str = ""

    @property
    def perplexity_increase(self) -> float:
        """Relative perplexity increase over the reference (0.01 = 1 %)."""
        return self.perplexity / self.reference_perplexity - 1

    def gate_failures(self) -> list[str]:
        """What this report misses of its accuracy gate; empty when it passes. The gate is the precision's
        (`ACCURACY_GATES`) plus the cache's allowance: an fp16 cache the fp16 gate's, an MXINT8 cache
        `MXINT8_CACHE_GATE`; a cache dtype turns fp32's exactness agreement into fp16's. The MXINT8 gate proper
        compares with the report without the cache: see `mxint8_cache_increase`. A pruned model has no fixed
        gate: how much accuracy to trade is the user's budget (`qeffc tune --max-ppl-increase`), so none applies."""
        if self.pruning:
            return []
        max_increase, min_agreement = ACCURACY_GATES[self.precision]
        if self.kv_cache_dtype is not None:
            fp16_increase, fp16_agreement = ACCURACY_GATES["fp16"]
            max_increase += fp16_increase if self.kv_cache_dtype == "fp16" else MXINT8_CACHE_GATE
            if min_agreement is not None and fp16_agreement is not None:
                min_agreement = min(min_agreement, fp16_agreement)
        failures = []
        if self.perplexity_increase > max_increase:
            failures.append(f"perplexity +{100 * self.perplexity_increase:.3f}% exceeds +{100 * max_increase:g}%")
        if min_agreement is not None and self.token_agreement < min_agreement:
            failures.append(f"top-1 agreement {100 * self.token_agreement:.2f}% is below {100 * min_agreement:g}%")
        return failures


def mxint8_cache_increase(with_cache: EvaluationReport, without: EvaluationReport) -> float:
    """The perplexity increase an MXINT8 cache adds over the same precision without it (gate: MXINT8_CACHE_GATE)."""
    return with_cache.perplexity / without.perplexity - 1


class AccuracyGates:
    """The gates of a sweep of reports: each report's own, and for an MXINT8-cache row the cache gate against the
    same precision without a cache (so evaluate the no-cache rows first: `sweep_cache_dtypes` orders them so)."""

    def __init__(self) -> None:
        self._without_cache: dict[str, EvaluationReport] = {}

    def failures(self, report: EvaluationReport) -> list[str]:
        """What `report` misses (empty when every gate holds); pruned rows have no cache gate."""
        if not report.pruning and report.kv_cache_dtype is None:
            self._without_cache[report.precision] = report
        failures = report.gate_failures()
        baseline = self._without_cache.get(report.precision)
        if report.kv_cache_dtype == "mxint8" and not report.pruning and baseline is not None:
            extra = mxint8_cache_increase(report, baseline)
            if extra > MXINT8_CACHE_GATE:
                failures.append(
                    f"the MXINT8 cache adds +{100 * extra:.3f}% perplexity (gate +{100 * MXINT8_CACHE_GATE:g}%)"
                )
        return failures


def sweep_cache_dtypes(names: Sequence[str]) -> list[str | None]:
    """KV-cache dtypes as given on a command line ("none" = the activations' dtype), distinct, without a cache
    first so each MXINT8 row has its precision's row to be compared with."""
    return sorted({None if d.lower() == "none" else d for d in names or ["none"]}, key=lambda d: d or "")


def evaluate(
    model_dir: str | Path,
    precision: str = DEFAULTS.precision,
    kv_cache_dtype: str | None = None,
    text: str | Path | None = None,
    *,
    prune_ffn: float = 0.0,
    prune_heads: float = 0.0,
    prune_score: str = "magnitude",
    max_tokens: int | None = None,
) -> EvaluationReport:
    """Score `text` (default: the shipped validation text) with the program at `precision` (its KV cache stored
    as `kv_cache_dtype`, if given; `prune_ffn` / `prune_heads` of every layer pruned first) and with HF in fp32.
    `max_tokens` keeps only the windows within the first that many tokens (default: the whole text)."""
    return Evaluator(model_dir, text, max_tokens=max_tokens, keep_reference=False)(
        precision, kv_cache_dtype, prune_ffn=prune_ffn, prune_heads=prune_heads, prune_score=prune_score
    )


class Evaluator:
    """Scores one model on one text at many settings; with `keep_reference` HF's fp32 logits are computed once
    and kept (windows x window x vocab fp32 values: 33 MB for the shipped model at 4,096 tokens), so each
    further setting costs only the program's own run."""

    def __init__(
        self,
        model_dir: str | Path,
        text: str | Path | None = None,
        *,
        max_tokens: int | None = None,
        keep_reference: bool = True,
    ) -> None:
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise InvalidArgumentError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        self.model_dir = Path(model_dir)
        self.resolved = resolve_model(self.model_dir)
        self.windows = _windows(self.model_dir, _read_text(text), self.resolved.config.max_seq_len, max_tokens)
        self.keep_reference = keep_reference
        self._reference_model: torch.nn.Module | None = None
        self._reference_logits: dict[int, torch.Tensor] = {}
        self._captured: Program | None = None

    def __call__(
        self,
        precision: str = DEFAULTS.precision,
        kv_cache_dtype: str | None = None,
        *,
        prune_ffn: float = 0.0,
        prune_heads: float = 0.0,
        prune_score: str = "magnitude",
    ) -> EvaluationReport:
        check_precision(precision, kv_cache_dtype)
        check_pruning(prune_ffn, prune_heads, prune_score, precision)
        window = self.windows.shape[1]
        if self._captured is None:  # passes never modify their input: one capture serves every setting
            self._captured = capture_resolved(self.resolved, batch_size=1, seq_len=window)
        program = self._captured
        needs_table = precision == "w8a8" or (prune_score == "activation" and bool(prune_ffn))
        with contextlib.ExitStack() as stack:
            table = stack.enter_context(calibration_file(self.model_dir)) if needs_table else None
            pruning = prune_passes(prune_ffn, prune_heads, prune_score, table)
            pipeline = evaluation_pipeline(precision, kv_cache_dtype, window, table, pruning)
            program = PassManager(pipeline, verify=False).run(program)
        executor = HostExecutor(program)
        empty_cache = {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in program.inputs if s.role.startswith("past")}
        positions = {"position_ids": torch.arange(window)[None]} if empty_cache else {}
        totals = _Totals()
        for index, ids in enumerate(self.windows):
            logits = executor({"input_ids": ids[None], **positions, **empty_cache})["logits"][0, :-1]
            totals.add(logits, self._reference(index), ids[1:])
        return totals.report(precision, kv_cache_dtype, pruning_options(prune_ffn, prune_heads, prune_score))

    def _reference(self, index: int) -> torch.Tensor:
        """HF's fp32 logits of window `index` (all positions but the last)."""
        if index in self._reference_logits:
            return self._reference_logits[index]
        if self._reference_model is None:
            transformers_logging.disable_progress_bar()  # a progress bar per load would clutter reports
            self._reference_model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = self._reference_model(self.windows[index][None]).logits[0, :-1]
        if self.keep_reference:
            self._reference_logits[index] = logits
        return logits


def _read_text(text: str | Path | None) -> str:
    if text is None:
        from qeff_compiler.data import TINY_MPT_VALIDATION_TEXT

        return TINY_MPT_VALIDATION_TEXT.read_text()
    path = Path(text)
    # a str is a file name when such a file exists (long strings cannot be file names: skip the lookup)
    if isinstance(text, Path) or (len(text) < 4096 and path.is_file()):
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read text file {path}: {exc}") from exc
    return text


def _windows(model_dir: Path, text: str, window: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping full windows of token ids [n, window], within the first `max_tokens` tokens."""
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelSourceError(f"{model_dir} has no tokenizer.json; evaluation needs the model's tokenizer")
    ids = AutoTokenizer.from_pretrained(model_dir)(text, verbose=False)["input_ids"][:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise InvalidArgumentError(f"the text has {len(ids)} tokens, fewer than one {window}-token window")
    return torch.tensor(ids[: count * window], dtype=torch.int64).reshape(count, window)


class _Totals:
    """Running sums over windows, so no window's logits are kept."""

    def __init__(self) -> None:
        self.tokens = 0
        self.nll = self.reference_nll = self.abs_error = 0.0
        self.agreeing = 0
        self.max_error = 0.0

    def add(self, logits: torch.Tensor, expected: torch.Tensor, targets: torch.Tensor) -> None:
        self.tokens += len(targets)
        self.nll += torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum").item()
        self.reference_nll += torch.nn.functional.cross_entropy(expected.double(), targets, reduction="sum").item()
        self.agreeing += int((logits.argmax(-1) == expected.argmax(-1)).sum())
        error = (logits.double() - expected.double()).abs()
        self.max_error = max(self.max_error, error.max().item())
        self.abs_error += error.mean(dim=-1).sum().item()

    def report(self, precision: str, kv_cache_dtype: str | None, pruning: str) -> EvaluationReport:
        return EvaluationReport(
            precision=precision,
            kv_cache_dtype=kv_cache_dtype,
            tokens_scored=self.tokens,
            perplexity=math.exp(self.nll / self.tokens),
            reference_perplexity=math.exp(self.reference_nll / self.tokens),
            token_agreement=self.agreeing / self.tokens,
            max_logit_error=self.max_error,
            mean_logit_error=self.abs_error / self.tokens,
            pruning=pruning,
        )
