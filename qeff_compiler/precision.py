"""Precisions and KV-cache dtypes: which ones exist, and what precision every weight ends in.

The passes each precision means are built in `pipelines`. KV-cache dtype (the `kv-cache` pass's `dtype`): None =
the activations' dtype, "fp16", or "mxint8".
"""

from __future__ import annotations

import torch

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.ir.ops import scheme_label
from qeff_compiler.ir.program import BINDING, Program, dtype_short_name
from qeff_compiler.numerics.mx import mx_storage_bits_per_element

PRECISIONS = ("fp32", "fp16", "int8", "w8a8", "mxfp6")
KV_CACHE_DTYPES = ("fp16", "mxint8")
#: importance scores of the `prune` pass
PRUNE_SCORES = ("magnitude", "activation")


def check_precision(precision: str, kv_cache_dtype: str | None = None) -> None:
    """Raise `InvalidArgumentError` for an unknown precision or KV-cache dtype."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if kv_cache_dtype is not None and kv_cache_dtype not in KV_CACHE_DTYPES:
        raise InvalidArgumentError(
            f"kv_cache_dtype {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)} "
            "(or None, 'none' on the command line: the activations' dtype)"
        )


def kv_cache_bits(precision: str, kv_cache_dtype: str | None) -> float:
    """Stored bits per KV-cache element: MXINT8 8.25, fp16 16, and None = the activations' dtype (fp32 only for
    the fp32 precision)."""
    if kv_cache_dtype == "mxint8":
        return mx_storage_bits_per_element("int8")
    return 32.0 if kv_cache_dtype is None and precision == "fp32" else 16.0


def check_pruning(ffn: float, heads: float, score: str, precision: str | None = None) -> None:
    """Raise `InvalidArgumentError` for a share outside [0, 1), an unknown importance score, or FFN pruning with
    w8a8, whose calibration table holds the unpruned model's down_proj input channels."""
    if precision == "w8a8" and ffn:
        raise InvalidArgumentError(
            f"prune_ffn={ffn!r} with precision w8a8: the calibration table measures the unpruned FFN's channels; "
            "prune heads only, or use int8 / mxfp6"
        )
    for name, share in (("prune_ffn", ffn), ("prune_heads", heads)):
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share < 1.0:
            raise InvalidArgumentError(f"{name} must be a share in [0, 1), got {share!r}")
    if score not in PRUNE_SCORES:
        raise InvalidArgumentError(f"prune_score {score!r} is not one of {', '.join(PRUNE_SCORES)}")


def pruning_options(ffn: float = 0.0, heads: float = 0.0, score: str = "magnitude") -> str:
    """The `prune` pass's options for these shares, e.g. "ffn=0.25,heads=0,score=magnitude"; "" for none."""
    check_pruning(ffn, heads, score)
    return f"ffn={ffn:g},heads={heads:g},score={score}" if ffn or heads else ""


def weight_precisions(program: Program) -> dict[str, dict[str, object]]:
    """For every weight the program computes with, by its checkpoint name: its precision and the stored tensors.

    A quantized weight is stored as parts (codes, scales) that a dequantize op reads; its precision is the
    format of the op ("int8", "mxfp6-e2m3", ...). Any other weight is stored as it is and named by its dtype.
    """
    formats: dict[str, dict[str, object]] = {}
    quantized_parts: set[str] = set()
    for node in program.graph.nodes:
        precision = scheme_label(node)
        if precision is None:
            continue
        parts = [a.meta[BINDING][1] for a in node.args if isinstance(a, torch.fx.Node) and a.op == "placeholder"]
        logical = parts[0].rsplit(".", 1)[0]
        formats[logical] = {"precision": precision, "stored_as": parts}
        quantized_parts.update(parts)
    for name in sorted(set(program.weight_placeholders().values()) - quantized_parts):
        dtype = _dtype_name(program.weights[name].dtype)
        if name in formats:  # e.g. an input embedding tied to a quantized lm_head keeps reading the fp16 weight
            formats[name]["unquantized_copy"] = {"precision": dtype, "stored_as": name}
        else:
            formats[name] = {"precision": dtype, "stored_as": [name]}
    return dict(sorted(formats.items()))


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, dtype_short_name(dtype))
