"""Next-token choice: greedy, or sampling with temperature, top-k and top-p from a seeded generator."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from qeff_compiler.errors import InvalidArgumentError, NonFiniteError

#: seeds torch.Generator.manual_seed accepts (it keeps 64 bits)
SEED_RANGE = (0, 2**64 - 1)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. Greedy unless `do_sample`; the other fields only apply when sampling."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise InvalidArgumentError(f"do_sample must be True or False, got {self.do_sample!r}")
        if not (_is_real(self.temperature) and 0 < self.temperature <= sys.float_info.max):  # a float: finite
            raise InvalidArgumentError(f"temperature must be > 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be an integer ≥ 0 (0 = off), got {self.top_k!r}")
        if not (_is_real(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
        low, high = SEED_RANGE
        if self.seed is not None and not (_is_int(self.seed) and low <= self.seed <= high):
            raise InvalidArgumentError(f"seed must be None or an integer in [0, 2**64 - 1], got {self.seed!r}")
        changed = self.temperature != 1.0 or self.top_k or self.top_p != 1.0 or self.seed is not None
        if changed and not self.do_sample:
            raise InvalidArgumentError("temperature/top_k/top_p/seed only apply with do_sample=True")


class TokenSampler:
    """Picks one token per row from logits [batch, vocab]."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.generator = torch.Generator()
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()  # a fresh generator always starts from one default seed: draw one from entropy

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.config.do_sample:
            _check_finite(logits)
            return logits.argmax(dim=-1)
        return torch.multinomial(self.probabilities(logits), 1, generator=self.generator).squeeze(-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampling draws from (temperature, top-k, top-p applied), fp64, over the last axis;
        speculative decoding's rejection rule compares the target's and the draft's."""
        _check_finite(logits)
        # in fp64 (a temperature like 1e-300 is 0 in fp32) and shifted so the largest score is 0 before dividing:
        # a tiny temperature then gives -inf (never NaN) to every other token instead of making the largest inf
        scores = logits.double()
        scores = (scores - scores.amax(dim=-1, keepdim=True)) / float(self.config.temperature)
        if self.config.top_k:
            kth = torch.topk(scores, min(self.config.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.config.top_p < 1.0:
            scores = _nucleus(scores, self.config.top_p)
        return torch.softmax(scores, dim=-1)


def _check_finite(logits: torch.Tensor) -> None:
    finite = torch.isfinite(logits).all(dim=-1)
    if not bool(finite.all()):  # argmax would pick token 0 of a NaN row, forever
        row = int((~finite).reshape(-1).nonzero()[0])
        kind = "NaN" if bool(logits.reshape(-1, logits.shape[-1])[row].isnan().any()) else "infinite"
        raise NonFiniteError(
            f"the model computed {kind} logits (row {row}): its weights or activations overflow "
            "its precision, so no token can be chosen; check the checkpoint's weight magnitudes"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)."""
    ordered, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - torch.softmax(ordered, dim=-1) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
