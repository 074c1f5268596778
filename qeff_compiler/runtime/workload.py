"""Request streams for continuous-batching runs: a JSON workload file, or N synthetic requests with Poisson arrivals.

A workload file holds either explicit requests or the parameters of a synthetic stream:

    {"requests": [{"id": "a", "prompt": "def f(", "max_new_tokens": 16, "arrival_s": 0.0},
                  {"id": "b", "token_ids": [1, 2, 3], "max_new_tokens": 8, "arrival_s": 0.01,
                   "do_sample": true, "temperature": 0.8, "seed": 3}]}
    {"poisson": {"num_requests": 32, "rate_per_s": 200, "prompt_len": [8, 64], "max_new_tokens": [8, 32],
                 "seed": 0}}

A synthetic stream draws each prompt length and generation length uniformly from its [low, high] range, the
prompt's token ids uniformly from the vocabulary, and the gaps between arrivals from an exponential distribution of
mean 1 / rate_per_s (a Poisson process; rate_per_s null: all arrive at once). Everything is seeded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import Request

_SAMPLING_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "seed")
_REQUEST_FIELDS = frozenset({"id", "prompt", "token_ids", "max_new_tokens", "arrival_s", *_SAMPLING_FIELDS})


@dataclass(frozen=True)
class PoissonWorkload:
    """N requests with Poisson arrivals at `rate_per_s` (None: all at time 0) and uniform lengths."""

    num_requests: int
    rate_per_s: float | None
    prompt_len: tuple[int, int]
    max_new_tokens: tuple[int, int]
    seed: int = 0

    def __post_init__(self) -> None:
        if not _positive_int(self.num_requests):
            raise InvalidArgumentError(f"num_requests must be a positive integer, got {self.num_requests!r}")
        rate = self.rate_per_s
        if rate is not None and not (isinstance(rate, (int, float)) and 0 < rate < math.inf):
            raise InvalidArgumentError(f"rate_per_s must be a positive number (or null), got {rate!r}")
        for name in ("prompt_len", "max_new_tokens"):
            low_high = getattr(self, name)
            if not (
                isinstance(low_high, (list, tuple))
                and len(low_high) == 2
                and all(_positive_int(v) for v in low_high)
                and low_high[0] <= low_high[1]
            ):
                shown = list(low_high) if isinstance(low_high, (list, tuple)) else low_high
                raise InvalidArgumentError(f"{name} must be [low, high] with 1 <= low <= high, got {shown!r}")

    def requests(self, vocab_size: int) -> list[Request]:
        """The stream: ids r0, r1, ... in arrival order."""
        generator = torch.Generator().manual_seed(self.seed)
        clock, requests = 0.0, []
        for index in range(self.num_requests):
            if self.rate_per_s is not None and index > 0:
                clock += float(torch.empty(1).exponential_(self.rate_per_s, generator=generator))
            length = _uniform(self.prompt_len, generator)
            prompt = torch.randint(0, vocab_size, (length,), generator=generator).tolist()
            requests.append(
                Request(f"r{index}", tuple(prompt), _uniform(self.max_new_tokens, generator), arrival_s=clock)
            )
        return requests


def load_workload(path: Path, vocab_size: int, tokenize: Callable[[str], list[int]] | None) -> list[Request]:
    """The requests of workload file `path` (see the module docstring); `tokenize` encodes "prompt" texts."""
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise InvalidArgumentError(f"workload file {path} cannot be read: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"workload file {path} is not JSON: {error}") from None
    if isinstance(document, dict) and set(document) == {"poisson"} and isinstance(document["poisson"], dict):
        fields = document["poisson"]
        unknown = sorted(set(fields) - {"num_requests", "rate_per_s", "prompt_len", "max_new_tokens", "seed"})
        if unknown:
            raise InvalidArgumentError(f"workload file {path}: unknown poisson fields {unknown}")
        try:
            return PoissonWorkload(**fields).requests(vocab_size)
        except TypeError as error:  # a required field missing
            raise InvalidArgumentError(f"workload file {path}: {error}") from None
    if not (isinstance(document, dict) and set(document) == {"requests"} and isinstance(document["requests"], list)):
        raise InvalidArgumentError(f'workload file {path} must hold {{"requests": [...]}} or {{"poisson": {{...}}}}')
    return [_request(entry, index, path, tokenize) for index, entry in enumerate(document["requests"])]


def _request(entry: Any, index: int, path: Path, tokenize: Callable[[str], list[int]] | None) -> Request:
    where = f"workload file {path}, request {index}"
    if not isinstance(entry, Mapping) or set(entry) - _REQUEST_FIELDS:
        extra = sorted(set(entry) - _REQUEST_FIELDS) if isinstance(entry, Mapping) else type(entry).__name__
        raise InvalidArgumentError(f"{where}: unknown fields {extra}; fields: {', '.join(sorted(_REQUEST_FIELDS))}")
    if ("prompt" in entry) == ("token_ids" in entry):
        raise InvalidArgumentError(f"{where}: give exactly one of prompt or token_ids")
    if "prompt" in entry:
        if tokenize is None or not isinstance(entry["prompt"], str):
            raise InvalidArgumentError(f"{where}: a prompt must be text, and the artifact needs a tokenizer for it")
        ids: Any = tokenize(entry["prompt"])
    else:
        ids = entry["token_ids"]
    sampling = SamplingConfig(**{k: entry[k] for k in _SAMPLING_FIELDS if k in entry})
    return Request(
        str(entry.get("id", f"r{index}")),
        ids,
        entry.get("max_new_tokens", 16),
        sampling,
        arrival_s=entry.get("arrival_s", 0.0),
    )


def _uniform(low_high: tuple[int, int], generator: torch.Generator) -> int:
    return int(torch.randint(low_high[0], low_high[1] + 1, (1,), generator=generator))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
