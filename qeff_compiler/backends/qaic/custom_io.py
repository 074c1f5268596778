"""`custom_io.yaml`: the precision `qaic-compile` gives the KV-cache inputs and retained-state outputs.

The graph's cache tensors are FLOAT; on the device they are stored in this precision instead: `mxint8` for an
MXINT8 cache, `float16` otherwise (the device has no fp32 cache). The file is QEfficient's exact text: per layer
the key input, its retained state, the value input, its retained state, each entry

     - IOName: past_key.0
       Precision: mxint8

followed by a blank line (a YAML list of mappings; written by hand to keep that exact layout).
"""

from __future__ import annotations


def custom_io(n_layers: int, kv_precision: str) -> dict[str, str]:
    """IO name → precision, in QEfficient's order."""
    entries: dict[str, str] = {}
    for i in range(n_layers):
        for kind in ("key", "value"):
            entries[f"past_{kind}.{i}"] = kv_precision
            entries[f"past_{kind}.{i}_RetainedState"] = kv_precision
    return entries


def custom_io_yaml(entries: dict[str, str]) -> str:
    return "".join(f" - IOName: {name}\n   Precision: {precision}\n\n" for name, precision in entries.items())
