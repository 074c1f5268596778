"""`qc.evaluate`: the accuracy a precision costs, measured against the fp32 Hugging Face model.

The text is tokenized with the model directory's tokenizer and cut into non-overlapping windows of max_seq_len
tokens (the incomplete last window is dropped; the first token of each window is not scored), the windowing the
shipped model's card uses. Both the compiled program (captured at one window, attention patched, lowered to the
precision) and HF's fp32 model score every window teacher-forced, so the figures compare the same predictions:

- perplexity and reference_perplexity: exp of the mean negative log-likelihood of the scored tokens;
- token_agreement: share of positions where the program's top-1 token equals the reference's;
- max_logit_error / mean_logit_error: absolute logit differences over all scored positions and the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from qeff_compiler.backends.host import HostExecutor
from qeff_compiler.capture import capture_resolved, resolve_model
from qeff_compiler.errors import InvalidArgumentError, ModelSourceError
from qeff_compiler.passes import PassManager
from qeff_compiler.precision import check_precision, lowering_passes

def evaluation_pipeline(precision: str) -> str:
    """The stateless pipeline of a precision: evaluation scores every position, so no KV cache is added."""
    return ",".join(["strip-export-noise", "patch-attention", *lowering_passes(precision), "dce"])


@dataclass(frozen=True)
class EvaluationReport:
    """Accuracy of one precision against the fp32 HF reference on one text."""

    precision: str
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


def evaluate(model_dir: str | Path, precision: str = "fp32", text: str | Path | None = None) -> EvaluationReport:
    """Score `text` (default: the shipped validation text) with the program at `precision` and with HF in fp32."""
    check_precision(precision)
    model_dir = Path(model_dir)
    resolved = resolve_model(model_dir)
    windows = _windows(model_dir, _read_text(text), resolved.config.max_seq_len)
    program = capture_resolved(resolved, batch_size=1, seq_len=windows.shape[1])
    program = PassManager(evaluation_pipeline(precision), verify=False).run(program)
    executor = HostExecutor(program)
    transformers_logging.disable_progress_bar()  # a progress bar per load would clutter reports
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    totals = _Totals()
    for window in windows:
        ids = window[None]
        logits = executor({"input_ids": ids})["logits"][0, :-1]
        with torch.no_grad():
            expected = reference(ids).logits[0, :-1]
        totals.add(logits, expected, window[1:])
    return totals.report(precision)


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

    def report(self, precision: str) -> EvaluationReport:
        return EvaluationReport(
            precision=precision,
            tokens_scored=self.tokens,
            perplexity=math.exp(self.nll / self.tokens),
            reference_perplexity=math.exp(self.reference_nll / self.tokens),
            token_agreement=self.agreeing / self.tokens,
            max_logit_error=self.max_error,
            mean_logit_error=self.abs_error / self.tokens,
        )
