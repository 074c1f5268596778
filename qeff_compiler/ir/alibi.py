"""ALiBi slopes exactly as MPT (and HF's port of it) computes them, precomputed once at compile time."""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int, alibi_bias_max: float) -> torch.Tensor:
    """Per-head slopes `1 / 2^(i * alibi_bias_max / n)`, i = 1..n, for n = n_heads rounded up to a power of two.

    When n_heads is not a power of two MPT interleaves: odd-indexed slopes first, then even-indexed, truncated
    to n_heads (`cat(s[1::2], s[::2])[:n_heads]`), so that the heads still cover the whole range of slopes.
    """
    padded = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, padded + 1, dtype=torch.int64).float() * (alibi_bias_max / padded)
    slopes = 1.0 / torch.pow(2, exponents)
    if padded != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes
