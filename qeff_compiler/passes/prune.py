"""`prune`: structured pruning that really shrinks the program — FFN channels and whole attention heads.

Runs on the fp graph after `patch-attention` and before any lowering, so quantizers see the
pruned weights. Every layer loses the same share: `ffn=0.25` removes round(0.25 · 4·d_model) FFN channels of
each layer, `heads=0.25` round(0.25 · n_heads) heads of each layer.
The counts depend on the options alone, so the pipeline string fixes every shape of the pruned program; which
channels and heads go is decided by the weights, which the artifact stores (a pruned model's shapes live in the
Program and its weight store, not in the HF config).

Importance scores, ranked within each layer (the lowest go):
- `score=magnitude`: FFN channel j scores ‖up_proj[j, :]‖₂ · ‖down_proj[:, j]‖₂ (how strongly it can read the
  input times how strongly it writes the output); head h scores ‖V_h‖_F · ‖out_proj[:, h]‖_F, the norms of its
  value rows of Wqkv and its out_proj columns (a head's output is a convex mix of its values, projected).
- `score=activation` (Wanda-style): FFN channel j scores a_j · ‖down_proj[:, j]‖₂, with a_j the largest |GELU
  output| of channel j measured on calibration text (`qc.calibrate`'s table, its `down_proj` input maxima; file
  named by `calibration`). The table holds no statistics inside the fused attention, so heads are ranked by
  magnitude under both scores.

Removing FFN channel j drops row j of up_proj and column j of down_proj; removing head h drops its rows in the
q, k and v blocks of Wqkv, its head_dim columns of out_proj and its ALiBi slope. The fused attention op gets the
layer's kept head count in `n_heads` and its own slopes weight `alibi_slopes.{layer}` (the kept heads' slopes);
softmax_scale and head_dim are unchanged. The result equals the unpruned program with the removed channels' and
heads' output weights zeroed (tested), so the pass's numeric check accepts any change: the accuracy cost is
measured by `qc.evaluate` / `qeffc eval --prune-ffn`. On a config-only (meta) program there is nothing to score:
the first channels and heads are kept, which gives the right shapes (how an artifact's programs are rebuilt
before its saved weights are bound).

Before (shipped model, layer 0; d_model 256, 8 heads):
    %p_..._blocks_0_ffn_up_proj_weight = weight 'transformer.blocks.0.ffn.up_proj.weight' : f32[1024,256]
    %p_..._blocks_0_ffn_down_proj_weight = weight 'transformer.blocks.0.ffn.down_proj.weight' : f32[256,1024]
    %mpt_attention = qeff.mpt_attention(%layer_norm, %p_..._attn_wqkv_weight, %p_..._attn_out_proj_weight,
        %alibi_slopes, n_heads=8, softmax_scale=0.176777, clip_qkv=None) : f32[1,8,256]
    %linear = aten.linear(%layer_norm_1, %p_..._blocks_0_ffn_up_proj_weight) : f32[1,8,1024]
    %gelu = aten.gelu(%linear) : f32[1,8,1024]
    %linear_1 = aten.linear(%gelu, %p_..._blocks_0_ffn_down_proj_weight) : f32[1,8,256]
After `prune{ffn=0.25,heads=0.25}`:
    %p_..._blocks_0_ffn_up_proj_weight = weight 'transformer.blocks.0.ffn.up_proj.weight' : f32[768,256]
    %p_..._blocks_0_ffn_down_proj_weight = weight 'transformer.blocks.0.ffn.down_proj.weight' : f32[256,768]
    %alibi_slopes_0 = weight 'alibi_slopes.0' : f32[6]
    %mpt_attention = qeff.mpt_attention(%layer_norm, %p_..._attn_wqkv_weight, %p_..._attn_out_proj_weight,
        %alibi_slopes_0, n_heads=6, softmax_scale=0.176777, clip_qkv=None) : f32[1,8,256]
    %linear = aten.linear(%layer_norm_1, %p_..._blocks_0_ffn_up_proj_weight) : f32[1,8,768]
    %gelu = aten.gelu(%linear) : f32[1,8,768]
    %linear_1 = aten.linear(%gelu, %p_..._blocks_0_ffn_down_proj_weight) : f32[1,8,256]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.fx

from qeff_compiler.calibration.table import load_calibration
from qeff_compiler.errors import InvalidArgumentError, PassOptionError, VerificationError
from qeff_compiler.ir.graph_utils import add_placeholder, weight_name
from qeff_compiler.ir.layers import LAYER
from qeff_compiler.ir.ops import ALIBI_SLOPES, ATTENTION
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.weights import WeightSpec
from qeff_compiler.passes.base import Forbid, Pass, PassResult, option
from qeff_compiler.passes.registry import register_pass

SCORES = ("magnitude", "activation")


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    ffn: float = option(0.0, "share of each layer's FFN channels removed, 0 <= ffn < 1")
    heads: float = option(0.0, "share of each layer's attention heads removed, 0 <= heads < 1")
    score: str = option("magnitude", "importance score: magnitude (weight norms) | activation (needs calibration)")
    calibration: str | None = option(None, "calibration table file (qc.calibrate) for score=activation")


@register_pass
class Prune(Pass):
    name = "prune"
    summary = "structured pruning: remove the least important FFN channels and attention heads of every layer"
    Options: ClassVar[type] = PruneOptions
    requires: ClassVar[frozenset[str]] = frozenset({"attention-patched"})
    ensures: ClassVar[frozenset[str]] = frozenset({"pruned"})
    forbids: ClassVar[tuple[Forbid, ...]] = (
        # shares are of the config's sizes: a second prune would miscount
        Forbid(
            ("pruned",),
            "prune already ran on this program; give one prune{{ffn=...,heads=...}} with the total shares",
        ),
        Forbid(
            ("fp16-activations", "kv-cache"),
            "prune must run on the fp graph, before lowering and kv-cache; the program has {present}",
        ),
    )

    def tolerance_for(self, program: Program) -> float:
        # Removing channels changes the outputs by design; what must hold instead (equality with the unpruned
        # program whose removed output weights are zeroed) is tested in tests/test_prune.py.
        return math.inf if self.options.ffn or self.options.heads else self.tolerance

    def transform(self, program: Program) -> PassResult | Program:
        self._check_options()
        config = program.config
        ffn_keep = _kept_count(4 * config.d_model, self.options.ffn, "ffn")
        heads_keep = _kept_count(config.n_heads, self.options.heads, "heads")
        if ffn_keep == 4 * config.d_model and heads_keep == config.n_heads:
            return program
        graph_module = program.copy_graph()
        graph = graph_module.graph
        activation = self._activation_maxima() if program.has_weight_data else None
        updates: dict[str, torch.Tensor] = {}
        removed = 0
        for layer in range(config.n_layers):
            up, down = _ffn_weights(graph, layer)
            if ffn_keep < 4 * config.d_model:
                up_w = program.weights.tensor(up) if program.has_weight_data else None
                down_w = program.weights.tensor(down) if program.has_weight_data else None
                kept = _top(ffn_keep, _ffn_scores(up_w, down_w, activation, down), 4 * config.d_model)
                updates[up] = _take(up_w, program.weights[up], 0, kept)
                updates[down] = _take(down_w, program.weights[down], 1, kept)
                removed += (4 * config.d_model - ffn_keep) * 2 * config.d_model
            if heads_keep < config.n_heads:
                removed += self._prune_heads(graph, program, layer, heads_keep, updates)
        weights = program.weights.with_tensors(updates)
        slopes = [n for n in graph.find_nodes(op="placeholder") if weight_name(n) == ALIBI_SLOPES and not n.users]
        for node in slopes:  # every layer reads its own slopes now
            graph.erase_node(node)
            weights = weights.without([ALIBI_SLOPES])
        graph_module.recompile()
        note = (
            f"kept {ffn_keep} of {4 * config.d_model} FFN channels and {heads_keep} of {config.n_heads} heads per "
            f"layer; {removed:,} weights removed"
        )
        return PassResult(program.evolve(graph_module=graph_module, weights=weights), (note,))

    def _check_options(self) -> None:
        if self.options.score not in SCORES:
            raise PassOptionError(f"prune score={self.options.score!r} is not one of {', '.join(SCORES)}")
        if self.options.score == "activation" and self.options.calibration is None and self.options.ffn:
            raise PassOptionError("prune score=activation needs calibration=FILE (a qc.calibrate table)")

    def _activation_maxima(self) -> dict[str, torch.Tensor] | None:
        if self.options.score != "activation" or not self.options.ffn:
            return None
        return load_calibration(Path(self.options.calibration))

    def _prune_heads(
        self, graph: torch.fx.Graph, program: Program, layer: int, keep: int, updates: dict[str, torch.Tensor]
    ) -> int:
        """Shrink layer `layer`'s fused attention to its `keep` best heads; returns the weights removed."""
        config = program.config
        node = _attention_node(graph, layer)
        wqkv, out_proj, slopes = (weight_name(a) for a in node.args[1:4])
        if wqkv is None or out_proj is None or slopes is None:
            raise VerificationError(
                f"prune: layer {layer}'s attention does not read its weights directly: {node.args[1:4]}"
            )
        n_heads, head_dim = config.n_heads, config.d_model // config.n_heads
        data = program.has_weight_data
        wqkv_w = program.weights.tensor(wqkv) if data else None
        out_w = program.weights.tensor(out_proj) if data else None
        kept = _top(keep, _head_scores(wqkv_w, out_w, n_heads, head_dim), n_heads)
        channels = (kept[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        rows = torch.cat([channels + block * n_heads * head_dim for block in range(3)])
        updates[wqkv] = _take(wqkv_w, program.weights[wqkv], 0, rows)
        updates[out_proj] = _take(out_w, program.weights[out_proj], 1, channels)
        own = f"{ALIBI_SLOPES}.{layer}"
        updates[own] = _take(program.weights.tensor(slopes) if data else None, program.weights[slopes], 0, kept)
        node.update_arg(3, add_placeholder(graph, own.replace(".", "_"), ("weight", own)))
        node.update_kwarg("n_heads", keep)
        return (n_heads - keep) * head_dim * 4 * config.d_model


def _kept_count(total: int, share: float, what: str) -> int:
    if not 0.0 <= share < 1.0:
        raise PassOptionError(f"prune {what}={share!r} must be at least 0 and below 1 (the share removed)")
    keep = total - round(share * total)
    if keep < 1:
        raise PassOptionError(f"prune {what}={share} would remove all {total} of each layer's {what}")
    return keep


def _ffn_weights(graph: torch.fx.Graph, layer: int) -> tuple[str, str]:
    """The up and down projection weight names of layer `layer`, checked to be read by bias-free linears."""
    names = (f"transformer.blocks.{layer}.ffn.up_proj.weight", f"transformer.blocks.{layer}.ffn.down_proj.weight")
    readers = {
        weight_name(n.args[1]): n
        for n in graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default)
        if len(n.args) == 2
    }
    missing = [name for name in names if name not in readers]
    if missing:
        raise VerificationError(f"prune: no bias-free linear reads {missing} (is this an MPT FFN?)")
    return names


def _attention_node(graph: torch.fx.Graph, layer: int) -> torch.fx.Node:
    nodes = [n for n in graph.find_nodes(op="call_function", target=ATTENTION) if n.meta.get(LAYER) == layer]
    if len(nodes) != 1:
        raise VerificationError(f"prune: expected one fused attention op for layer {layer}, found {len(nodes)}")
    return nodes[0]


def _ffn_scores(
    up: torch.Tensor | None, down: torch.Tensor | None, maxima: dict[str, torch.Tensor] | None, down_name: str
) -> torch.Tensor | None:
    if up is None or down is None:
        return None
    output_norm = down.float().norm(dim=0)
    if maxima is None:
        return up.float().norm(dim=1) * output_norm
    if down_name not in maxima or maxima[down_name].shape != output_norm.shape:
        found = tuple(maxima[down_name].shape) if down_name in maxima else "nothing"
        raise InvalidArgumentError(
            f"the calibration table has {found} for {down_name}, expected [{output_norm.numel()}] activation maxima"
        )
    return maxima[down_name].float() * output_norm


def _head_scores(
    wqkv: torch.Tensor | None, out_proj: torch.Tensor | None, n_heads: int, head_dim: int
) -> torch.Tensor | None:
    if wqkv is None or out_proj is None:
        return None
    values = wqkv.float()[2 * n_heads * head_dim :].reshape(n_heads, head_dim, -1)
    outputs = out_proj.float().reshape(out_proj.shape[0], n_heads, head_dim)
    return values.flatten(1).norm(dim=1) * outputs.transpose(0, 1).flatten(1).norm(dim=1)


def _top(keep: int, scores: torch.Tensor | None, total: int) -> torch.Tensor:
    """Indices of the `keep` highest scores in ascending index order (ties: the lower index); without scores
    (a meta program) the first `keep`."""
    if scores is None:
        return torch.arange(keep)
    order = torch.argsort(-scores, stable=True)
    return torch.sort(order[:keep]).values


def _take(tensor: torch.Tensor | None, spec: WeightSpec, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`tensor` restricted to `index` along `dim`; for a meta weight an empty tensor of the resulting shape."""
    if tensor is None:
        shape = list(spec.shape)
        shape[dim] = len(index)
        return torch.empty(shape, dtype=spec.dtype, device="meta")
    return tensor.index_select(dim, index).contiguous()
