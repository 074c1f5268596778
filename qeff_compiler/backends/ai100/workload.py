"""The work of one program step, op by op: what the partitioner splits and the cost model times.

Read from the graph alone (shapes from `node.meta["val"]`, weight sizes from the weight store's specs), so it works
on config-only (meta) programs at 7B/30B scale. Only ops the device spends time on are listed:

- matmul ops (`aten.linear`, `qeff::linear_w8a16`, `qeff::linear_w8a8`): tensor-unit FLOPs, and the weight bytes
  as stored (fp16, int8 codes + scales, packed MXFP6 + scales), traced back through the casts and dequantize ops
  that feed them; MXFP6 weights also count the elements the vector unit decompresses to fp16;
- fused attention (`qeff::mpt_attention[_kv]`): the QKV and output projections, the score and context matmuls
  over the whole static cache (the op attends over all ctx_len slots), and the KV cache bytes read and written
  at the cache's storage width (MXINT8: 8.25 bits per element);
- everything else producing floating values (norms, GELU, adds, the embedding gather): vector-unit elements
  and the activation bytes they move.

Casts and dequantize ops of weights are not listed: the host folds them, and on the device they are part of the
consumer's weight read (MXFP6 decompression is counted there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx

from qeff_compiler.ir.graph_utils import node_arg, weight_only_nodes
from qeff_compiler.ir.layers import layer_of
from qeff_compiler.ir.ops import is_alibi_slopes, traits
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.numerics.mx import mx_storage_bits_per_element


@dataclass(frozen=True)
class OpWork:
    """The device work of one graph node for one program call (all rows of the batch)."""

    node: str
    #: "matmul", "attention" or "vector"
    kind: str
    #: transformer block index, None outside the blocks (embedding, final norm, lm_head)
    layer: int | None
    #: tensor-unit operations (2 per multiply-add)
    flops: float
    #: the tensor unit's datatype: "fp16" or "int8"
    compute: str
    #: weights read, as stored (all parts: codes, scales, smoothing factors)
    weight_bytes: int
    #: weight-store names read
    weights: tuple[str, ...]
    #: weight elements decompressed from MXFP6 to fp16 on the vector unit
    decompress_elements: int
    #: elementwise work on the vector unit (norms, activations, softmax, residual adds)
    vector_elements: int
    kv_read_bytes: int
    kv_write_bytes: int
    #: activations read and written
    activation_bytes: int
    #: how many ways the op splits across cores: output channels of a matmul, heads of attention, elements of a
    #: vector op (its last dimension)
    parallel_units: int


def program_workload(program: Program, context_len: int | None = None) -> list[OpWork]:
    """The `OpWork` of every node of `program` that costs device time, in graph order. `context_len` is the
    compute-context-length bucket of the call: cached attention reads only that many cache positions (None: all)."""
    weight_only = weight_only_nodes(program.graph)
    work = []
    for node in program.graph.nodes:
        op = traits(node.target)
        if node.op != "call_function" or op.data_moving or op.cast or node in weight_only:
            continue  # views, selections and casts do no device work of their own
        if op.linear:
            work.append(_matmul(node, program, weight_only))
        elif op.attention:
            work.append(_attention(node, program, weight_only, context_len))
        elif isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].is_floating_point():
            work.append(_vector(node))
    return work


def total(work: Iterable[OpWork], field: str) -> float:
    """The sum of one numeric field over ops."""
    return sum(getattr(op, field) for op in work)


# per kind --------------------------------------------------------------------------------------------------------


def _matmul(node: torch.fx.Node, program: Program, weight_only: set[torch.fx.Node]) -> OpWork:
    x, out = node_arg(node, 0).meta["val"], node.meta["val"]
    rows, in_features, out_features = math.prod(x.shape[:-1]), x.shape[-1], out.shape[-1]
    weights = _weight_parts(node.args[1:], weight_only)
    return OpWork(
        node=node.name,
        kind="matmul",
        layer=layer_of(node),
        flops=2.0 * rows * in_features * out_features,
        compute=traits(node.target).compute,
        weight_bytes=_bytes(weights, program),
        weights=weights,
        decompress_elements=_mxfp6_elements(node.args[1:], weight_only),
        vector_elements=rows * out_features,  # the output's conversion / scaling
        kv_read_bytes=0,
        kv_write_bytes=0,
        activation_bytes=_nbytes(x) + _nbytes(out),
        parallel_units=out_features,
    )


def _attention(
    node: torch.fx.Node, program: Program, weight_only: set[torch.fx.Node], context_len: int | None = None
) -> OpWork:
    hidden = node_arg(node, 0).meta["val"]
    batch, seq, d_model = hidden.shape
    n_heads = node.kwargs.get("n_heads", node.args[7] if len(node.args) > 7 else None)
    if not isinstance(n_heads, int):
        raise TypeError(f"{node.name}: n_heads is {n_heads!r}, not an integer")
    wqkv, out_proj = node_arg(node, 1), node_arg(node, 2)
    inner = wqkv.meta["val"].shape[0] // 3  # n_heads · head_dim: below d_model once `prune` removed heads
    stateful = traits(node.target).stateful
    keys = node_arg(node, 5).meta["val"].shape[2] if stateful else seq  # attends over every cache slot
    if stateful and context_len is not None:
        keys = min(keys, context_len)  # a compute-context-length bucket: only the first positions are read
    rows = batch * seq
    projection_flops = 2.0 * rows * d_model * (3 * inner) + 2.0 * rows * inner * d_model
    attention_flops = 2 * (2.0 * rows * keys * inner)  # Q·Kᵀ and P·V over all heads
    weights = _weight_parts((wqkv, out_proj), weight_only)
    kv_read = kv_write = 0
    if stateful:
        element_bytes = _cache_element_bytes(node)
        kv_read = int(2 * batch * keys * inner * element_bytes)
        kv_write = int(2 * rows * inner * element_bytes)
    return OpWork(
        node=node.name,
        kind="attention",
        layer=layer_of(node),
        flops=projection_flops + attention_flops,
        compute="fp16",
        weight_bytes=_bytes(weights, program),
        weights=weights,
        decompress_elements=_mxfp6_elements((wqkv, out_proj), weight_only),
        # bias, mask, softmax; qkv/out conversions
        vector_elements=rows * n_heads * keys * 3 + rows * (3 * inner + d_model),
        kv_read_bytes=kv_read,
        kv_write_bytes=kv_write,
        activation_bytes=2 * _nbytes(hidden),
        parallel_units=n_heads,
    )


def _vector(node: torch.fx.Node) -> OpWork:
    out = node.meta["val"]
    inputs = [a.meta["val"] for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)]
    elements = out.numel()
    return OpWork(
        node=node.name,
        kind="vector",
        layer=layer_of(node),
        flops=0.0,
        compute="fp16",
        weight_bytes=0,
        weights=(),
        decompress_elements=0,
        vector_elements=elements,
        kv_read_bytes=0,
        kv_write_bytes=0,
        activation_bytes=_nbytes(out) + sum(_nbytes(t) for t in inputs if t.numel() <= 4 * elements),
        parallel_units=out.shape[-1] if out.dim() else 1,
    )


# helpers ---------------------------------------------------------------------------------------------------------


def _weight_feeders(operands: Iterable[object], weight_only: set[torch.fx.Node]) -> list[torch.fx.Node]:
    """The weight-only nodes that feed `operands`, walking back through weight-only nodes only."""
    seen: list[torch.fx.Node] = []
    stack = [o for o in operands if isinstance(o, torch.fx.Node) and o in weight_only]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.append(node)
            stack.extend(node.all_input_nodes)
    return seen


def _weight_parts(operands: Iterable[object], weight_only: set[torch.fx.Node]) -> tuple[str, ...]:
    """Weight-store names feeding `operands` through casts and dequantize ops (not through activations)."""
    feeders = _weight_feeders(operands, weight_only)
    return tuple(dict.fromkeys(n.meta[BINDING][1] for n in feeders if n.op == "placeholder"))


def _mxfp6_elements(operands: Iterable[object], weight_only: set[torch.fx.Node]) -> int:
    """Elements of the MXFP6 weights feeding `operands`."""
    feeders = _weight_feeders(operands, weight_only)
    return sum(n.meta["val"].numel() for n in feeders if traits(n.target).vector_decompress)


def _bytes(names: Iterable[str], program: Program) -> int:
    return sum(program.weights[name].nbytes for name in names if not is_alibi_slopes(name))


def _nbytes(value: torch.Tensor) -> int:
    return value.numel() * value.element_size()


def _cache_element_bytes(node: torch.fx.Node) -> float:
    """Bytes a device stores per cache element: MXINT8 8.25 bits, else the cache tensor's dtype."""
    if node.kwargs.get("kv_cache_format") == "mxint8":
        return mx_storage_bits_per_element("int8") / 8
    return node_arg(node, 5).meta["val"].element_size()
