"""Logical weights: a matmul weight [out, in] as its consumer computes with it, and the stored parts that hold it.

Quantized weights. A matmul weight is a logical [out, in] matrix held by stored parts: fp16/fp32 values; int8
codes [out, in] + scales [out]; packed MXFP6 [out, 3·ceil(in/4)] + E8M0 scales [out, ceil(in/32)]; w8a8 codes
[out, in] + scales [out] + smoothing factors [in] + a scalar activation scale. Every part is sliced with its
weight: rows move with their output channel; the columns of packed MXFP6 are cut only at whole 32-element blocks
(24 packed bytes and one scale). FFN channels are dealt in blocks of 32 for an MXFP6 down_proj; where a head
boundary would cut a block (small head_dim), out_proj is split by output channel instead, after an all-gather of
the attention context. A part that does not vary along the split axis (the scales [out] of a column-split weight,
the smoothing factors of a row-split one, the scalar) is one copy per SoC, or per SoC for all its cores.

A part's layout is read from the op that reads it (`ir.ops` traits: `parts`, `weight_operands`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch.fx

from qeff_compiler.backends.ai100.plan import Box, Range
from qeff_compiler.errors import PartitionError
from qeff_compiler.ir.ops import traits
from qeff_compiler.ir.program import BINDING
from qeff_compiler.numerics.mx import BLOCK_SIZE


def reads_matmul_weight(target: object) -> bool:
    """Whether an op reads a matmul weight (or an embedding table) `logical_weights` understands."""
    op = traits(target)
    return bool(op.weight_operands) or (op.linear and bool(op.parts))


def reads_table(target: object) -> bool:
    """Whether an op looks rows up in a weight table (an embedding)."""
    op = traits(target)
    return op.lookup and bool(op.weight_operands)


@dataclass(frozen=True)
class WeightPart:
    """A stored tensor holding (part of) a logical weight, and how it maps onto the logical [out, in] matrix."""

    name: str
    layout: str
    placeholder: torch.fx.Node


@dataclass(frozen=True)
class LogicalWeight:
    """A weight [out, in] as its consumer computes with it; `operands` are the consumer's arguments that read it."""

    shape: tuple[int, int]
    parts: tuple[WeightPart, ...]
    operands: tuple[int, ...]

    @property
    def main(self) -> WeightPart:
        """The part holding the values (plain, codes or packed MXFP6); its shards define the weight's boxes."""
        return next(p for p in self.parts if p.layout in ("matrix", "packed"))

    @property
    def packed(self) -> bool:
        return any(p.layout == "packed" for p in self.parts)


def logical_weights(node: torch.fx.Node) -> tuple[LogicalWeight, ...]:
    """The matmul weights of a linear, fused attention (Wqkv, out_proj) or embedding lookup (the table)."""
    op = traits(node.target)
    if op.linear and op.parts:  # a quantized linear: its weight's parts are operands of their own
        layouts = op.parts
        parts = [
            WeightPart(p.meta[BINDING][1], layout, p)
            for index, layout in layouts.items()
            for p in _weight_placeholders(node.args[index])
        ]
        codes = next(p for p in parts if p.layout == "matrix")
        return (LogicalWeight(tuple(codes.placeholder.meta["val"].shape), tuple(parts), tuple(layouts)),)
    if not op.weight_operands:
        raise PartitionError(f"{node.name}: {node.target} has no matmul weight the partitioner knows")
    return tuple(_chain_weight(node.args[index], index, node) for index in op.weight_operands)


def _chain_weight(operand: object, index: int, consumer: torch.fx.Node) -> LogicalWeight:
    """The weight behind a float operand computed from weights alone (casts and dequantize ops)."""
    if not isinstance(operand, torch.fx.Node):
        raise PartitionError(f"{consumer.name}: operand {index} is not a graph value")
    parts = []
    for placeholder in _weight_placeholders(operand):
        layout: str | None
        if placeholder is operand:
            layout = "matrix"
        else:
            user = next(u for u in placeholder.users if _feeds(u, operand))
            layout = traits(user.target).parts.get(user.args.index(placeholder))
            if layout is None:
                raise PartitionError(
                    f"{consumer.name}: weight {placeholder.meta[BINDING][1]!r} reaches operand {index} through "
                    f"{user.target}, which the partitioner cannot slice"
                )
        parts.append(WeightPart(placeholder.meta[BINDING][1], layout, placeholder))
    return LogicalWeight(tuple(operand.meta["val"].shape), tuple(parts), (index,))


def _weight_placeholders(operand: object) -> list[torch.fx.Node]:
    """The weight placeholders `operand` is computed from, by weight name; it must depend on nothing else."""
    if not isinstance(operand, torch.fx.Node):
        return []
    found: dict[torch.fx.Node, None] = {}
    stack = [operand]
    while stack:
        node = stack.pop()
        if node.op == "placeholder":
            if node.meta[BINDING][0] != "weight":
                raise PartitionError(f"{operand.name} reads input {node.name!r}; a weight operand must not")
            found[node] = None
        else:
            stack.extend(node.all_input_nodes)
    return sorted(found, key=lambda n: n.meta[BINDING][1])


def _feeds(node: torch.fx.Node, target: torch.fx.Node) -> bool:
    """Whether `target` is `node` or computed from it."""
    stack, seen = [target], set()
    while stack:
        current = stack.pop()
        if current is node:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return False


def project(layout: str, box: Box, shape: tuple[int, int]) -> tuple[Range, ...]:
    """The ranges of a stored part (of `layout`) that hold the logical box `box` of a weight of `shape`."""
    rows, (c0, c1) = box
    cols = shape[1]
    if layout in ("packed", "mxscale") and (c0 % BLOCK_SIZE or (c1 % BLOCK_SIZE and c1 != cols)):
        raise PartitionError(f"columns [{c0}, {c1}) of a {cols}-column MXFP6 weight cut a {BLOCK_SIZE}-element block")
    if layout == "packed":
        return rows, (c0 // 4 * 3, 3 * -(-cols // 4) if c1 == cols else c1 // 4 * 3)
    if layout == "mxscale":
        return rows, (c0 // BLOCK_SIZE, -(-c1 // BLOCK_SIZE))
    by_axis = {"matrix": (rows, (c0, c1)), "rows": (rows,), "cols": ((c0, c1),), "scalar": ()}
    return by_axis[layout]


def logical_box(main: WeightPart, ranges: Sequence[Range], shape: tuple[int, int]) -> Box:
    """Inverse of `project` for a main part (plain/codes or packed MXFP6): the logical box a shard holds."""
    rows, (b0, b1) = ranges
    if main.layout == "packed":
        return _row_range(rows), (b0 // 3 * 4, min(b1 // 3 * 4, shape[1]))
    return _row_range(rows), (b0, b1)


def _row_range(rows: Range) -> Range:
    """`rows` as a tuple; it has two items by construction (it is a Range)."""
    return cast(Range, tuple(rows))
