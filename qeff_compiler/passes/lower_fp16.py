"""`lower-fp16`: emulate AI 100 fp16 numerics (fp16 storage, fp32 accumulation) exactly, in fp32 compute.

fp16 matmuls run at ~1 GFLOP/s on this CPU, so the lowered graph never computes in fp16: it rounds values to fp16
at op boundaries and computes in fp32, which gives the device's results as long as it accumulates in fp32.

- Weights: every floating weight the graph reads is stored as fp16, clipped to ±65504 first (each clipped value
  is reported in the pass's notes); one exact `_to_copy(…, float32)` per weight placeholder feeds the fp32 math.
  `alibi_slopes` stays fp32: it is a compiler constant, not a checkpoint weight, and the slopes are not always
  fp16-exact (`n_heads` > 8 gives odd powers of √2); the scores the bias is added to are rounded anyway.
- Activations: every op producing a floating value is followed by a round trip fp32 → fp16 → fp32, except ops
  that only move or select elements of an already rounded value (view, transpose, gather, embedding, ...).
  layer_norm runs in fp32 and only its output is rounded, as the device keeps its statistics in fp32.
- Fused attention ops get `fp16_activations=True` and round at their internal boundaries (see `ir.ops`).
- KV cache: `past_*` inputs and `*_RetainedState` outputs become fp16 (`kv-cache` run after this pass makes
  them fp16 itself). `logits` stays an fp32 output holding fp16-rounded values: the runtime samples from it.

Before:
    %p_model_transformer_blocks_0_ffn_up_proj_weight = weight 'transformer.blocks.0.ffn.up_proj.weight' : f32[128,32]
    %linear_2 = aten.linear(%layer_norm_1, %p_model_transformer_blocks_0_ffn_up_proj_weight) : f32[1,8,128]
    %gelu = aten.gelu(%linear_2) : f32[1,8,128]
After:
    %p_model_transformer_blocks_0_ffn_up_proj_weight = weight 'transformer.blocks.0.ffn.up_proj.weight' : f16[128,32]
    %_to_copy_default_5 = aten._to_copy(%p_model_transformer_blocks_0_ffn_up_proj_weight, dtype=f32) : f32[128,32]
    ...
    %linear_2 = aten.linear(%_to_copy_default_20, %_to_copy_default_5) : f32[1,8,128]
    %_to_copy_default_21 = aten._to_copy(%linear_2, dtype=f16) : f16[1,8,128]
    %_to_copy_default_22 = aten._to_copy(%_to_copy_default_21, dtype=f32) : f32[1,8,128]
    %gelu = aten.gelu(%_to_copy_default_22) : f32[1,8,128]
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.fx

from qeff_compiler.ir.ops import ATTENTION_KV, is_alibi_slopes, traits
from qeff_compiler.ir.program import BINDING, Program, TensorSpec
from qeff_compiler.ir.weights import Derivation, WeightSpec, WeightStore
from qeff_compiler.passes.base import Forbid, Pass, PassResult, option
from qeff_compiler.passes.fp16_overflow import FP16_MAX, CheckFp16Range
from qeff_compiler.passes.kv_cache import KVCache
from qeff_compiler.passes.registry import register_pass

aten = torch.ops.aten
TO_COPY = aten._to_copy.default
_CACHE_ROLES = frozenset({"past_key", "past_value", "retained_key", "retained_value"})


@dataclasses.dataclass(frozen=True)
class LowerFp16Options:
    check_overflow: bool = option(
        True,
        "run check-fp16-range first (unless the program was checked): fail (Fp16OverflowError, naming layer "
        "and op) if fp32 activations exceed ±65504 on sample inputs",
    )


@register_pass
class LowerFp16(Pass):
    name = "lower-fp16"
    summary = "fp16 weights, KV cache and activations (rounded at op boundaries, computed in fp32 as on AI 100)"
    Options: ClassVar[type] = LowerFp16Options
    requires: ClassVar[frozenset[str]] = frozenset({"attention-patched"})
    ensures: ClassVar[frozenset[str]] = frozenset({"fp16-activations"})
    forbids: ClassVar[tuple[Forbid, ...]] = (
        Forbid(
            ("fp16-activations",),
            "lower-fp16 runs on a program whose activations are fp16 already: the pipeline names lower-fp16 twice",
        ),
    )
    # Largest change of any output (logits and KV caches) vs the fp32 stage, on the verifier's sample inputs
    # (batch 2, seq 8, ctx 32, both pass orders): random tiny MPTs of tests/conftest.py (std-0.2 weights; 2-3
    # layers, 3/4/16 heads, clip_qkv) moved by 2.7e-3 … 1.05e-2; the shipped TINY_MPT by 8.5e-3 … 8.9e-3.
    # fp16 rounds by ≤ 2^-11 relative per op boundary; 5e-2 leaves ~5× margin for other shapes and seeds.
    tolerance = 5e-2

    def tolerance_for(self, program: Program) -> float:
        """On a program whose KV cache is MXINT8 already, rounding keys/values to fp16 can move one across an
        MXINT8 rounding boundary, a whole step of its block (2^-4 for a block max in [4, 8)): the cache's own
        tolerance applies."""
        mxint8 = any(
            n.kwargs.get("kv_cache_format") == "mxint8"
            for n in program.graph.find_nodes(op="call_function", target=ATTENTION_KV)
        )
        return max(self.tolerance, KVCache.mxint8_tolerance) if mxint8 else self.tolerance

    def analyses(self) -> tuple[Pass, ...]:
        return (CheckFp16Range(),) if self.options.check_overflow else ()

    def transform(self, program: Program) -> PassResult:
        weights, notes = _lower_weights(program)
        graph_module = program.copy_graph()
        graph = graph_module.graph
        _upcast_weight_reads(graph, weights)
        _round_activations(graph)
        for node in graph.nodes:
            if traits(node.target).attention:
                node.kwargs = {**node.kwargs, "fp16_activations": True}
        graph_module.recompile()
        lowered = program.evolve(
            graph_module=graph_module,
            weights=weights,
            inputs=_fp16_caches(program.inputs),
            outputs=_fp16_caches(program.outputs),
        )
        return PassResult(lowered, notes)


def _lower_weights(program: Program) -> tuple[WeightStore, tuple[str, ...]]:
    """fp16 copies of the floating weights the graph reads (tied names keep sharing one entry), as recipes over
    the fp32 weights: a streaming store computes each one only when it is written. Also the notes: how many
    weights were converted and which values were clipped."""
    store = program.weights
    tied = {name: group for group in store.tied_groups() for name in group}
    derivations, aliases, done, clipped = [], {}, set(), []
    for name in sorted(set(program.weight_placeholders().values())):
        spec = store[name]
        if name in done or is_alibi_slopes(name) or not spec.dtype.is_floating_point or spec.dtype == torch.float16:
            continue
        derivations.append(
            Derivation((name,), (WeightSpec(spec.shape, torch.float16),), (name,), to_fp16, reads_stored=True)
        )
        group = tied.get(name, [name])
        aliases.update({alias: name for alias in group if alias != name})
        done.update(group)
        if store.has_data and not store.streaming:
            count = _count_beyond_fp16(store.tensor(name))
            clipped += [f"{name}: {count} values beyond ±{FP16_MAX:g} clipped"] if count else []
    elements = sum(store[d.outputs[0]].numel for d in derivations)
    notes = [f"{len(derivations)} weights ({elements:,} values) converted to fp16", *clipped]
    if store.streaming:
        notes.append(f"weights streamed: values beyond ±{FP16_MAX:g} are clipped as they are written, uncounted")
    return store.derive(derivations).tie(aliases), tuple(notes)


#: elements converted at a time: the embedding of a 7B model is 206M values, and a whole-tensor clip would hold
#: another fp32 copy of it
_CHUNK = 1 << 22


def to_fp16(weight: torch.Tensor) -> tuple[torch.Tensor]:
    """The weight (any float dtype: a checkpoint's bf16 as stored) clipped to ±65504 in fp32 (fp16 would make
    larger values inf) and rounded to fp16, a chunk at a time (no fp32 copy of the whole weight)."""
    out = torch.empty(weight.shape, dtype=torch.float16)
    for source, target in zip(_chunks(weight), _chunks(out), strict=True):
        target.copy_(source.float().clamp(-FP16_MAX, FP16_MAX))
    return (out,)


def _count_beyond_fp16(weight: torch.Tensor) -> int:
    """How many values of `weight` fp16 cannot hold (|x| > 65504), counted a chunk at a time."""
    return sum(int((chunk.abs() > FP16_MAX).sum()) for chunk in _chunks(weight))


def _chunks(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensor.reshape(-1).split(_CHUNK) if tensor.numel() else ()


def _upcast_weight_reads(graph: torch.fx.Graph, weights: WeightStore) -> None:
    """Make every fp16 weight placeholder feed the graph through one exact cast to fp32."""
    placeholders = graph.find_nodes(op="placeholder")
    first_op = placeholders[-1].next
    for node in placeholders:
        kind, name = node.meta[BINDING]
        if kind != "weight" or weights[name].dtype != torch.float16:
            continue
        with graph.inserting_before(first_op):
            upcast = graph.call_function(TO_COPY, (node,), {"dtype": torch.float32})
        node.replace_all_uses_with(upcast, delete_user_cb=lambda user, cast=upcast: user is not cast)


def _round_activations(graph: torch.fx.Graph) -> None:
    """Follow every floating-output op (but value-preserving ones and fused ops, which round themselves) by an
    fp32 → fp16 → fp32 round trip, so its consumers see what fp16 storage would hold.

    Output dtypes come from `node.meta["val"]`, which the pass manager re-derives after every pass."""
    for node in list(graph.nodes):
        value = node.meta.get("val")
        if (
            node.op != "call_function"
            or _value_preserving(node.target)
            or traits(node.target).attention
            or not isinstance(value, torch.Tensor)
            or not value.is_floating_point()
        ):
            continue
        with graph.inserting_after(node):
            down = graph.call_function(TO_COPY, (node,), {"dtype": torch.float16})
        with graph.inserting_after(down):
            up = graph.call_function(TO_COPY, (down,), {"dtype": value.dtype})
        for inserted in (down, up):
            inserted.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        node.replace_all_uses_with(up, delete_user_cb=lambda user, cast=down: user is not cast)


def _value_preserving(target: object) -> bool:
    """Whether an op's outputs are elements of its (already fp16-rounded) inputs: rounding again changes nothing."""
    op = traits(target)
    return op.data_moving or op.lookup


def _fp16_caches(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(dataclasses.replace(s, dtype=torch.float16) if s.role in _CACHE_ROLES else s for s in specs)
