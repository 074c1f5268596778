"""MXFP6 weights in ONNX: an ONNX function that decodes packed FP6 codes and E8M0 scales to a float32 weight.

An exported artifact keeps each MXFP6 weight [rows, cols] (blocks of 32 along cols) as two uint8 initializers —
the codes packed four to three bytes by `pack_fp6` ([rows, 3 * ceil(cols / 4)]) and the scale codes
([rows, ceil(cols / 32)]) — and one `qeff::DequantizeMXFP6<E2M3|E3M2>` node (attribute `cols`) that turns them
into the float32 weight, so the file holds ~6.25 bits per parameter and ONNX Runtime still runs it.

The function decodes by table lookup: Gather of the 64 FP6 element values and of the 256 E8M0 scale values (the
tables of `qeff_compiler.numerics.mx`, baked in as constants), then one float32 multiply per element. Both
factors are exact and so is their product, so ONNX Runtime reproduces `dequantize_mx` bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxscript
import torch

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.numerics.mx import BLOCK_SIZE, MXTensor, e8m0_values, element_values, pack_fp6

#: domain of qeff_compiler's ONNX functions (the fused attention functions use it too)
DOMAIN = "qeff"
#: lowest default-domain opset the function body needs (BitwiseAnd/BitwiseOr, Split with num_outputs)
MIN_OPSET = 18
_FP6_FORMATS = ("fp6_e2m3", "fp6_e3m2")
_UINT8 = ir.TensorType(ir.DataType.UINT8)


def dequantize_function_name(fmt: str = "fp6_e2m3") -> str:
    """Name of the ONNX function that decodes MXFP6 format `fmt`: "DequantizeMXFP6E2M3" or "DequantizeMXFP6E3M2"."""
    _check_fp6(fmt)
    return "DequantizeMXFP6" + fmt.removeprefix("fp6_").upper()


def dequantize_mxfp6_function(fmt: str = "fp6_e2m3", opset: int = MIN_OPSET) -> ir.Function:
    """`qeff::DequantizeMXFP6<fmt>(packed uint8 [rows, 3 * ceil(cols / 4)], scales uint8 [rows, n_blocks])
    → float32 [rows, cols]`, with the int attribute `cols`; `opset` is the model's default-domain opset."""
    if opset < MIN_OPSET:
        raise InvalidArgumentError(f"the MXFP6 dequantize function needs opset >= {MIN_OPSET}, got {opset}")
    _check_fp6(fmt)
    values = element_values(fmt)

    def trace(op: onnxscript.OpBuilder, packed: ir.Value, scales: ir.Value) -> ir.Value:
        return _dequantize_body(op, packed, scales, values)

    function = onnxscript.build_function(
        trace,
        [ir.Value(name="packed", type=_UINT8), ir.Value(name="scales", type=_UINT8)],
        domain=DOMAIN,
        name=dequantize_function_name(fmt),
        attributes=[ir.Attr("cols", ir.AttributeType.INT, None)],
        opset_imports={"": opset},
    )
    for node in function:
        node.metadata_props.clear()  # builder notes (name scopes, "type not known" inside the untyped body)
    return function


def dequantize_mxfp6_node(packed: ir.Value, scales: ir.Value, cols: int, fmt: str = "fp6_e2m3") -> ir.Node:
    """A node calling the function of `fmt` on a packed weight's two initializers; its output is the weight."""
    return ir.node(dequantize_function_name(fmt), [packed, scales], attributes={"cols": cols}, domain=DOMAIN)


def pack_mxfp6_weight(q: MXTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two uint8 tensors the function takes for a 2-D MXFP6 weight quantized along its last axis."""
    _check_fp6(q.fmt)
    if len(q.shape) != 2 or q.axis != 1:
        raise InvalidArgumentError(f"a packed MXFP6 weight is 2-D, blocked along axis 1; got {q.shape} axis {q.axis}")
    return pack_fp6(q.codes), q.scales


def dequantize_mxfp6_model(rows: int, cols: int, fmt: str = "fp6_e2m3", opset: int = MIN_OPSET) -> ir.Model:
    """A one-node model `weight = DequantizeMXFP6<fmt>(packed, scales)` for a [rows, cols] weight: the function
    on its own, to check it in ONNX Runtime."""
    packed = ir.Value(name="packed", type=_UINT8, shape=ir.Shape([rows, 3 * -(-cols // 4)]))
    scales = ir.Value(name="scales", type=_UINT8, shape=ir.Shape([rows, -(-cols // BLOCK_SIZE)]))
    node = dequantize_mxfp6_node(packed, scales, cols, fmt)
    weight = node.outputs[0]
    weight.name, weight.type, weight.shape = "weight", ir.TensorType(ir.DataType.FLOAT), ir.Shape([rows, cols])
    graph = ir.Graph(
        [packed, scales], [weight], nodes=[node], opset_imports={"": opset, DOMAIN: 1}, name="dequantize_mxfp6"
    )
    function = dequantize_mxfp6_function(fmt, opset)
    return ir.Model(graph, ir_version=10, functions=[function])


def _dequantize_body(op: onnxscript.OpBuilder, packed: ir.Value, scales: ir.Value, values: np.ndarray) -> ir.Value:
    """Unpack four 6-bit codes from each byte triple (bit order of `pack_fp6`), drop the padding, look up the
    element and scale values and multiply them."""
    cols = op.Constant(value_int=ir.RefAttr("value_int", "cols", ir.AttributeType.INT))
    b0, b1, b2 = op.Split(op.Reshape(packed, [0, -1, 3]), axis=2, num_outputs=3, _outputs=3)
    codes = op.Concat(
        op.BitwiseAnd(b0, 0x3F),
        op.BitwiseOr(op.BitShift(b0, 6, direction="RIGHT"), op.BitShift(op.BitwiseAnd(b1, 0x0F), 2, direction="LEFT")),
        op.BitwiseOr(op.BitShift(b1, 4, direction="RIGHT"), op.BitShift(op.BitwiseAnd(b2, 0x03), 4, direction="LEFT")),
        op.BitShift(b2, 2, direction="RIGHT"),
        axis=2,
    )  # [rows, groups, 4]
    codes = op.Slice(op.Reshape(codes, [0, -1]), [0], op.Reshape(cols, [1]), [1])  # [rows, cols]
    element = op.Gather(_constant(op, values, "element_values"), op.Cast(codes, to=ir.DataType.INT64))
    scale = op.Gather(_constant(op, e8m0_values(), "scale_values"), op.Cast(scales, to=ir.DataType.INT64))
    block_of_column = op.Div(op.Range(0, cols, 1), BLOCK_SIZE)  # integer division
    return op.Mul(element, op.Gather(scale, block_of_column, axis=1))


def _constant(op: onnxscript.OpBuilder, array: np.ndarray, name: str) -> ir.Value:
    return op.Constant(value=ir.tensor(array, name=name))


def _check_fp6(fmt: str) -> None:
    if fmt not in _FP6_FORMATS:
        raise InvalidArgumentError(f"packed MX weights in ONNX are MXFP6 ({', '.join(_FP6_FORMATS)}), not {fmt!r}")


def fake_quantize_mxint8(op: onnxscript.OpBuilder, value: ir.Value) -> ir.Value:
    """`value` rounded through MXINT8 (blocks of 32 along the last axis) and back, in its own type: the ONNX form
    of `fake_quantize_mx(x, "int8", axis=-1)`, bit for bit in ONNX Runtime on finite blocks (a block holding NaN
    or ±Inf becomes all NaN, as there). Built with `op` into the caller's graph or function body (the fused
    attention function quantizes the keys and values it writes to an MXINT8 KV cache with it).

    ONNX has no bitcast, so the shared exponent s = floor(log2(amax)) is estimated with Log/Floor and then
    corrected by one step up or down by comparing amax with the exact power of two; Log may be off near a power
    of two, the comparison is not. The estimate is clipped to [-126, 127] first, so 0 (Log gives -inf) and a
    float32-subnormal amax end at s = -127 after the downward correction, as in `quantize_mx`. The powers of two
    come from the E8M0 tables (Gather), and the element math is `quantize_mx`'s: k = Round(x * 2^-s * 64)
    (half to even) clipped to [-127, 127] and held as int8 (so no -0 survives), value = (k * 2^-6) * 2^s, every
    step exact or rounded once in float32, as in numpy. The last axis is zero-padded to whole blocks (Pad) and
    sliced back. fp16 input is quantized in float32 and cast back once, as `dequantize_mx` does. Needs a
    default-domain opset >= MIN_OPSET (Pad and ReduceMax with axes inputs).
    """
    x = op.Cast(value, to=ir.DataType.FLOAT)
    length = op.Shape(x, start=-1)
    padded = op.Pad(x, op.Concat([0], op.Mod(op.Neg(length), BLOCK_SIZE), axis=0), 0.0, [-1])
    blocks = op.Reshape(padded, op.Concat(op.Shape(padded, end=-1), [-1, BLOCK_SIZE], axis=0))
    not_finite = op.IsNaN(op.ReduceSum(op.Sub(blocks, blocks), [-1], keepdims=1))  # x - x: NaN for NaN and ±Inf
    blocks = op.Where(not_finite, 0.0, blocks)  # no NaN reaches the integer cast; such blocks end as NaN anyway
    amax = op.ReduceMax(op.Abs(blocks), [-1], keepdims=1)
    estimate = op.Clip(op.Floor(op.Mul(op.Log(amax), float(1 / np.log(2)))), -126.0, 127.0)
    code = op.Add(op.Cast(estimate, to=ir.DataType.INT64), 127)  # E8M0 code of 2^estimate, in [1, 254]
    powers = _constant(op, e8m0_values(), "scale_values")
    power = op.Gather(powers, code)
    too_high = op.Cast(op.Less(amax, power), to=ir.DataType.INT64)
    too_low = op.Cast(op.GreaterOrEqual(amax, op.Mul(power, 2.0)), to=ir.DataType.INT64)
    code = op.Add(op.Sub(code, too_high), too_low)
    scale = op.Gather(powers, code)
    inverse = op.Gather(_constant(op, np.reciprocal(e8m0_values()), "inverse_scale_values"), code)
    elements = op.Cast(op.Clip(op.Round(op.Mul(op.Mul(blocks, inverse), 64.0)), -127.0, 127.0), to=ir.DataType.INT8)
    values = op.Mul(op.Mul(op.Cast(elements, to=ir.DataType.FLOAT), 2.0**-6), scale)  # int8 has no -0: neither has this
    dequantized = op.Where(not_finite, op.Constant(value_float=float("nan")), values)  # NaN != NaN: no shared constant
    merged = op.Reshape(dequantized, op.Shape(padded))
    return op.CastLike(op.Slice(merged, [0], length, [-1]), value)
