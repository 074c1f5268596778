"""How the quantized ops of the quantized precisions (weight dequantizes, the W8A8 linear) appear in ONNX: one `qeff`
node per op, calling an ONNX function, so the file keeps the quantized codes and scales and ONNX Runtime runs it.

- `qeff::dequantize_int8` → `qeff::DequantizeInt8(qweight int8 [out, in], scale float [out])`, whose body is the
  standard `DequantizeLinear` with a per-axis scale (axis 0): float(q) · scale, one rounding, as the host op.
- `qeff::dequantize_mxfp6` → `qeff::DequantizeMXFP6E2M3` / `E3M2` of `numerics.mx_onnx` (attribute `cols`),
  which decodes the packed codes exactly, as the host op.
- `qeff::linear_w8a16` → `qeff::LinearW8A16(x, qweight, scale)`: MatMul of x with the int8 codes cast to float
  (exact), then the per-output-channel scale; equal to the host op up to fp32 summation order.
- `qeff::linear_w8a8` → `qeff::LinearW8A8(x, smooth, act_scale, qweight, w_scale)`, a whole W8A8 linear (it
  reads the activation, so it is not folded like the weight dequantizes): Div in fp32, the quantizing division
  in fp64 with Round (half to even) and Clip to ±127, `MatMulInteger` int8 · int8 → int32 (exact; ONNX Runtime's
  CPU kernel was checked on the K = 4096, all-±127 worst case), the scaling in fp64 and one Cast to fp32 — the
  host op's roundings, one for one. `DequantizeCall` and `dequantize_call` cover it as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import onnx_ir as ir
import onnxscript
import torch
import torch.fx

from qeff_compiler.ir.ops import MXFP6_ELEMENT_FORMATS, NAMESPACE as DOMAIN, traits
from qeff_compiler.numerics.int8 import QMAX
from qeff_compiler.numerics.mx_onnx import dequantize_function_name, dequantize_mxfp6_function


class DequantizeCall(NamedTuple):
    """The ONNX function a dequantize node calls, the node's attributes, and how to build the function."""

    function: str
    attributes: dict[str, int]
    build: Callable[[int], ir.Function]


def dequantize_call(node: torch.fx.Node) -> DequantizeCall | None:
    """The ONNX form of `node` if it is an op of a quantization scheme (its traits name the function), else None."""
    onnx_call = traits(node.target).onnx_call
    if onnx_call is None:
        return None
    function, attributes = onnx_call(node)
    return DequantizeCall(function, attributes, _BUILDERS[function])


def qeff_weight_node(
    *inputs: torch.Tensor, function: str, attributes: dict[str, int], dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """One `qeff::<function>` node with the given output dtype and shape (those of the op it stands for)."""
    # a copy typed as torch's `attrs` dict (invariant in its value type, so a dict[str, int] does not pass)
    attrs: dict[str, int | float | str | bool | Sequence[int] | Sequence[float] | Sequence[str] | Sequence[bool]]
    attrs = dict(attributes)
    return torch.onnx.ops.symbolic(f"{DOMAIN}::{function}", inputs, attrs, dtype=dtype, shape=shape, version=1)


def _function(name: str, inputs: dict[str, ir.DataType], trace: Callable[..., ir.Value], opset: int) -> ir.Function:
    """An ONNX function `qeff::<name>` with typed inputs, traced from `trace(op, *inputs)`."""
    values = [ir.Value(name=input_name, type=ir.TensorType(dtype)) for input_name, dtype in inputs.items()]
    function = onnxscript.build_function(trace, values, domain=DOMAIN, name=name, opset_imports={"": opset})
    for node in function:
        node.metadata_props.clear()  # builder notes (name scopes, "type not known" inside the untyped body)
    return function


def _dequantize_int8_function(opset: int) -> ir.Function:
    def trace(op: onnxscript.OpBuilder, qweight: ir.Value, scale: ir.Value) -> ir.Value:
        return op.DequantizeLinear(qweight, scale, axis=0)

    return _function("DequantizeInt8", {"qweight": ir.DataType.INT8, "scale": ir.DataType.FLOAT}, trace, opset)


def _linear_w8a16_function(opset: int) -> ir.Function:
    """(x · float(q)ᵀ) · scale: the fp32 sum of exact products, scaled after it, as `linear_w8a16`."""

    def trace(op: onnxscript.OpBuilder, x: ir.Value, qweight: ir.Value, scale: ir.Value) -> ir.Value:
        weight = op.Transpose(op.Cast(qweight, to=ir.DataType.FLOAT), perm=[1, 0])
        return op.Mul(op.MatMul(x, weight), scale)

    inputs = {"x": ir.DataType.FLOAT, "qweight": ir.DataType.INT8, "scale": ir.DataType.FLOAT}
    return _function("LinearW8A16", inputs, trace, opset)


def _linear_w8a8_function(opset: int) -> ir.Function:
    def trace(
        op: onnxscript.OpBuilder,
        x: ir.Value,
        smooth: ir.Value,
        act_scale: ir.Value,
        qweight: ir.Value,
        w_scale: ir.Value,
    ) -> ir.Value:
        scale = op.Cast(act_scale, to=ir.DataType.DOUBLE)
        quotient = op.Div(op.Cast(op.Div(x, smooth), to=ir.DataType.DOUBLE), scale)
        codes = op.Cast(op.Clip(op.Round(quotient), float(-QMAX), float(QMAX)), to=ir.DataType.INT8)
        acc = op.MatMulInteger(codes, op.Transpose(qweight, perm=[1, 0]))
        # via INT64 (exact): ONNX Runtime fuses MatMulInteger → Cast → Mul into its MatMulIntegerToFloat, which
        # computes the scaling in fp32 and rejects this graph's fp64 one
        acc = op.Cast(op.Cast(acc, to=ir.DataType.INT64), to=ir.DataType.DOUBLE)
        scaled = op.Mul(acc, op.Mul(op.Cast(w_scale, to=ir.DataType.DOUBLE), scale))
        return op.Cast(scaled, to=ir.DataType.FLOAT)

    floats = dict.fromkeys(("x", "smooth", "act_scale"), ir.DataType.FLOAT)
    return _function("LinearW8A8", {**floats, "qweight": ir.DataType.INT8, "w_scale": ir.DataType.FLOAT}, trace, opset)


#: the body of each function a scheme's op becomes, by function name (`ir.ops.schemes` names them)
_BUILDERS: dict[str, Callable[[int], ir.Function]] = {
    "DequantizeInt8": _dequantize_int8_function,
    "LinearW8A16": _linear_w8a16_function,
    "LinearW8A8": _linear_w8a8_function,
    **{
        dequantize_function_name(fmt): functools.partial(dequantize_mxfp6_function, fmt)
        for fmt in MXFP6_ELEMENT_FORMATS.values()
    },
}
