"""Small helpers for reading and editing Program graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from qeff_compiler.ir.layers import block_index
from qeff_compiler.ir.program import BINDING

_ASSERT = torch.ops.aten._assert_tensor_metadata.default


def module_regions(graph: torch.fx.Graph, class_name: str) -> dict[int, list[torch.fx.Node]]:
    """Nodes traced inside each `transformer.blocks.{i}.<module of class_name>`, by layer index, in graph order.

    torch.export records the module call stack of every node in `node.meta["nn_module_stack"]`.
    """
    regions: dict[int, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        for path, cls in node.meta.get("nn_module_stack", {}).values():
            qualified = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
            layer = block_index(path)
            if layer is not None and qualified.rsplit(".", 1)[-1] == class_name:
                regions.setdefault(layer, []).append(node)
                break
    return regions


def node_arg(node: torch.fx.Node, index: int) -> torch.fx.Node:
    """`node.args[index]`, a graph value by the op's schema; a TypeError (an internal error) if it is anything else."""
    arg = node.args[index]
    if not isinstance(arg, torch.fx.Node):
        raise TypeError(f"{node.name}: argument {index} of {node.target} is {arg!r}, not a graph value")
    return arg


def weight_name(node: object) -> str | None:
    """The weight a node reads directly, if it is a weight placeholder."""
    if isinstance(node, torch.fx.Node) and node.op == "placeholder":
        kind, name = node.meta[BINDING]
        return name if kind == "weight" else None
    return None


def weight_only_nodes(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Weight placeholders and the nodes computed from weights alone (casts, dequantizes), in one forward pass:
    values that are the same on every call, which an executor can fold and a device reads as part of a weight."""
    found: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.meta[BINDING][0] == "weight":
                found.add(node)
        elif node.op == "call_function" and node.all_input_nodes and all(n in found for n in node.all_input_nodes):
            found.add(node)
    return found


def add_placeholder(graph: torch.fx.Graph, name: str, binding: tuple[str, str]) -> torch.fx.Node:
    """Append a placeholder after the existing ones, bound to a weight or an input."""
    placeholders = graph.find_nodes(op="placeholder")
    with graph.inserting_after(placeholders[-1]):
        node = graph.placeholder(name)
    node.meta[BINDING] = binding
    return node


def feed_input_to_calls(graph_module: torch.fx.GraphModule, name: str, target: Callable[..., Any]) -> None:
    """Add the program input `name` and pass it as keyword `name` to every call of `target` (an op that gains an
    optional input, e.g. the cached attention's batch_index or comp_ctx_lengths); recompiles."""
    graph = graph_module.graph
    value = add_placeholder(graph, name, ("input", name))
    for node in graph.find_nodes(op="call_function", target=target):
        node.kwargs = {**node.kwargs, name: value}
    graph_module.recompile()


def erase_dead_code(graph: torch.fx.Graph) -> None:
    """Dead-code elimination that also drops export's metadata asserts on otherwise dead values.

    `Graph.eliminate_dead_code` keeps `_assert_tensor_metadata` (it is side-effecting), and the assert keeps
    its input alive; a pass that disconnects a subgraph wants the whole subgraph gone.
    """
    changed = True
    while changed:
        changed = graph.eliminate_dead_code()
        for node in list(graph.nodes):
            if node.op == "call_function" and node.users and all(u.target == _ASSERT for u in node.users):
                for user in list(node.users):
                    graph.erase_node(user)
                changed = True
