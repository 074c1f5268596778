"""What the weight-quantizing passes (`lower-int8`, `lower-mxfp6`, `lower-w8a8`) share: finding the matmul weights
a program reads, selecting them by name pattern (mixed precision), and re-wiring a consumer to a dequantized weight.

The passes run after `lower-fp16`, where each weight placeholder holds fp16 values and feeds the math through one
`_to_copy(…, f32)`. A quantized weight replaces that read by `dequantize(codes, scales)` rounded to fp16 (the
dtype the device decompresses weights to) and cast back to fp32 for the consumer. Embedding lookups keep the fp16
weight: an input embedding tied to `lm_head` stays fp16 while the lm_head reads the quantized copy.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx

from qeff_compiler.errors import PassOptionError
from qeff_compiler.ir.graph_utils import add_placeholder, erase_dead_code, weight_name
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.ir.quant_ops import DEQUANTIZE_INT8
from qeff_compiler.ir.weights import Derivation, WeightSpec, WeightStore
from qeff_compiler.numerics.int8 import quantize_weight_per_channel
from qeff_compiler.passes.patch_attention import ATTENTION, ATTENTION_KV

aten = torch.ops.aten
TO_COPY = aten._to_copy.default
#: consumers whose weight operands are quantized, and the positions of those operands
MATMUL_WEIGHT_ARGS: dict[object, tuple[int, ...]] = {
    aten.linear.default: (1,),
    ATTENTION: (1, 2),  # Wqkv, out_proj
    ATTENTION_KV: (1, 2),
}


@dataclass(frozen=True)
class WeightRead:
    """One matmul operand that reads a weight: `consumer.args[index]` is the fp32 upcast of weight `name`."""

    consumer: torch.fx.Node
    index: int
    name: str


def select_reads(pass_name: str, reads: Sequence[WeightRead], exclude: str) -> list[WeightRead]:
    """The reads whose weight matches none of the `|`-separated glob patterns of an `exclude` option (commas
    separate options in pipeline strings). A pattern matches a weight name (`lm_head.weight`,
    `transformer.blocks.0.ffn.up_proj.weight`) with or without its `.weight` suffix; one that matches no
    quantizable weight is an error, as it is most likely a typo."""
    names = sorted({read.name for read in reads})
    selected = list(reads)
    for pattern in filter(None, exclude.split("|")):
        hit = {n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.removesuffix(".weight"), pattern)}
        if not hit:
            raise PassOptionError(
                f"{pass_name}: exclude pattern {pattern!r} matches none of the quantizable weights "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            )
        selected = [read for read in selected if read.name not in hit]
    return selected


def matmul_weight_reads(graph: torch.fx.Graph) -> list[WeightRead]:
    """Every fp16 weight a matmul reads through an fp32 upcast, in graph order."""
    reads = []
    for node in graph.nodes:
        for index in MATMUL_WEIGHT_ARGS.get(node.target, ()):
            operand = node.args[index]
            if isinstance(operand, torch.fx.Node) and operand.target == TO_COPY:
                name = weight_name(operand.args[0])
                if name is not None and operand.args[0].meta["val"].dtype == torch.float16:
                    reads.append(WeightRead(node, index, name))
    return reads


class PartPlaceholders:
    """The placeholders of each quantized weight's parts (codes, scales, ...), created on first use, after the
    existing placeholders; `parts[name]` names the weights holding weight `name` quantized."""

    def __init__(self, graph: torch.fx.Graph, parts: dict[str, Sequence[str]]) -> None:
        self.graph, self.parts = graph, parts
        self._nodes: dict[str, list[torch.fx.Node]] = {}

    def __call__(self, name: str) -> list[torch.fx.Node]:
        if name not in self._nodes:
            self._nodes[name] = [
                add_placeholder(self.graph, _placeholder_name(part), ("weight", part)) for part in self.parts[name]
            ]
        return self._nodes[name]


def rewire_to_dequantized(
    graph: torch.fx.Graph,
    reads: Sequence[WeightRead],
    placeholders: PartPlaceholders,
    dequantize: Callable[[str, Sequence[torch.fx.Node]], tuple[object, tuple, dict]],
    *,
    round_to_fp16: bool,
) -> None:
    """Point each read at `dequantize(name, part placeholders)`, optionally rounded to fp16 (and upcast again).

    `dequantize` returns the (target, args, kwargs) of the node that rebuilds the weight in fp32. One chain per
    weight, shared by its reads.
    """
    chains: dict[str, torch.fx.Node] = {}
    for read in reads:
        if read.name not in chains:
            nodes = placeholders(read.name)
            first_op = graph.find_nodes(op="placeholder")[-1].next
            with graph.inserting_before(first_op):
                target, args, kwargs = dequantize(read.name, nodes)
                chain = graph.call_function(target, args, kwargs)
                if round_to_fp16:
                    chain = graph.call_function(TO_COPY, (chain,), {"dtype": torch.float16})
                    chain = graph.call_function(TO_COPY, (chain,), {"dtype": torch.float32})
            chains[read.name] = chain
        read.consumer.update_arg(read.index, chains[read.name])


def remove_dead_weights(graph: torch.fx.Graph) -> None:
    """Erase what the rewrites left unused: the fp32 upcasts of replaced weights and their placeholders."""
    erase_dead_code(graph)
    for node in graph.find_nodes(op="placeholder"):
        if not node.users and node.meta[BINDING][0] == "weight":
            graph.erase_node(node)


def drop_unread(program: Program, store: WeightStore, graph: torch.fx.Graph) -> WeightStore:
    """`store` without the weights the program read before and `graph` no longer reads (replaced by quantized parts)."""
    read_now = {n.meta[BINDING][1] for n in graph.find_nodes(op="placeholder") if n.meta[BINDING][0] == "weight"}
    return store.without(set(program.weight_placeholders().values()) - read_now)


# int8 weights (lower-int8, and the fused-attention weights of lower-w8a8) -----------------------------------


def is_plain_linear(read: WeightRead) -> bool:
    """An `aten.linear` without bias (MPT has none), which `linear_w8a16` replaces whole."""
    consumer = read.consumer
    bias = consumer.args[2] if len(consumer.args) > 2 else consumer.kwargs.get("bias")
    return consumer.target == aten.linear.default and bias is None


def int8_derivation(program: Program, name: str) -> Derivation:
    """Weight `name` as int8 codes `<name>.int8` [out, in] and fp32 scales `<name>.scale` [out], as a recipe."""
    rows, cols = program.weights[name].shape
    specs = (WeightSpec((rows, cols), torch.int8), WeightSpec((rows,), torch.float32))
    return Derivation((f"{name}.int8", f"{name}.scale"), specs, (name,), quantize_weight_per_channel)


def dequantize_int8_call(name: str, parts: Sequence[torch.fx.Node]) -> tuple[object, tuple, dict]:
    """The `rewire_to_dequantized` node of an int8 weight: codes · scales in fp32."""
    codes, scales = parts
    return DEQUANTIZE_INT8, (codes, scales), {}


def _placeholder_name(weight: str) -> str:
    return "w_" + "".join(ch if ch.isalnum() else "_" for ch in weight)
