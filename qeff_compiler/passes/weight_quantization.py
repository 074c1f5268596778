"""`WeightLowering`: the one driver behind `lower-int8`, `lower-mxfp6` and `lower-w8a8`, each of which declares
its scheme (`ir.ops.schemes`: stored parts, encoder, the ops that read them) and little else.

The passes run after `lower-fp16`, where each weight placeholder holds fp16 values and feeds the math through one
`_to_copy(…, f32)`. The driver, in seven steps: (1) copy the graph; (2) select the matmul weight reads (linears,
fused attention) whose weight no `exclude` pattern names; (3) derive each selected weight's stored parts as
recipes in the weight store; (4) add a placeholder per part; (5) replace each bias-free linear by the scheme's
`linear_op(x, *parts)` where it has one; (6) point every other read at `dequantize_op(*parts, ...)`, rounded to
fp16 (the dtype the device decompresses to) where the scheme says, and cast back to fp32 for the consumer;
(7) drop the casts and weights nothing reads any more. Embedding lookups keep the fp16 weight: an input embedding
tied to `lm_head` stays fp16 while the lm_head reads the quantized copy.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx

from qeff_compiler.errors import PassOptionError
from qeff_compiler.ir.graph_utils import add_placeholder, erase_dead_code, weight_name
from qeff_compiler.ir.ops import WeightScheme, traits
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.ir.weights import Derivation, WeightStore
from qeff_compiler.passes.base import Pass, PassResult, option

aten = torch.ops.aten
TO_COPY = aten._to_copy.default


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
        hit = {
            n
            for n in names
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.removesuffix(".weight"), pattern)
        }
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
        op = traits(node.target)
        for index in () if op.lookup else op.weight_operands:
            operand = node.args[index]
            source = operand.args[0] if isinstance(operand, torch.fx.Node) and operand.target == TO_COPY else None
            if isinstance(source, torch.fx.Node):
                name = weight_name(source)
                if name is not None and source.meta["val"].dtype == torch.float16:
                    reads.append(WeightRead(node, index, name))
    return reads


#: a weight's encoder: its fp16 values → one tensor per stored part
Encoder = Callable[[torch.Tensor], Sequence[torch.Tensor]]
#: the selected weights' names per scheme
Names = dict[WeightScheme, list[str]]


def exclude_option() -> Any:
    """The `exclude` option every weight lowering has (mixed precision)."""
    return option("", "'|'-separated glob patterns of weight names kept fp16, e.g. lm_head|*.blocks.0.*")


@dataclasses.dataclass(frozen=True)
class ExcludeOptions:
    exclude: str = exclude_option()


class WeightLowering(Pass):
    """Store the matmul weights a program reads in a quantized scheme (see the module docstring). Subclasses
    declare `schemes` and may refine `scheme_for`, `scheme_options`, `encoders`, `stored_as` and `notes_for`."""

    Options: ClassVar[type] = ExcludeOptions
    requires: ClassVar[frozenset[str]] = frozenset({"fp16-activations"})
    #: the schemes the pass stores weights in, in the order their parts are derived; the first is the default
    schemes: ClassVar[tuple[WeightScheme, ...]]

    def scheme_for(self, read: WeightRead) -> WeightScheme:
        """The first of `schemes` that can hold the weight one read reads: a scheme without a dequantize op only
        serves bias-free linears (its `linear_op` replaces them whole)."""
        return next(s for s in self.schemes if s.dequantize_op is not None or is_plain_linear(read))

    def scheme_options(self) -> dict[str, Any]:
        """Keyword options of the schemes' encoders and `dequantize_args` (e.g. the FP6 element format)."""
        return {}

    def encoders(
        self, program: Program, names: Names, every_read: Sequence[WeightRead]
    ) -> tuple[dict[str, Encoder], list[str]]:
        """Each selected weight's encoder, and notes about how they were made."""
        options = self.scheme_options()
        return {name: functools.partial(s.encode, **options) for s, group in names.items() for name in group}, []

    def stored_as(self, scheme: WeightScheme) -> str:
        """How the notes say weights of `scheme` were stored."""
        return f"stored as {scheme.name}"

    def notes_for(self, program: Program, names: Names) -> list[str]:
        """What a user should know about the lowering (one line per scheme, by default)."""
        return [
            f"{len(group)} weights ({program.weights.distinct_numel(group):,} values) {self.stored_as(scheme)}"
            for scheme, group in names.items()
        ]

    def transform(self, program: Program) -> PassResult:
        graph_module = program.copy_graph()
        graph = graph_module.graph
        every_read = matmul_weight_reads(graph)
        reads = select_reads(self.name, every_read, self.options.exclude)
        schemes = {read: self.scheme_for(read) for read in reads}
        names = {s: sorted({r.name for r in reads if schemes[r] is s}) for s in self.schemes}
        encoders, notes = self.encoders(program, names, every_read)
        derivations = [
            Derivation(s.part_names(name), s.part_specs(program.weights[name].shape), (name,), encoders[name])
            for s, group in names.items()
            for name in group
        ]
        store = program.weights.derive(derivations)
        placeholders = PartPlaceholders(graph, {d.sources[0]: d.outputs for d in derivations})
        fused = [read for read in reads if schemes[read].linear_op is not None and is_plain_linear(read)]
        for read in fused:
            _fuse_linear(graph, read, schemes[read].linear_op, placeholders(read.name))
        others = [read for read in reads if read not in fused]
        options = self.scheme_options()
        shapes = program.weights

        def constant_args(name: str, scheme: WeightScheme) -> tuple[Any, ...]:
            return scheme.dequantize_args(shapes[name].shape[1], **options)

        _rewire_to_dequantized(graph, others, schemes, placeholders, constant_args)
        remove_dead_weights(graph)
        graph_module.recompile()
        lowered = program.evolve(graph_module=graph_module, weights=drop_unread(program, store, graph))
        return PassResult(lowered, (*notes, *self.notes_for(program, names)))


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


def is_plain_linear(read: WeightRead) -> bool:
    """An `aten.linear` without bias (MPT has none), which a scheme's `linear_op` replaces whole."""
    consumer = read.consumer
    bias = consumer.args[2] if len(consumer.args) > 2 else consumer.kwargs.get("bias")
    return consumer.target == aten.linear.default and bias is None


def _fuse_linear(graph: torch.fx.Graph, read: WeightRead, linear_op: Any, parts: Sequence[torch.fx.Node]) -> None:
    """Replace the linear of `read` by `linear_op(x, *parts)`."""
    linear = read.consumer
    with graph.inserting_before(linear):
        replacement = graph.call_function(linear_op, (linear.args[0], *parts))
    replacement.meta["nn_module_stack"] = linear.meta.get("nn_module_stack", {})
    linear.replace_all_uses_with(replacement)
    graph.erase_node(linear)


def _rewire_to_dequantized(
    graph: torch.fx.Graph,
    reads: Sequence[WeightRead],
    schemes: dict[WeightRead, WeightScheme],
    placeholders: PartPlaceholders,
    constant_args: Callable[[str, WeightScheme], tuple[Any, ...]],
) -> None:
    """Point each read at its scheme's `dequantize_op(*parts, *constant_args)`, rounded to fp16 (and upcast
    again) where the scheme says. One chain per weight, shared by its reads, placed after the placeholders."""
    chains: dict[str, torch.fx.Node] = {}
    for read in reads:
        if read.name not in chains:
            scheme, nodes = schemes[read], placeholders(read.name)
            first_op = graph.find_nodes(op="placeholder")[-1].next
            with graph.inserting_before(first_op):
                chain = graph.call_function(scheme.dequantize_op, (*nodes, *constant_args(read.name, scheme)), {})
                if scheme.round_to_fp16:
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


def _placeholder_name(weight: str) -> str:
    return "w_" + "".join(ch if ch.isalnum() else "_" for ch in weight)
