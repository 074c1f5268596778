"""Weight quantization schemes: one declaration per stored format, read by the lowering passes and the backends.

A scheme says how a float matmul weight W [out, in] is stored (its parts: store-name suffix, layout, dtype), how
it is encoded, and which ops read the parts: a `linear_op` that replaces a whole bias-free linear (`op(x, *parts)`),
and/or a `dequantize_op` that rebuilds the float weight for any other reader (`op(*parts, *dequantize_args)`).
Declaring a scheme registers those ops' traits (part layouts, the tensor unit's datatype, vector-unit
decompression, the ONNX function each becomes), so the partitioner, the cost model, the precision report and the
ONNX emit need no per-format table. The graph rewrite that applies a scheme is `passes.weight_lowering`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from qeff_compiler.ir.ops.quant import DEQUANTIZE_INT8, DEQUANTIZE_MXFP6, LINEAR_W8A8, LINEAR_W8A16
from qeff_compiler.ir.ops.traits import OpTraits, register_traits, traits
from qeff_compiler.ir.weights import WeightSpec
from qeff_compiler.numerics.int8 import quantize_weight_per_channel, w8a8_parts
from qeff_compiler.numerics.mx import BLOCK_SIZE, quantize_mx
from qeff_compiler.numerics.mx_onnx import dequantize_function_name, pack_mxfp6_weight

#: an ONNX function call: (function name, int attributes)
OnnxCall = tuple[str, dict[str, int]]


@dataclass(frozen=True)
class Part:
    """One stored tensor of a quantized weight `<name>.<suffix>`."""

    suffix: str
    layout: str
    dtype: torch.dtype


def part_shape(layout: str, rows: int, cols: int) -> tuple[int, ...]:
    """The shape of a part of `layout` for a logical weight [rows, cols] (see `traits.PART_AXES`)."""
    shapes = {
        "matrix": (rows, cols),
        "packed": (rows, 3 * -(-cols // 4)),
        "mxscale": (rows, -(-cols // BLOCK_SIZE)),
        "rows": (rows,),
        "cols": (cols,),
        "scalar": (),
    }
    return shapes[layout]


@dataclass(frozen=True)
class WeightScheme:
    """How one quantized weight format is stored and read (see the module docstring)."""

    #: the precision a weight stored this way is reported as (`label` refines it per node)
    name: str
    parts: tuple[Part, ...]
    #: default encoder: weight [out, in] → one tensor per part, in order; options come as keywords
    encode: Callable[..., tuple[torch.Tensor, ...]]
    linear_op: Any = None
    dequantize_op: Any = None
    #: the dequantized weight is rounded to fp16 (the dtype the device decompresses to) before it is read
    round_to_fp16: bool = False
    #: the constant operands `dequantize_op` takes after the parts, from the weight's columns and the options
    dequantize_args: Callable[..., tuple[object, ...]] = lambda cols, **options: ()
    #: the precision a node of this scheme stores its weight in (e.g. "mxfp6-e2m3"); default `name`
    label: Callable[[torch.fx.Node], str] | None = None

    @property
    def values_part(self) -> Part:
        """The part holding the weight's values (codes or packed elements), as opposed to scales and factors."""
        return next(part for part in self.parts if part.layout in ("matrix", "packed"))

    def part_names(self, weight: str) -> tuple[str, ...]:
        return tuple(f"{weight}.{part.suffix}" for part in self.parts)

    def part_specs(self, shape: tuple[int, ...]) -> tuple[WeightSpec, ...]:
        rows, cols = shape
        return tuple(WeightSpec(part_shape(part.layout, rows, cols), part.dtype) for part in self.parts)


def register_scheme(
    scheme: WeightScheme,
    onnx: dict[object, Callable[[torch.fx.Node], OnnxCall]],
    *,
    compute: str = "fp16",
    vector_decompress: bool = False,
) -> WeightScheme:
    """State the traits of the scheme's ops: where each reads which part, and the ONNX function it becomes."""
    layouts = {index: part.layout for index, part in enumerate(scheme.parts)}
    if scheme.linear_op is not None:
        register_traits(
            scheme.linear_op,
            OpTraits(
                linear=True,
                parts={index + 1: layout for index, layout in layouts.items()},
                compute=compute,
                scheme=scheme,
                onnx_call=onnx[scheme.linear_op],
            ),
        )
    if scheme.dequantize_op is not None:
        register_traits(
            scheme.dequantize_op,
            OpTraits(
                dequantize=True,
                parts=layouts,
                vector_decompress=vector_decompress,
                scheme=scheme,
                onnx_call=onnx[scheme.dequantize_op],
            ),
        )
    return scheme


def scheme_label(node: torch.fx.Node) -> str | None:
    """The stored precision of the weight a quantized op reads ("int8", "w8a8", "mxfp6-e2m3"); None otherwise."""
    scheme = traits(node.target).scheme
    if scheme is None:
        return None
    return scheme.label(node) if scheme.label is not None else scheme.name


def _mxfp6_function(node: torch.fx.Node) -> OnnxCall:
    _, _, cols, fmt = node.args
    assert isinstance(cols, int), f"{node.name}: cols {cols!r} is not an int"
    return dequantize_function_name(str(fmt)), {"cols": cols}


def _encode_mxfp6(weight: torch.Tensor, *, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed codes and scale codes of a weight, encoded along its rows (the reduction axis)."""
    return pack_mxfp6_weight(quantize_mx(weight, fmt, axis=-1))


INT8 = register_scheme(
    WeightScheme(
        name="int8",
        parts=(Part("int8", "matrix", torch.int8), Part("scale", "rows", torch.float32)),
        encode=quantize_weight_per_channel,
        linear_op=LINEAR_W8A16,
        dequantize_op=DEQUANTIZE_INT8,
    ),
    {LINEAR_W8A16: lambda node: ("LinearW8A16", {}), DEQUANTIZE_INT8: lambda node: ("DequantizeInt8", {})},
)
#: the MXFP6 element formats by short name (`lower-mxfp6`'s `format`) → `numerics.mx` format name
MXFP6_ELEMENT_FORMATS = {"e2m3": "fp6_e2m3", "e3m2": "fp6_e3m2"}
MXFP6 = register_scheme(
    WeightScheme(
        name="mxfp6",
        parts=(Part("mxfp6", "packed", torch.uint8), Part("mxscale", "mxscale", torch.uint8)),
        encode=_encode_mxfp6,
        dequantize_op=DEQUANTIZE_MXFP6,
        round_to_fp16=True,
        dequantize_args=lambda cols, *, fmt: (cols, fmt),
        label=lambda node: "mx" + str(node.args[3]).replace("_", "-"),  # fp6_e2m3 → mxfp6-e2m3
    ),
    {DEQUANTIZE_MXFP6: _mxfp6_function},
    vector_decompress=True,
)
W8A8 = register_scheme(
    WeightScheme(
        name="w8a8",
        parts=(
            Part("smooth", "cols", torch.float32),
            Part("act_scale", "scalar", torch.float32),
            Part("w8a8", "matrix", torch.int8),
            Part("w8a8_scale", "rows", torch.float32),
        ),
        encode=w8a8_parts,
        linear_op=LINEAR_W8A8,
    ),
    {LINEAR_W8A8: lambda node: ("LinearW8A8", {})},
    compute="int8",
)
#: every scheme, the most compressed first
SCHEMES = (MXFP6, W8A8, INT8)
