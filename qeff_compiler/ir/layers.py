"""Which transformer block a graph node belongs to: the `LAYER` meta key fused ops carry, or the module path
torch.export recorded (`model.transformer.blocks.{i}.…` in `node.meta["nn_module_stack"]`)."""

from __future__ import annotations

import re

import torch.fx

#: meta key recording which layer a fused attention node belongs to
LAYER = "qeff_layer"
#: a module path inside transformer block i (group 1: i)
_BLOCK_PATH = re.compile(r"(?:^|\.)transformer\.blocks\.(\d+)(?:\.|$)")


def block_index(module_path: str) -> int | None:
    """The block a module path lies in (`transformer.blocks.3.attn` → 3), None outside the blocks."""
    match = _BLOCK_PATH.search(module_path)
    return int(match.group(1)) if match else None


def layer_of(node: torch.fx.Node) -> int | None:
    """The transformer block `node` computes in, None outside the blocks (embedding, final norm, lm_head)."""
    if LAYER in node.meta:
        return node.meta[LAYER]
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        index = block_index(path)
        if index is not None:
            return index
    return None
