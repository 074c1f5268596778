"""Next-token choice: greedy, or sampling with temperature, top-k and top-p from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qeff_compiler.errors import InvalidArgumentError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. Greedy unless `do_sample`; the other fields only apply when sampling."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InvalidArgumentError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be an integer ≥ 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
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
            return logits.argmax(dim=-1)
        scores = logits.float() / self.config.temperature
        if self.config.top_k:
            kth = torch.topk(scores, min(self.config.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.config.top_p < 1.0:
            scores = _nucleus(scores, self.config.top_p)
        probabilities = torch.softmax(scores, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.generator).squeeze(-1)


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)."""
    ordered, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - torch.softmax(ordered, dim=-1) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
