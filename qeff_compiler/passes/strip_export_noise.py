"""`strip-export-noise`: remove nodes torch.export leaves behind that compute nothing at inference.

Removed: `aten._assert_tensor_metadata` checks, `aten.to` / `aten._to_copy` casts to the dtype the value already
has, `aten.dropout` in eval mode (train=False) or with p=0, and `aten.alias`. `contiguous` is kept: a following
`view` relies on it.

Before:
    %masked_fill = aten.masked_fill(%add_2, %to_1, -3.40282e+38) : f32[1,4,8,8]
    %_assert_tensor_metadata_default_2 = aten._assert_tensor_metadata(%masked_fill, dtype=f32, ...) : ?
    %to_2 = aten.to(%masked_fill, f32) : f32[1,4,8,8]
    %softmax = aten.softmax(%to_2, -1) : f32[1,4,8,8]
After:
    %masked_fill = aten.masked_fill(%add_2, %to_1, -3.40282e+38) : f32[1,4,8,8]
    %softmax = aten.softmax(%masked_fill, -1) : f32[1,4,8,8]
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.fx

from qeff_compiler.ir.program import Program
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.registry import register_pass

aten = torch.ops.aten

_ASSERTS = (aten._assert_tensor_metadata.default,)
_CASTS = (aten.to.dtype, aten._to_copy.default)
_DROPOUTS = (aten.dropout.default,)
_ALIASES = (aten.alias.default,)


@register_pass
class StripExportNoise(Pass):
    name = "strip-export-noise"
    summary = "remove export-only nodes: metadata asserts, no-op casts, eval dropout, alias"
    ensures: ClassVar[frozenset[str]] = frozenset({"export-noise-free"})
    tolerance = 0.0

    def transform(self, program: Program) -> Program:
        graph_module = program.copy_graph()
        for node in list(graph_module.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in _ASSERTS:
                graph_module.graph.erase_node(node)
            elif _is_identity(node):
                node.replace_all_uses_with(node.args[0])
                graph_module.graph.erase_node(node)
        graph_module.recompile()
        return program.evolve(graph_module=graph_module)


def _is_identity(node: torch.fx.Node) -> bool:
    """True for a node whose result is exactly its first argument's value."""
    if node.target in _ALIASES:
        return True
    if node.target in _DROPOUTS:
        _, probability, train = node.args
        return bool(not train or probability == 0)
    if node.target in _CASTS:
        return _is_noop_cast(node)
    return False


def _is_noop_cast(node: torch.fx.Node) -> bool:
    source = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    if not isinstance(source, torch.Tensor):
        return False
    if node.target == aten.to.dtype:
        target_dtype = node.args[1]
        extra = {k: v for k, v in node.kwargs.items() if k not in ("non_blocking",)}
        return target_dtype == source.dtype and not extra and len(node.args) == 2
    allowed = {"dtype", "layout", "device"}
    if set(node.kwargs) - allowed or len(node.args) != 1:
        return False
    return node.kwargs.get("dtype", source.dtype) == source.dtype and "device" not in node.kwargs
