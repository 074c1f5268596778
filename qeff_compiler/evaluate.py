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
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from qeff_compiler.backends.host import HostExecutor
from qeff_compiler.calibration import calibration_file
from qeff_compiler.capture import capture_resolved, resolve_model
from qeff_compiler.errors import InvalidArgumentError, ModelSourceError
from qeff_compiler.passes import PassManager
from qeff_compiler.precision import check_precision, kv_cache_pass, lowering_passes

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


def evaluation_pipeline(precision: str, kv_cache_dtype: str | None, window: int, calibration: Path | None = None) -> str:
    """The pipeline that scores every position of a window: stateless, or through a cache of `kv_cache_dtype`."""
    cache = [] if kv_cache_dtype is None else [kv_cache_pass(window, kv_cache_dtype, all_logits=True)]
    return ",".join(["strip-export-noise", "patch-attention", *lowering_passes(precision, calibration), *cache, "dce"])


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

    @property
    def perplexity_increase(self) -> float:
        """Relative perplexity increase over the reference (0.01 = 1 %)."""
        return self.perplexity / self.reference_perplexity - 1

    def gate_failures(self) -> list[str]:
        """What this report misses of its accuracy gate; empty when it passes. The gate is the precision's
        (`ACCURACY_GATES`) plus the cache's allowance: an fp16 cache the fp16 gate's, an MXINT8 cache
        `MXINT8_CACHE_GATE`; a cache dtype turns fp32's exactness agreement into fp16's. The MXINT8 gate proper
        compares with the report without the cache: see `mxint8_cache_increase`."""
        max_increase, min_agreement = ACCURACY_GATES[self.precision]
        if self.kv_cache_dtype is not None:
            fp16_increase, fp16_agreement = ACCURACY_GATES["fp16"]
            max_increase += fp16_increase if self.kv_cache_dtype == "fp16" else MXINT8_CACHE_GATE
            min_agreement = None if min_agreement is None else min(min_agreement, fp16_agreement)
        failures = []
        if self.perplexity_increase > max_increase:
            failures.append(f"perplexity +{100 * self.perplexity_increase:.3f}% exceeds +{100 * max_increase:g}%")
        if min_agreement is not None and self.token_agreement < min_agreement:
            failures.append(f"top-1 agreement {100 * self.token_agreement:.2f}% is below {100 * min_agreement:g}%")
        return failures


def mxint8_cache_increase(with_cache: EvaluationReport, without: EvaluationReport) -> float:
    """The perplexity increase an MXINT8 cache adds over the same precision without it (gate: MXINT8_CACHE_GATE)."""
    return with_cache.perplexity / without.perplexity - 1


def evaluate(
    model_dir: str | Path, precision: str = "fp32", kv_cache_dtype: str | None = None, text: str | Path | None = None
) -> EvaluationReport:
    """Score `text` (default: the shipped validation text) with the program at `precision` (its KV cache stored
    as `kv_cache_dtype`, if given) and with HF in fp32."""
    check_precision(precision, kv_cache_dtype)
    model_dir = Path(model_dir)
    resolved = resolve_model(model_dir)
    windows = _windows(model_dir, _read_text(text), resolved.config.max_seq_len)
    window = windows.shape[1]
    program = capture_resolved(resolved, batch_size=1, seq_len=window)
    with contextlib.ExitStack() as stack:
        table = stack.enter_context(calibration_file(model_dir)) if precision == "w8a8" else None
        program = PassManager(evaluation_pipeline(precision, kv_cache_dtype, window, table), verify=False).run(program)
    executor = HostExecutor(program)
    empty_cache = {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in program.inputs if s.role.startswith("past")}
    positions = {"position_ids": torch.arange(window)[None]} if empty_cache else {}
    transformers_logging.disable_progress_bar()  # a progress bar per load would clutter reports
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    totals = _Totals()
    for window in windows:
        ids = window[None]
        logits = executor({"input_ids": ids, **positions, **empty_cache})["logits"][0, :-1]
        with torch.no_grad():
            expected = reference(ids).logits[0, :-1]
        totals.add(logits, expected, window[1:])
    return totals.report(precision, kv_cache_dtype)


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


def _windows(model_dir: Path, text: str, window: int) -> torch.Tensor:
    """Non-overlapping full windows of token ids [n, window]."""
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelSourceError(f"{model_dir} has no tokenizer.json; evaluation needs the model's tokenizer")
    ids = AutoTokenizer.from_pretrained(model_dir)(text, verbose=False)["input_ids"]
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

    def report(self, precision: str, kv_cache_dtype: str | None) -> EvaluationReport:
        return EvaluationReport(
            precision=precision,
            kv_cache_dtype=kv_cache_dtype,
            tokens_scored=self.tokens,
            perplexity=math.exp(self.nll / self.tokens),
            reference_perplexity=math.exp(self.reference_nll / self.tokens),
            token_agreement=self.agreeing / self.tokens,
            max_logit_error=self.max_error,
            mean_logit_error=self.abs_error / self.tokens,
        )
