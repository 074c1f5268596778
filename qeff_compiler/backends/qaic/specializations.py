"""`specializations.json` and `mdp_ts_<N>.json`: the shapes `qaic-compile` builds and how it spreads them over SoCs.

Formats as QEfficient writes them. Specializations, named (current SDKs):

    {"specializations": [{"name": "Prefill", "symbols": {"batch_size": "1", "ctx_len": "128", "seq_len": "32"}},
                         {"name": "Decode",  "symbols": {"batch_size": "1", "ctx_len": "128", "seq_len": "1"}}]}

and legacy (older SDKs reject the named form): the same list of bare symbol dicts. All values are strings. A
prefill length of 1 needs no separate decode specialization. The multi-device partition file (tensor slicing over
`num_devices` SoCs) is one partition holding every device, with all devices in one p2p connection.
"""

from __future__ import annotations

from typing import Any

from qeff_compiler.backends.qaic.graph import BATCH, CTX, SEQ


def specializations(batch_size: int, prefill_len: int, ctx_len: int, *, named: bool = True) -> dict[str, Any]:
    """The content of specializations.json for a prefill of `prefill_len` tokens and single-token decode."""
    shapes = [("Prefill", prefill_len)] + ([("Decode", 1)] if prefill_len != 1 else [])
    entries = [{BATCH: str(batch_size), CTX: str(ctx_len), SEQ: str(seq_len)} for _, seq_len in shapes]
    if not named:
        return {"specializations": entries}
    return {
        "specializations": [
            {"name": name, "symbols": symbols} for (name, _), symbols in zip(shapes, entries, strict=True)
        ]
    }


def mdp_partition(num_devices: int, num_cores: int) -> dict[str, Any]:
    """The content of mdp_ts_<num_devices>.json: one tensor-sliced partition over every device."""
    return {
        "connections": [{"devices": list(range(num_devices)), "type": "p2p"}],
        "partitions": [
            {"name": "Partition0", "devices": [{"deviceId": d, "numCores": num_cores} for d in range(num_devices)]}
        ],
    }
