"""What the compiler knows about an operator, stated once, next to the operator: its traits.

Passes and backends ask an op (`traits(node.target)`) instead of keeping their own lists of targets, as MLIR ops
carry traits and torch ops carry tags. Registering the custom ops (`qeff::…`) and the ATen ops the compiler
reasons about happens on import of `qeff_compiler.ir.ops`; an op nobody registered has `NO_TRAITS`.

Stored parts. A weight the compiler quantizes is held as several stored tensors ("parts") that an op reads: codes,
scales, smoothing factors. `parts` maps an operand index to the part's *layout*: how the part's axes follow the
logical [out, in] weight, so a partitioner can slice every part with its weight (see `PART_AXES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from qeff_compiler.numerics.mx_onnx import DOMAIN

if TYPE_CHECKING:
    from qeff_compiler.ir.ops.schemes import WeightScheme

#: namespace of the compiler's torch.library ops, and the ONNX domain of the functions that define them (stated
#: once, where the MX ONNX functions, the lowest layer that needs it, are built)
NAMESPACE = DOMAIN

#: logical axes (0 rows = output channels, 1 cols = input channels) a stored part varies along, per layout:
#: "matrix" [out, in] values or codes; "packed" MXFP6 codes [out, 3·ceil(in/4)]; "mxscale" E8M0 scales
#: [out, ceil(in/32)]; "rows" per-output-channel [out]; "cols" per-input-channel [in]; "scalar" one value
PART_AXES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"matrix": (0, 1), "packed": (0, 1), "mxscale": (0, 1), "rows": (0,), "cols": (1,), "scalar": ()}
)


@dataclass(frozen=True)
class OpTraits:
    """The facts about one op target that passes and backends act on (all default to "no")."""

    #: computes a linear layer, activation first: y = x · Wᵀ with W held by the other operands
    linear: bool = False
    #: only moves, views or selects elements of its input: no arithmetic, output values are input values
    data_moving: bool = False
    #: a dtype conversion (exact upwards; rounds downwards)
    cast: bool = False
    #: reads rows of a table at indices (an embedding): values preserved, but real memory traffic
    lookup: bool = False
    #: one fused attention layer (QKV projection, ALiBi softmax, output projection)
    attention: bool = False
    #: attention over a static KV cache (operands 5, 6 are the past keys and values)
    stateful: bool = False
    #: operands that are a float matmul weight (or an embedding's table), each [out, in]
    weight_operands: tuple[int, ...] = ()
    #: operand index → layout of the stored weight part read there (quantized linears, dequantize ops, casts)
    parts: Mapping[int, str] = field(default_factory=dict)
    #: rebuilds a float weight from stored parts alone (a weight dequantize)
    dequantize: bool = False
    #: the weight is decompressed on the vector unit (MXFP6 → fp16) each time it is read
    vector_decompress: bool = False
    #: elementwise over one activation operand (a channel split passes through it unchanged)
    elementwise: bool = False
    #: the tensor unit's datatype: "fp16", or "int8" for int8 × int8 products
    compute: str = "fp16"
    #: the quantization scheme whose parts the op reads (`ir.ops.schemes`)
    scheme: WeightScheme | None = None
    #: node → (name, int attributes) of the ONNX function (domain `NAMESPACE`) a custom op becomes in a file
    onnx_call: Callable[[Any], tuple[str, dict[str, int]]] | None = None


NO_TRAITS = OpTraits()
_TRAITS: dict[object, OpTraits] = {}


def register_traits(target: object, op_traits: OpTraits) -> None:
    """State the traits of `target` (an OpOverload or a Python callable such as `operator.getitem`)."""
    if target in _TRAITS and _TRAITS[target] != op_traits:
        raise ValueError(f"op {target} already has different traits registered")
    _TRAITS[target] = op_traits


def traits(target: object) -> OpTraits:
    """The registered traits of an op target; `NO_TRAITS` for any other op."""
    return _TRAITS.get(target, NO_TRAITS)


def targets_with(**wanted: object) -> frozenset[object]:
    """Every registered target whose traits have the given values, e.g. `targets_with(linear=True)`."""
    return frozenset(t for t, found in _TRAITS.items() if all(getattr(found, k) == v for k, v in wanted.items()))
