"""Continuous-batching and compute-context-length settings: checked once, where a compile starts.

A bucket list names the cache lengths attention may read: strictly ascending positive integers, the last equal to
ctx_len so every position has a bucket. QEfficient silently rewrites lists it dislikes (raises buckets to ≥ 1024,
caps them at ctx_len); here a list is used as given or refused with the reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from qeff_compiler.errors import InvalidArgumentError


def check_buckets(name: str, buckets: Sequence[int] | None, ctx_len: int) -> None:
    """Refuse a bucket list that is not ascending, holds a non-positive or non-integer length, or does not end at
    `ctx_len` (above it: the cache has no such positions; below it: late positions would have no bucket)."""
    if buckets is None:
        return
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
        shown = list(buckets) if isinstance(buckets, Sequence) and not isinstance(buckets, (str, bytes)) else buckets
        raise InvalidArgumentError(f"{name} must be a non-empty list of context lengths, got {shown!r}")
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets):
        raise InvalidArgumentError(f"{name} must hold positive integers, got {list(buckets)!r}")
    if any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
        raise InvalidArgumentError(f"{name}={list(buckets)} must be strictly ascending")
    if buckets[-1] > ctx_len:
        raise InvalidArgumentError(
            f"{name}={list(buckets)} has a bucket above ctx_len={ctx_len}: the cache holds {ctx_len} positions"
        )
    if buckets[-1] != ctx_len:
        raise InvalidArgumentError(
            f"{name}={list(buckets)} does not cover ctx_len={ctx_len}: its last bucket must be {ctx_len}, "
            "or positions past it would have no bucket"
        )


def check_serving(batch_size: int, full_batch_size: int | None) -> None:
    """Refuse a bad full_batch_size, and batch_size > 1 with it (QEfficient: only one of them may exceed 1)."""
    if full_batch_size is None:
        return
    if not isinstance(full_batch_size, int) or isinstance(full_batch_size, bool) or full_batch_size < 1:
        raise InvalidArgumentError(f"full_batch_size must be a positive integer, got {full_batch_size!r}")
    if batch_size != 1:
        raise InvalidArgumentError(
            f"batch_size={batch_size} with full_batch_size={full_batch_size}: only one of them may be greater than "
            "1 (continuous batching prefills one request at a time into a slot); pass batch_size=1"
        )


def bucket_for(buckets: Sequence[int], position: int) -> int:
    """The smallest bucket holding cache position `position` (buckets ascend; the last is ctx_len)."""
    return buckets[bisect.bisect_right(buckets, position)]
