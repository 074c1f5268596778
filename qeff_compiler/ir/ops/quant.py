"""Weight-dequantize operators of the quantized precisions (torch.library), with reference and fake kernels.

A quantized weight stays quantized in the program: its codes and scales are weights in the store, and one of these
ops turns them into the float32 weight the consumer (a linear or a fused attention op) reads. Both ops are exact in
float32 (`dequantize_int8` rounds each product q · scale once, as ONNX `DequantizeLinear` does); the passes that
insert them round the result to fp16 after, the dtype the device decompresses to.

The host executor folds ops whose inputs are all weights once, when it binds the weights (see
`ir.interpret`), so dequantizing costs nothing per call on the host; the ONNX file keeps the codes and scales plus
the dequantize nodes.

`linear_w8a8` (appended for the `w8a8` precision) is a whole linear rather than a weight dequantize: int8
activations cannot be expressed as a float weight read by `aten.linear`, so the op takes the activation too.
"""

from __future__ import annotations

import torch

from qeff_compiler.numerics.int8 import (
    linear_w8a8 as int8_linear_w8a8,
    linear_w8a16 as int8_linear_w8a16,
    quantize_activation_per_tensor,
)
from qeff_compiler.numerics.mx import MXTensor, dequantize_mx, unpack_fp6


@torch.library.custom_op("qeff::dequantize_int8", mutates_args=())
def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 codes [out, in] times fp32 per-output-channel scales [out] → fp32 [out, in]."""
    return qweight.float() * scales[:, None]


@dequantize_int8.register_fake
def _dequantize_int8_fake(qweight, scales):
    return qweight.new_empty(qweight.shape, dtype=torch.float32)


@torch.library.custom_op("qeff::dequantize_mxfp6", mutates_args=())
def dequantize_mxfp6(packed: torch.Tensor, scales: torch.Tensor, cols: int, fmt: str) -> torch.Tensor:
    """MXFP6 codes packed four to three bytes [rows, 3 * ceil(cols / 4)] and E8M0 scale codes
    [rows, ceil(cols / 32)] (blocks of 32 along cols) → fp32 [rows, cols]."""
    codes = unpack_fp6(packed, cols)
    return dequantize_mx(MXTensor(codes, scales, tuple(codes.shape), fmt, axis=1))


@dequantize_mxfp6.register_fake
def _dequantize_mxfp6_fake(packed, scales, cols, fmt):
    return packed.new_empty((packed.shape[0], cols), dtype=torch.float32)


DEQUANTIZE_INT8 = torch.ops.qeff.dequantize_int8.default
DEQUANTIZE_MXFP6 = torch.ops.qeff.dequantize_mxfp6.default


@torch.library.custom_op("qeff::linear_w8a8", mutates_args=())
def linear_w8a8(
    x: torch.Tensor, smooth: torch.Tensor, act_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    """W8A8 linear: fp32 x [..., in] → fp32 [..., out], the int8 · int8 product summed exactly in int32.

    Roundings, in order (the ONNX function `LinearW8A8` repeats each one): x / smooth in fp32 (SmoothQuant's
    per-input-channel factors [in]); codes = round-half-even(fp64(x / smooth) / fp64(act_scale)) saturated to
    ±127 (act_scale: a 0-d fp32 tensor); y = fp32(fp64(acc) · (fp64(w_scale) · fp64(act_scale))) with acc the
    exact int32 sum against qweight [out, in] (the smoothed weight W · diag(smooth), per-output-channel scales
    w_scale [out]). Unlike the dequantize ops it reads activations, so it runs on every call.
    """
    scale = act_scale.item()
    return int8_linear_w8a8(quantize_activation_per_tensor(x / smooth, scale), scale, qweight, w_scale)


@linear_w8a8.register_fake
def _linear_w8a8_fake(x, smooth, act_scale, qweight, w_scale):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)


LINEAR_W8A8 = torch.ops.qeff.linear_w8a8.default


@torch.library.custom_op("qeff::linear_w8a16", mutates_args=())
def linear_w8a16(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """W8A16 linear: fp32 x [..., in] (holding fp16 values) → fp32 [..., out] = (x · qweightᵀ) · scales, the
    per-output-channel scale applied after the accumulation, as int8-weight kernels do, and the result within
    fp32 rounding of the exact value (`numerics.int8`). This reference packs the weight on every call; the host
    executor packs it once (`ir.interpret`)."""
    return int8_linear_w8a16(x, qweight, scales)


@linear_w8a16.register_fake
def _linear_w8a16_fake(x, qweight, scales):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)


LINEAR_W8A16 = torch.ops.qeff.linear_w8a16.default
