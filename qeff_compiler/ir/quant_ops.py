"""Weight-dequantize operators of the quantized precisions (torch.library), with reference and fake kernels.

A quantized weight stays quantized in the program: its codes and scales are weights in the store, and one of these
ops turns them into the float32 weight the consumer (a linear or a fused attention op) reads. Both ops are exact in
float32 (`dequantize_int8` rounds each product q · scale once, as ONNX `DequantizeLinear` does); the passes that
insert them round the result to fp16 after, the dtype the device decompresses to.

The host executor folds ops whose inputs are all weights once, when it binds the weights (see
`backends.host`), so dequantizing costs nothing per call on the host; the ONNX file keeps the codes and scales plus
the dequantize nodes.
"""

from __future__ import annotations

import torch

from qeff_compiler.numerics.mx import MXTensor, dequantize_mx, unpack_fp6


@torch.library.custom_op("qeff::dequantize_int8", mutates_args=())
def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 codes [out, in] times fp32 per-output-channel scales [out] → fp32 [out, in]."""
    return qweight.float() * scales[:, None]


@dequantize_int8.register_fake
def _dequantize_int8_fake(qweight, scales):  # noqa: ANN001, ANN202
    return qweight.new_empty(qweight.shape, dtype=torch.float32)


@torch.library.custom_op("qeff::dequantize_mxfp6", mutates_args=())
def dequantize_mxfp6(packed: torch.Tensor, scales: torch.Tensor, cols: int, fmt: str) -> torch.Tensor:
    """MXFP6 codes packed four to three bytes [rows, 3 * ceil(cols / 4)] and E8M0 scale codes
    [rows, ceil(cols / 32)] (blocks of 32 along cols) → fp32 [rows, cols]."""
    codes = unpack_fp6(packed, cols)
    return dequantize_mx(MXTensor(codes, scales, tuple(codes.shape), fmt, axis=1))


@dequantize_mxfp6.register_fake
def _dequantize_mxfp6_fake(packed, scales, cols, fmt):  # noqa: ANN001, ANN202
    return packed.new_empty((packed.shape[0], cols), dtype=torch.float32)


DEQUANTIZE_INT8 = torch.ops.qeff.dequantize_int8.default
DEQUANTIZE_MXFP6 = torch.ops.qeff.dequantize_mxfp6.default
