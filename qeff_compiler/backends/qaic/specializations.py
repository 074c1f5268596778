"""`specializations.json` and `mdp_ts_<N>.json`: the shapes `qaic-compile` builds and how it spreads them over SoCs.

Formats as QEfficient writes them. Specializations, named (current SDKs):

    {"specializations": [{"name": "Prefill", "symbols": {"batch_size": "1", "ctx_len": "128", "seq_len": "32"}},
                         {"name": "Decode",  "symbols": {"batch_size": "1", "ctx_len": "128", "seq_len": "1"}}]}

and legacy (older SDKs reject the named form): the same list of bare symbol dicts. All values are strings. A
prefill length of 1 needs no separate decode specialization (unless continuous batching: decode runs every
slot). The multi-device partition file (tensor slicing over `num_devices` SoCs) is one partition holding every
device, with all devices in one p2p connection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from qeff_compiler.backends.qaic.graph import BATCH, CCL, CTX, FULL_BATCH, NUM_LOGITS_TO_KEEP, SEQ


def specializations(
    batch_size: int,
    prefill_len: int,
    ctx_len: int,
    *,
    named: bool = True,
    full_batch_size: int | None = None,
    prefill_buckets: Sequence[int] | None = None,
    decode_buckets: Sequence[int] | None = None,
    num_speculative_tokens: int | None = None,
) -> dict[str, Any]:
    """The content of specializations.json for a prefill of `prefill_len` tokens and single-token decode.

    Continuous batching (`full_batch_size`): prefill runs batch 1 into a slot (symbols `full_batch_size`,
    `full_batch_exec_size` 1), decode runs all `full_batch_size` slots. Context buckets: one prefill
    specialization per prefill bucket and one decode specialization per decode bucket, each with its
    `comp_ctx_lengths` symbol; names repeat with a suffix (`Prefill_0`, `Prefill_1`, ...) as QEfficient does.
    A speculative-decoding target (`num_speculative_tokens` K): decode runs K+1 positions, and both carry
    QEfficient's `num_logits_to_keep` symbol (prefill 1, decode K+1); with slots and buckets too, every
    specialization carries all of these symbols (QEfficient itself writes no bucketed decode for such a target)."""
    cb = full_batch_size is not None
    speculative = num_speculative_tokens is not None
    prefill = _symbols("1" if cb else str(batch_size), str(prefill_len), str(ctx_len))
    decode_len = str(num_speculative_tokens + 1) if num_speculative_tokens is not None else "1"
    decode = _symbols(str(full_batch_size if cb else batch_size), decode_len, str(ctx_len))
    shapes = [("Prefill", s) for s in _per_bucket(prefill, prefill_buckets)]
    if prefill != decode or cb or speculative:  # a verify step keeps K+1 logits: never the prefill's
        shapes += [("Decode", s) for s in _per_bucket(decode, decode_buckets)]
    for name, symbols in shapes:
        if speculative:
            symbols[NUM_LOGITS_TO_KEEP] = "1" if name == "Prefill" else decode_len
        if cb:
            symbols[FULL_BATCH] = str(full_batch_size)
            if name == "Prefill":
                symbols["full_batch_exec_size"] = "1"
    if not named:
        return {"specializations": [symbols for _, symbols in shapes]}
    counts = Counter(name for name, _ in shapes)
    seen: Counter[str] = Counter()
    entries = []
    for name, symbols in shapes:
        label = name if counts[name] == 1 else f"{name}_{seen[name]}"
        seen[name] += 1
        entries.append({"name": label, "symbols": symbols})
    return {"specializations": entries}


def _symbols(batch: str, seq_len: str, ctx_len: str) -> dict[str, str]:
    return {BATCH: batch, SEQ: seq_len, CTX: ctx_len}


def _per_bucket(symbols: dict[str, str], buckets: Sequence[int] | None) -> list[dict[str, str]]:
    """One copy of `symbols` per context bucket (with its `comp_ctx_lengths`), or a copy of `symbols` alone."""
    if buckets is None:
        return [dict(symbols)]
    return [symbols | {CCL: str(bucket)} for bucket in buckets]


def mdp_partition(num_devices: int, num_cores: int) -> dict[str, Any]:
    """The content of mdp_ts_<num_devices>.json: one tensor-sliced partition over every device."""
    return {
        "connections": [{"devices": list(range(num_devices)), "type": "p2p"}],
        "partitions": [
            {"name": "Partition0", "devices": [{"deviceId": d, "numCores": num_cores} for d in range(num_devices)]}
        ],
    }
