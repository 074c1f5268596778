"""How the weight-dequantize ops of the quantized precisions appear in ONNX: one `qeff` node per weight, calling an
ONNX function, so the file keeps the quantized codes and scales and ONNX Runtime still runs it.

- `qeff::dequantize_int8` → `qeff::DequantizeInt8(qweight int8 [out, in], scale float [out])`, whose body is the
  standard `DequantizeLinear` with a per-axis scale (axis 0): float(q) · scale, one rounding, as the host op.
- `qeff::dequantize_mxfp6` → `qeff::DequantizeMXFP6E2M3` / `E3M2` of `numerics.mx_onnx` (attribute `cols`),
  which decodes the packed codes exactly, as the host op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import onnx_ir as ir
import onnxscript
import torch
import torch.fx

from qeff_compiler.ir.quant_ops import DEQUANTIZE_INT8, DEQUANTIZE_MXFP6
from qeff_compiler.numerics.mx_onnx import DOMAIN, dequantize_function_name, dequantize_mxfp6_function


class DequantizeCall(NamedTuple):
    """The ONNX function a dequantize node calls, the node's attributes, and how to build the function."""

    function: str
    attributes: dict[str, int]
    build: Callable[[int], ir.Function]


def dequantize_call(node: torch.fx.Node) -> DequantizeCall | None:
    """The ONNX form of `node` if it is a weight-dequantize op, else None."""
    if node.target == DEQUANTIZE_INT8:
        return DequantizeCall("DequantizeInt8", {}, _dequantize_int8_function)
    if node.target == DEQUANTIZE_MXFP6:
        _, _, cols, fmt = node.args
        return DequantizeCall(dequantize_function_name(fmt), {"cols": cols}, lambda opset: dequantize_mxfp6_function(fmt, opset))
    return None


def qeff_weight_node(
    *inputs: torch.Tensor, function: str, attributes: dict[str, int], dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """One `qeff::<function>` node with the given output dtype and shape (those of the op it stands for)."""
    return torch.onnx.ops.symbolic(f"{DOMAIN}::{function}", inputs, attributes, dtype=dtype, shape=shape, version=1)


def _dequantize_int8_function(opset: int) -> ir.Function:
    def trace(op: onnxscript.OpBuilder, qweight: ir.Value, scale: ir.Value) -> ir.Value:
        return op.DequantizeLinear(qweight, scale, axis=0)

    inputs = [ir.Value(name="qweight", type=ir.TensorType(ir.DataType.INT8)), ir.Value(name="scale", type=ir.TensorType(ir.DataType.FLOAT))]
    function = onnxscript.build_function(trace, inputs, domain=DOMAIN, name="DequantizeInt8", opset_imports={"": opset})
    for node in function:
        node.metadata_props.clear()
    return function
