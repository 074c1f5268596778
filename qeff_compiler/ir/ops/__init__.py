"""The compiler's operators and what it knows about each: importing this package registers the `qeff::` ops
(torch.library, with reference and fake kernels), their traits, the ATen ops' traits and the quantization schemes.

    ops.attention  fused MPT attention (with and without a KV cache), ALiBi slopes naming
    ops.quant      weight dequantize ops and the quantized linears
    ops.schemes    one declaration per quantized weight format (parts, encoder, reading ops)
    ops.aten       traits of the ATen ops passes and backends reason about
    ops.traits     the trait record and its registry
"""

from qeff_compiler.ir.ops import aten  # noqa: F401 (registers the ATen ops' traits)
from qeff_compiler.ir.ops.attention import (
    ALIBI_SLOPES,
    ATTENTION,
    ATTENTION_KV,
    KV_CACHE_FORMATS,
    MASK_VALUE,
    is_alibi_slopes,
    mpt_attention,
    mpt_attention_kv,
    round_fp16,
    write_cache,
)
from qeff_compiler.ir.ops.quant import DEQUANTIZE_INT8, DEQUANTIZE_MXFP6, LINEAR_W8A8, LINEAR_W8A16
from qeff_compiler.ir.ops.schemes import (
    INT8,
    MXFP6,
    MXFP6_ELEMENT_FORMATS,
    SCHEMES,
    W8A8,
    WeightScheme,
    scheme_label,
)
from qeff_compiler.ir.ops.traits import NAMESPACE, PART_AXES, OpTraits, targets_with, traits

__all__ = [
    "ALIBI_SLOPES",
    "ATTENTION",
    "ATTENTION_KV",
    "DEQUANTIZE_INT8",
    "DEQUANTIZE_MXFP6",
    "INT8",
    "KV_CACHE_FORMATS",
    "LINEAR_W8A8",
    "LINEAR_W8A16",
    "MASK_VALUE",
    "MXFP6",
    "MXFP6_ELEMENT_FORMATS",
    "NAMESPACE",
    "PART_AXES",
    "SCHEMES",
    "W8A8",
    "OpTraits",
    "WeightScheme",
    "is_alibi_slopes",
    "mpt_attention",
    "mpt_attention_kv",
    "round_fp16",
    "scheme_label",
    "targets_with",
    "traits",
    "write_cache",
]
