"""Shard-wise execution of a partitioned program: the numerics run the way the plan splits them, for tests.

`run_sharded` interprets the program node by node. Every op the plan splits by weight runs once per shard: for each
SoC and core, the weight slices are cut from the stored parts by the plan's shard ranges (int8 codes and scales,
packed MXFP6 bytes and E8M0 scales, ...) and dequantized on their own (a slice of packed MXFP6 decodes with its
own column count), so a plan that slices a part inconsistently with its weight computes wrong numbers. Then:
- a matmul adds each shard's partial product into its output rows (`out[rows] += x[cols] @ W[rows, cols]ᵀ`):
  concatenation for row splits, a sum for column splits (the all-reduce);
- attention computes each core's heads from its rows of Wqkv, its slice of the KV cache and of the ALiBi slopes,
  places the heads' context (the all-gather), and out_proj runs per shard like a matmul;
- an embedding lookup takes each id's row from the shard holding it (a table replicated per SoC is looked up on
  SoC 0's shards; every SoC would compute the same);
- every other op (norms, GELU, residual adds, casts) runs whole: each SoC holds the full activations after the
  collectives, and elementwise ops commute with the splits.
Partial sums are added in fp32 and rounded to fp16 once, where the unpartitioned op rounds (the device accumulates
in fp32; the fp16 / MXINT8 precision of partials carried over PCIe is not emulated). Results therefore differ
from `HostExecutor` only by fp32 reduction order (tests/test_partition.py states the measured differences).
Quantized weights are dequantized per shard with the program's own dequantize ops; W8A16 / W8A8 linears run
their own kernels on the sliced codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F

from qeff_compiler.backends.ai100.layouts import LogicalWeight, logical_box, logical_weights, project, reads_table
from qeff_compiler.backends.ai100.plan import Box, PartitionPlan, Shard
from qeff_compiler.errors import ProgramInputError, VerificationError
from qeff_compiler.ir.graph_utils import node_arg, weight_only_nodes
from qeff_compiler.ir.ops import DEQUANTIZE_MXFP6, traits
from qeff_compiler.ir.ops.attention import _attend, _cache_values, _merge_heads, _project_qkv, round_fp16, write_cache
from qeff_compiler.ir.program import BINDING, Program

aten = torch.ops.aten
#: per (SoC, core): the logical boxes of one weight with the consumer's weight operands computed from the slices
Pieces = dict[tuple[int, int | None], list[tuple[Box, dict[int, torch.Tensor]]]]
#: each computed node's value: whatever its op returns (a tensor, a tuple of tensors), as in torch.fx.Interpreter
Env = dict[torch.fx.Node, Any]


def run_sharded(program: Program, plan: PartitionPlan, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `program` on `inputs` shard by shard as `plan` splits it; outputs by output spec name."""
    return ShardedExecutor(program, plan)(inputs)


class ShardedExecutor:
    """`run_sharded` with the weight slices cut and dequantized once, for a generation loop."""

    def __init__(self, program: Program, plan: PartitionPlan) -> None:
        self.program, self.plan = program, plan
        self.weight_only = weight_only_nodes(program.graph)
        self._whole: dict[torch.fx.Node, torch.Tensor] = {}
        self._pieces: dict[tuple[str, int], Pieces] = {}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        expected = {spec.name for spec in self.program.inputs}
        if set(inputs) != expected:
            raise ProgramInputError(f"program inputs are {sorted(expected)}, got {sorted(inputs)}")
        env: Env = {}
        with torch.no_grad():
            for node in self.program.graph.nodes:
                if node.op == "placeholder" and node.meta[BINDING][0] == "input":
                    env[node] = inputs[node.meta[BINDING][1]]
                elif node.op == "call_function" and node not in self.weight_only:
                    env[node] = self._run(node, env)
                elif node.op == "output":
                    results = torch.fx.node.map_arg(node.args[0], lambda n: self._value(n, env))
        return {spec.name: value for spec, value in zip(self.program.outputs, results, strict=True)}

    def _run(self, node: torch.fx.Node, env: Env) -> Any:
        op = traits(node.target)
        if op.linear:
            return self._matmul(node, env)
        if op.attention:
            return self._attention(node, env)
        if reads_table(node.target):
            return self._embedding(node, env)
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: self._value(n, env))
        return _function(node)(*args, **kwargs)

    def _value(self, node: torch.fx.Node, env: Env) -> Any:
        """An activation, or a weight value read whole (norm weights, alibi slopes: one copy per SoC)."""
        return env[node] if node in env else self._whole_weight(node)

    def _whole_weight(self, node: torch.fx.Node) -> torch.Tensor:
        if node not in self._whole:
            if node.op == "placeholder":
                self._whole[node] = self.program.weights.tensor(node.meta[BINDING][1])
            else:
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), self._whole_weight)
                self._whole[node] = _function(node)(*args, **kwargs)
        return self._whole[node]

    # split ops -------------------------------------------------------------------------------------------------

    def _matmul(self, node: torch.fx.Node, env: Env) -> torch.Tensor:
        x = env[node_arg(node, 0)]
        (weight,) = logical_weights(node)
        out = torch.zeros(node.meta["val"].shape, dtype=node.meta["val"].dtype)
        for pieces in self.pieces(node, weight).values():
            for ((r0, r1), (c0, c1)), operands in pieces:
                args = [x[..., c0:c1], *node.args[1:]]
                for index, value in operands.items():
                    args[index] = value
                out[..., r0:r1] += _function(node)(*args, **node.kwargs)
        return out

    def _attention(self, node: torch.fx.Node, env: Env) -> Any:
        stateful = traits(node.target).stateful
        hidden, slopes = env[node_arg(node, 0)], self._value(node_arg(node, 3), env)
        options: Mapping[str, Any] = node.kwargs  # the fused attention op's settings (ir.ops.attention)
        fp16 = options.get("fp16_activations", False)
        wqkv, out_proj = logical_weights(node)
        n_heads = options["n_heads"]
        head_dim = wqkv.shape[0] // 3 // n_heads
        context = torch.zeros(*hidden.shape[:-1], out_proj.shape[1], dtype=hidden.dtype)
        caches = (env[node_arg(node, 5)].clone(), env[node_arg(node, 6)].clone()) if stateful else None
        for pieces in self.pieces(node, wqkv).values():
            boxes = sorted(pieces, key=lambda piece: piece[0])
            h0, h1 = (bound // head_dim for bound in boxes[0][0][0])
            rows = torch.cat([operands[1] for _, operands in boxes])
            query, key, value = _project_qkv(hidden, rows, h1 - h0, options.get("clip_qkv"), fp16)
            heads = slice(h0, h1)
            if caches is not None:  # stateful
                key, value, positions, slots = self._write_cache(node, env, caches, heads, key, value)
            else:
                positions = slots = torch.arange(hidden.shape[1]).expand(hidden.shape[:2])
            attended = _attend(query, key, value, slopes[heads], positions, slots, options["softmax_scale"], fp16)
            context[..., h0 * head_dim : h1 * head_dim] = _merge_heads(attended)
        output = torch.zeros(node.meta["val"][0].shape if stateful else node.meta["val"].shape, dtype=hidden.dtype)
        for pieces in self.pieces(node, out_proj).values():
            for ((r0, r1), (c0, c1)), operands in pieces:
                output[..., r0:r1] += F.linear(context[..., c0:c1], operands[2])
        output = round_fp16(output, fp16)
        return (output, *caches) if caches is not None else output  # caches: None unless stateful

    def _write_cache(
        self,
        node: torch.fx.Node,
        env: Env,
        caches: tuple[torch.Tensor, torch.Tensor],
        heads: slice,
        key: torch.Tensor,
        value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write a core's new keys and values into its heads' slice of the caches; return the keys and values it
        attends over (read back in the activations' dtype) and the query and key positions."""
        positions, fmt = env[node_arg(node, 4)], node.kwargs.get("kv_cache_format")
        if fmt is not None and not isinstance(fmt, str):
            raise TypeError(f"{node.name}: kv_cache_format is {fmt!r}, not a format name")
        index, lengths = node.kwargs.get("batch_index"), node.kwargs.get("comp_ctx_lengths")
        rows = env[index][:, 0] if isinstance(index, torch.fx.Node) else None  # continuous batching: row slots
        context_len = env[lengths].shape[0] if isinstance(lengths, torch.fx.Node) else caches[0].shape[2]  # bucket
        read = []
        for cache, new in zip(caches, (key, value), strict=True):
            cache[:, heads] = write_cache(cache[:, heads], _cache_values(new, cache.dtype, fmt), positions, rows)
            mine = cache[:, heads] if rows is None else cache[rows][:, heads]
            read.append(mine[:, :, :context_len].to(key.dtype))
        batch = positions.shape[0]
        return read[0], read[1], positions, torch.arange(context_len).expand(batch, context_len)

    def _embedding(self, node: torch.fx.Node, env: Env) -> torch.Tensor:
        ids = env[node_arg(node, 1)]
        (table,) = logical_weights(node)
        out = torch.zeros(node.meta["val"].shape, dtype=node.meta["val"].dtype)
        holders = self.plan.replicas.get(table.main.name)
        for (device, _), pieces in self.pieces(node, table).items():
            if holders and device != holders[0]:
                continue
            for ((r0, r1), _), operands in pieces:
                held = (ids >= r0) & (ids < r1)
                rows = F.embedding((ids - r0).clamp(0, r1 - r0 - 1), operands[0])
                out = torch.where(held[..., None], rows, out)
        return out

    # weight slices -----------------------------------------------------------------------------------------------

    def pieces(self, node: torch.fx.Node, weight: LogicalWeight) -> Pieces:
        """The weight's boxes per (SoC, core), read from the plan's shards of its main part, with the consumer's
        weight operands computed from the matching slices of every part (cached: weights do not change)."""
        key = (node.name, weight.operands[0])
        if key not in self._pieces:
            found: Pieces = {}
            for shard in sorted(self.plan.weight_shards(weight.main.name), key=lambda s: (s.device, s.core, s.ranges)):
                box = logical_box(weight.main, shard.ranges, weight.shape)
                found.setdefault((shard.device, shard.core), []).append((box, self._operands(node, weight, shard, box)))
            if not found:
                raise VerificationError(f"{node.name}: the plan has no shard of weight {weight.main.name!r}")
            self._pieces[key] = found
        return self._pieces[key]

    def _operands(self, node: torch.fx.Node, weight: LogicalWeight, main: Shard, box: Box) -> dict[int, torch.Tensor]:
        slices = {part.placeholder: self._slice(part.name, part.layout, main, box, weight) for part in weight.parts}
        cols = box[1][1] - box[1][0]
        return {index: _evaluate(node.args[index], slices, cols) for index in weight.operands}

    def _slice(self, name: str, layout: str, main: Shard, box: Box, weight: LogicalWeight) -> torch.Tensor:
        """The part's values for `box`, cut by the plan's shard of it on the main shard's core (or its SoC)."""
        ranges = project(layout, box, weight.shape)
        for shard in self._shards_at(name, main.device, main.core):
            if shard.ranges == ranges:
                return self._stored[name][tuple(slice(a, b) for a, b in ranges)]
        raise VerificationError(
            f"weight {name!r}: the plan has no shard with ranges {list(ranges)} on SoC {main.device} core {main.core}, "
            f"which {weight.main.name!r}'s shard {list(main.ranges)} needs"
        )

    def _shards_at(self, name: str, device: int, core: int | None) -> list[Shard]:
        return [s for s in self.plan.weight_shards(name) if s.device == device and s.core in (core, None)]

    @cached_property
    def _stored(self) -> dict[str, torch.Tensor]:
        return self.program.weights.materialize(self.program.weight_placeholders().values())


def _evaluate(operand: object, slices: dict[torch.fx.Node, torch.Tensor], cols: int) -> Any:
    """A weight operand recomputed from part slices; a packed-MXFP6 dequantize decodes `cols` columns."""
    if not isinstance(operand, torch.fx.Node):
        return operand
    if operand in slices:
        return slices[operand]
    args, kwargs = torch.fx.node.map_arg((operand.args, operand.kwargs), lambda n: _evaluate(n, slices, cols))
    if operand.target == DEQUANTIZE_MXFP6:
        args = (args[0], args[1], cols, *args[3:])
    return _function(operand)(*args, **kwargs)


def _function(node: torch.fx.Node) -> Callable[..., Any]:
    """The function a call_function node calls (its target); a TypeError (an internal error) for a module or
    method name."""
    if not callable(node.target):
        raise TypeError(f"{node.name}: target {node.target!r} is not a function")
    return node.target
