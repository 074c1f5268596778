"""`patch-attention`: replace each traced MPT attention layer by one fused `qeff::mpt_attention` op.

The nodes of layer i are found by module path (`transformer.blocks.{i}.attn`, recorded by torch.export); the
region's structure is checked (fused QKV linear, optional clamp, chunk, two matmuls, the softmax scale, one
softmax, out_proj linear, exactly one value leaving the region) before it is replaced, and any mismatch fails
with the layer's name. ALiBi slopes become one precomputed constant (weight `alibi_slopes`); the run-time ALiBi
table and causal-mask construction HF's graph builds lose their users and are removed.

Before (one layer, abridged):
    %linear = aten.linear(%layer_norm, %p_model_transformer_blocks_0_attn_wqkv_weight) : f32[1,8,96]
    %chunk = aten.chunk(%linear, 3, 2) : (f32[1,8,32], f32[1,8,32], f32[1,8,32])
    ...
    %matmul = aten.matmul(%transpose, %transpose_3) : f32[1,4,8,8]
    %mul_3 = aten.mul(%matmul, 0.353553) : f32[1,4,8,8]
    %add_2 = aten.add(%mul_3, %slice_1) : f32[1,4,8,8]
    %masked_fill = aten.masked_fill(%add_2, %to_1, -3.40282e+38) : f32[1,4,8,8]
    %softmax = aten.softmax(%to_2, -1) : f32[1,4,8,8]
    ...
    %linear_1 = aten.linear(%view_2, %p_model_transformer_blocks_0_attn_out_proj_weight) : f32[1,8,32]
After:
    %mpt_attention = qeff.mpt_attention(%layer_norm, %p_model_transformer_blocks_0_attn_wqkv_weight,
        %p_model_transformer_blocks_0_attn_out_proj_weight, %alibi_slopes, n_heads=4, softmax_scale=0.353553,
        clip_qkv=None) : f32[1,8,32]
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar, cast

import torch
import torch.fx
from transformers.models.mpt.configuration_mpt import MptAttentionConfig

from qeff_compiler.errors import VerificationError
from qeff_compiler.ir.alibi import alibi_slopes
from qeff_compiler.ir.graph_utils import add_placeholder, erase_dead_code, module_regions, weight_name
from qeff_compiler.ir.layers import LAYER
from qeff_compiler.ir.ops import ALIBI_SLOPES, ATTENTION, traits
from qeff_compiler.ir.program import Program, op_short_name
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.registry import register_pass

aten = torch.ops.aten


class AttentionPatternError(VerificationError):
    """A traced attention layer does not have the structure of HF's MPT attention."""


@register_pass
class PatchAttention(Pass):
    name = "patch-attention"
    summary = "fuse each MPT attention layer (QKV → ALiBi softmax → out_proj) into one fp16-safe qeff op"
    ensures: ClassVar[frozenset[str]] = frozenset({"attention-patched"})
    tolerance = 1e-4  # ALiBi bias is shifted per row (softmax-invariant), which moves fp32 rounding slightly

    def transform(self, program: Program) -> Program:
        graph_module = program.copy_graph()
        graph = graph_module.graph
        config = program.config
        attn = cast(MptAttentionConfig, config.attn_config)  # HF turns a dict into the config class
        regions = module_regions(graph, "MptAttention")
        fused = {i: nodes for i, nodes in regions.items() if any(traits(n.target).attention for n in nodes)}
        to_patch = {i: nodes for i, nodes in regions.items() if i not in fused}
        if len(regions) != config.n_layers:
            raise AttentionPatternError(
                f"patch-attention found attention regions for layers {sorted(regions)}, expected {config.n_layers}"
            )
        if not to_patch:
            return program  # already patched: the pass is idempotent
        weights = program.weights
        if ALIBI_SLOPES not in weights:
            slopes = alibi_slopes(config.n_heads, attn.alibi_bias_max)
            weights = weights.with_tensors({ALIBI_SLOPES: slopes})
        slopes_node = _find_or_add_slopes(graph)
        softmax_scale = attn.softmax_scale or 1 / math.sqrt(config.d_model // config.n_heads)
        for layer, nodes in sorted(to_patch.items()):
            _replace_region(graph, layer, nodes, slopes_node, config.n_heads, softmax_scale, attn.clip_qkv)
        erase_dead_code(graph)
        stray = [n.name for n in graph.nodes if n.target in (aten.softmax.int, aten._softmax.default)]
        if stray:
            raise AttentionPatternError(f"patch-attention left softmax nodes outside the fused op: {stray}")
        graph_module.recompile()
        return program.evolve(graph_module=graph_module, weights=weights)


def _find_or_add_slopes(graph: torch.fx.Graph) -> torch.fx.Node:
    for node in graph.find_nodes(op="placeholder"):
        if weight_name(node) == ALIBI_SLOPES:
            return node
    return add_placeholder(graph, ALIBI_SLOPES, ("weight", ALIBI_SLOPES))


def _replace_region(
    graph: torch.fx.Graph,
    layer: int,
    nodes: list[torch.fx.Node],
    slopes: torch.fx.Node,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
) -> None:
    where = f"transformer.blocks.{layer}.attn"
    counts = Counter(op_short_name(n.target) for n in nodes if n.op == "call_function")
    expected = {
        "aten.linear": 2,
        "aten.chunk": 1,
        "aten.matmul": 2,
        "aten.softmax": 1,
        "aten.clamp": int(bool(clip_qkv)),
    }
    wrong = {op: (counts.get(op, 0), want) for op, want in expected.items() if counts.get(op, 0) != want}
    if wrong:
        found = ", ".join(f"{op}: found {got}, expected {want}" for op, (got, want) in wrong.items())
        raise AttentionPatternError(f"layer {where} does not match the MPT attention pattern ({found})")
    qkv_linear, out_linear = [n for n in nodes if n.target == aten.linear.default]
    _expect_weight(qkv_linear, f"{where}.Wqkv.weight", where)
    _expect_weight(out_linear, f"{where}.out_proj.weight", where)
    _expect_scale(nodes, softmax_scale, where)
    inside = set(nodes)
    leaving = [n for n in nodes if any(user not in inside for user in n.users)]
    if leaving != [out_linear]:
        raise AttentionPatternError(
            f"layer {where}: values {[n.name for n in leaving]} leave the attention region; expected only out_proj"
        )
    with graph.inserting_after(out_linear):
        fused = graph.call_function(
            ATTENTION,
            (qkv_linear.args[0], qkv_linear.args[1], out_linear.args[1], slopes),
            {"n_heads": n_heads, "softmax_scale": softmax_scale, "clip_qkv": clip_qkv},
        )
    fused.meta.update({k: out_linear.meta[k] for k in ("nn_module_stack", "val") if k in out_linear.meta})
    fused.meta[LAYER] = layer
    out_linear.replace_all_uses_with(fused)
    for node in reversed(nodes):
        graph.erase_node(node)


def _expect_weight(linear: torch.fx.Node, expected: str, where: str) -> None:
    if len(linear.args) != 2 or weight_name(linear.args[1]) != expected:
        raise AttentionPatternError(f"layer {where}: a linear reads {linear.args[1:]}, expected bias-free {expected}")


def _expect_scale(nodes: list[torch.fx.Node], softmax_scale: float, where: str) -> None:
    first_matmul = next(n for n in nodes if n.target == aten.matmul.default)
    scales = [u.args[1] for u in first_matmul.users if u.target == aten.mul.Tensor]
    scale = scales[0] if len(scales) == 1 else None
    if not isinstance(scale, float | int) or not math.isclose(scale, softmax_scale, rel_tol=1e-6):
        raise AttentionPatternError(f"layer {where}: QKᵀ is scaled by {scales}, the config implies {softmax_scale:.6g}")
