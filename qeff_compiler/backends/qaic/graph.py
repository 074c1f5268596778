"""The device hand-off graph: one ONNX model of an MPT for prefill and decode, with symbolic shapes.

QEfficient's I/O contract, so a Cloud AI 100 user runs it through `qaic-compile` as they would QEfficient's export:

    inputs   input_ids INT64 [batch_size, seq_len]; past_key.{i}, past_value.{i} FLOAT [batch_size, n_heads,
             ctx_len, head_dim] per layer (key then value); position_ids INT64 [batch_size, seq_len] (−1 = padding)
    outputs  logits FLOAT [batch_size, 1, vocab] at each row's last valid position (its largest position id);
             a speculative-decoding target has a last input num_logits_to_keep INT64 [num_logits_to_keep, 1]
             (only its length counts) and logits [batch_size, num_logits_to_keep, vocab]: the positions ending
             at the last valid one, so prefill keeps 1 and the K+1 decode (verify) specialization keeps K+1;
             past_key.{i}_RetainedState, past_value.{i}_RetainedState (the updated cache, shaped like the inputs)

Only standard ONNX ops (opset 17) and `com.qualcomm.cloud::CtxScatter` (an ONNX function, `ctx_ops`), so ONNX
Runtime runs the file as it is. Linears are `MatMul` on their weights stored transposed (`<name>.T`, [in, out]),
as torch.onnx exports them; the embedding and a tied lm_head (`Gemm(transB=1)`) read one initializer. Attention is
written out: clip_qkv clamps the fused QKV (QEfficient's MPT drops it; a model trained with it then runs wrong),
the softmax scale and ALiBi slopes are the program's, and slots after a query's position are masked with a finite value.

Padding never writes the cache, with no out-of-range index: each padding token scatters the key/value of its row's
last valid token to that token's slot (a duplicate write of identical values), and a row without valid tokens
writes slot 0's own value back. QEfficient instead maps padding to INT32_MAX, which ONNX Runtime rejects.

Weights are external data in one raw file next to the model, written one tensor at a time from the weight store (a
streaming store reads each from its checkpoint then), so a 7B model is written in the memory of its largest
tensor. A store without data (a config-only compile) gets a sparse file of zeros: the structure for a trial
compile, no disk used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxscript
import torch
from transformers import MptConfig

from qeff_compiler.backends.qaic.ctx_ops import CLOUD_DOMAIN, CLOUD_OPSET, ctx_scatter_cb_function, ctx_scatter_function
from qeff_compiler.ir.alibi import alibi_slopes
from qeff_compiler.ir.ops import MASK_VALUE
from qeff_compiler.ir.weights import WeightStore, release_evaluated

#: the ONNX opset QEfficient exports with (LayerNormalization needs ≥ 17)
OPSET = 17
#: symbolic dimension names, as QEfficient names them
BATCH, SEQ, CTX = "batch_size", "seq_len", "ctx_len"
#: continuous batching's cache rows, and the compute-context-length input's length (QEfficient's names)
FULL_BATCH, CCL = "full_batch_size", "comp_ctx_lengths"
#: the serving inputs (QEfficient's names, also the symbols of their dims where they have one)
BATCH_INDEX, COMP_CTX_LENGTHS = "batch_index", "comp_ctx_lengths"
#: a speculative-decoding target's input [num_logits_to_keep, 1]: only its length counts, the logits kept per row
NUM_LOGITS_TO_KEEP = "num_logits_to_keep"
#: external data offsets of tensors from 1 MiB on are aligned to a page (ONNX Runtime can memory-map them), others to 64
_PAGE, _MIN_ALIGNMENT = 4096, 64
_ONNX_DTYPES = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16}


@dataclass(frozen=True)
class LayerAttention:
    """One layer's attention settings, read from the compiled program's fused attention op."""

    n_heads: int
    softmax_scale: float
    clip_qkv: float | None


@dataclass(frozen=True)
class HandoffModel:
    """What the graph is built from: the config, fp weights by HF name, and every layer's attention settings."""

    config: MptConfig
    weights: WeightStore
    layers: Sequence[LayerAttention]
    #: names of the embedding matrix and of the lm_head's (the same name when they are tied)
    embedding: str
    lm_head: str
    #: dtype of the initializers: float32, or float16 (cast to float in the graph; halves a 7B file)
    weight_dtype: torch.dtype = torch.float32
    #: continuous batching: caches of `full_batch_size` rows, a `batch_index` input naming each row's slot
    continuous_batching: bool = False
    #: compute-context-length buckets: a `comp_ctx_lengths` input whose length is the positions attention reads
    context_buckets: bool = False
    #: a speculative-decoding target: a `num_logits_to_keep` input; logits [batch, num_logits_to_keep, vocab]
    speculative: bool = False


def io_names(
    n_layers: int, continuous_batching: bool = False, context_buckets: bool = False, speculative: bool = False
) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order (QEfficient's: comp_ctx_lengths after the caches,
    batch_index, then num_logits_to_keep last)."""
    cache = [f"past_{kind}.{i}" for i in range(n_layers) for kind in ("key", "value")]
    serving = [COMP_CTX_LENGTHS] * context_buckets
    inputs = ["input_ids", *cache, *serving, "position_ids", *[BATCH_INDEX] * continuous_batching]
    inputs += [NUM_LOGITS_TO_KEEP] * speculative
    return inputs, ["logits", *(f"{name}_RetainedState" for name in cache)]


def emit_handoff(model: HandoffModel, path: Path) -> None:
    """Write the hand-off graph to `path` with its weights in `path.name + ".data"`, then check the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_file = path.parent / f"{path.name}.data"
    builder = _Builder(model, data_file)
    graph = builder.build()
    functions = [builder.scatter_cb if model.continuous_batching else builder.scatter]
    ir.save(ir.Model(graph, ir_version=8, producer_name="qeff-compiler", functions=functions), path)
    onnx.checker.check_model(str(path), full_check=False)  # path-based: works past 2 GB; shapes are symbolic


class _Builder:
    """Builds the graph; weight initializers point into `data_file`, written as they are added."""

    def __init__(self, model: HandoffModel, data_file: Path) -> None:
        self.model, self.data_file = model, data_file
        config = model.config
        self.head_dim = config.d_model // config.n_heads
        inputs, _ = io_names(config.n_layers, model.continuous_batching, model.context_buckets, model.speculative)
        rows = FULL_BATCH if model.continuous_batching else BATCH
        self.inputs = {name: ir.Value(name=name, **_input_type(name, config, self.head_dim, rows)) for name in inputs}
        self.rows = rows
        self.graph = ir.Graph(
            list(self.inputs.values()), [], nodes=[], opset_imports={"": OPSET, CLOUD_DOMAIN: CLOUD_OPSET}, name="mpt"
        )
        self.op = onnxscript.GraphBuilder(self.graph).op
        self.scatter = ctx_scatter_function(OPSET)
        self.scatter_cb = ctx_scatter_cb_function(OPSET)
        self._weights: dict[str, ir.Value] = {}
        self._offset = 0

    def build(self) -> ir.Graph:
        op, config, inputs = self.op, self.model.config, self.inputs
        self.data_file.write_bytes(b"")
        position_ids = inputs["position_ids"]
        writes = _padding_writes(op, position_ids)
        hidden = op.Gather(self._weight(self.model.embedding), inputs["input_ids"], axis=0)  # [b, s, d]
        outputs: list[ir.Value] = []
        for i, layer in enumerate(self.model.layers):
            prefix = f"transformer.blocks.{i}"
            attended, key, value = self._attention(
                i, layer, self._norm(hidden, f"{prefix}.norm_1"), position_ids, writes
            )
            hidden = op.Add(hidden, attended)
            up = _gelu(op, self._linear(self._norm(hidden, f"{prefix}.norm_2"), f"{prefix}.ffn.up_proj.weight"))
            hidden = op.Add(hidden, self._linear(up, f"{prefix}.ffn.down_proj.weight"))
            outputs += [key, value]
        if self.model.speculative:
            logits = self._kept_logits(hidden, position_ids)
        else:
            last = op.Unsqueeze(op.ArgMax(position_ids, axis=1, keepdims=1), [2])  # [b, 1, 1]
            last = op.Expand(last, op.Concat(op.Shape(hidden, start=0, end=1), [1, config.d_model], axis=0))
            final = self._norm(op.GatherElements(hidden, last, axis=1), "transformer.norm_f")  # [b, 1, d]
            logits = op.Unsqueeze(op.Gemm(op.Squeeze(final, [1]), self._weight(self.model.lm_head), transB=1), [1])
        self.graph.outputs.extend([logits, *outputs])
        _, names = io_names(config.n_layers)
        for value, name in zip(self.graph.outputs, names, strict=True):
            value.name, value.type = name, ir.TensorType(ir.DataType.FLOAT)
            state = name != "logits"
            value.shape = ir.Shape(
                [self.rows, config.n_heads, CTX, self.head_dim]
                if state
                else [BATCH, NUM_LOGITS_TO_KEEP if self.model.speculative else 1, config.vocab_size]
            )
        release_evaluated()
        for node in self.graph.all_nodes():
            node.metadata_props.clear()
        return self.graph

    def _kept_logits(self, hidden: ir.Value, position_ids: ir.Value) -> ir.Value:
        """Logits of the num_logits_to_keep positions ending at each row's last valid one (QEfficient's window:
        it starts at max(0, last + 1 - num_logits_to_keep)): [b, num_logits_to_keep, vocab]."""
        op = self.op
        keep = op.Shape(self.inputs[NUM_LOGITS_TO_KEEP], start=0, end=1)  # [1]
        last = op.ArgMax(position_ids, axis=1, keepdims=1)  # [b, 1]
        first = op.Max(op.Sub(op.Add(last, 1), keep), 0)
        index = op.Add(first, op.Unsqueeze(op.Range(0, op.Squeeze(keep), 1), [0]))  # [b, keep]
        shape = op.Concat(op.Shape(hidden, start=0, end=1), keep, [self.model.config.d_model], axis=0)
        kept = op.GatherElements(hidden, op.Expand(op.Unsqueeze(index, [2]), shape), axis=1)  # [b, keep, d]
        final = self._norm(kept, "transformer.norm_f")
        return op.MatMul(final, op.Transpose(self._weight(self.model.lm_head), perm=[1, 0]))

    def _attention(
        self, index: int, layer: LayerAttention, x: ir.Value, position_ids: ir.Value, writes: _PaddingWrites
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        op, heads = self.op, layer.n_heads
        prefix = f"transformer.blocks.{index}.attn"
        qkv = self._linear(x, f"{prefix}.Wqkv.weight")
        if layer.clip_qkv is not None:
            qkv = op.Clip(qkv, -layer.clip_qkv, layer.clip_qkv)
        query, key, value = (
            op.Transpose(op.Reshape(part, [0, 0, heads, self.head_dim]), perm=[0, 2, 1, 3])
            for part in op.Split(qkv, [heads * self.head_dim] * 3, axis=-1, _outputs=3)
        )  # [b, heads, s, head_dim]
        key_cache = self._write(self.inputs[f"past_key.{index}"], key, writes)
        value_cache = self._write(self.inputs[f"past_value.{index}"], value, writes)
        keys, values = self._read(key_cache), self._read(value_cache)
        scores = op.MatMul(op.Mul(query, layer.softmax_scale), op.Transpose(keys, perm=[0, 1, 3, 2]))
        slots = op.Range(0, op.Squeeze(op.Shape(keys, start=2, end=3)), 1)  # [ctx, or the bucket]
        distance = op.Cast(op.Sub(slots, op.Unsqueeze(position_ids, [2])), to=ir.DataType.FLOAT)  # [b, s, ctx]
        attn_config: Any = self.model.config.attn_config  # an MptAttentionConfig once the config is built
        slopes = alibi_slopes(heads, attn_config.alibi_bias_max).reshape(1, heads, 1, 1)
        bias = op.Mul(
            op.Unsqueeze(distance, [1]), op.initializer(ir.tensor(slopes.numpy()), name=f"{prefix}.alibi_slopes")
        )
        scores = op.Where(op.Unsqueeze(op.LessOrEqual(distance, 0.0), [1]), op.Add(scores, bias), MASK_VALUE)
        context = op.MatMul(op.Softmax(scores, axis=-1), values)  # [b, heads, s, head_dim]
        merged = op.Reshape(op.Transpose(context, perm=[0, 2, 1, 3]), [0, 0, -1])
        return self._linear(merged, f"{prefix}.out_proj.weight"), key_cache, value_cache

    def _write(self, cache: ir.Value, new: ir.Value, writes: _PaddingWrites) -> ir.Value:
        """`CtxScatter` (`CtxScatterCB` into the rows `batch_index` names) of the new keys or values at their
        positions; padding rewrites a slot with its own value."""
        op = self.op
        source = op.Expand(op.Unsqueeze(writes.source, [1, 3]), op.Shape(new))
        updates = op.GatherElements(new, source, axis=2)
        slot0 = op.Slice(self._rows(cache), [0], [1], [2])  # [b, h, 1, d]: what a row without valid tokens writes
        updates = op.Where(op.Unsqueeze(writes.row_valid, [1, 2, 3]), updates, slot0)
        if self.model.continuous_batching:
            return op.call(self.scatter_cb, cache, self.inputs[BATCH_INDEX], writes.positions, updates)
        return op.call(self.scatter, cache, writes.positions, updates)

    def _rows(self, cache: ir.Value) -> ir.Value:
        """The cache rows of the input rows: those `batch_index` names (continuous batching), else the cache."""
        if not self.model.continuous_batching:
            return cache
        return self.op.Gather(cache, self.op.Squeeze(self.inputs[BATCH_INDEX], [1]), axis=0)

    def _read(self, cache: ir.Value) -> ir.Value:
        """What attention reads: the input rows' cache rows, cut to the first len(comp_ctx_lengths) positions
        when the graph has context buckets."""
        rows = self._rows(cache)
        if not self.model.context_buckets:
            return rows
        return self.op.Slice(rows, [0], self.op.Shape(self.inputs[COMP_CTX_LENGTHS]), [2])

    def _linear(self, x: ir.Value, name: str) -> ir.Value:
        """x [b, s, in] · Wᵀ: MatMul with the weight stored transposed ([in, out]), which ONNX Runtime pre-packs."""
        return self.op.MatMul(x, self._weight(name, transposed=True))

    def _norm(self, x: ir.Value, prefix: str) -> ir.Value:
        """LayerNorm over the last axis (MPT's norms have no bias unless the checkpoint stores one)."""
        bias = f"{prefix}.bias"
        inputs = [x, self._weight(f"{prefix}.weight")] + ([self._weight(bias)] if bias in self.model.weights else [])
        return self.op.LayerNormalization(*inputs, axis=-1, epsilon=self.model.config.layer_norm_epsilon)

    def _weight(self, name: str, transposed: bool = False) -> ir.Value:
        """The initializer of weight `name` (written to the data file the first time), as float; a `transposed`
        2-D weight is stored [in, out] under the name `<name>.T`."""
        stored = f"{name}.T" if transposed else name
        if stored not in self._weights:
            value = ir.Value(name=stored, const_value=self._write_tensor(name, transposed))
            self.graph.register_initializer(value)
            self._weights[stored] = (
                value if self.model.weight_dtype == torch.float32 else self.op.Cast(value, to=ir.DataType.FLOAT)
            )
        return self._weights[stored]

    def _write_tensor(self, name: str, transposed: bool) -> ir.ExternalTensor:
        """Append weight `name` (transposed if asked) to the data file, aligned; the external tensor points at it."""
        spec, dtype = self.model.weights[name], self.model.weight_dtype
        shape = spec.shape[::-1] if transposed else spec.shape
        length = spec.numel * dtype.itemsize
        alignment = _PAGE if length >= 2**20 else _MIN_ALIGNMENT
        offset = -(-self._offset // alignment) * alignment
        with self.data_file.open("r+b") as handle:
            if self.model.weights.has_data:
                handle.seek(offset)
                tensor = self.model.weights.tensor(name).to(dtype)
                tensor = (tensor.t() if transposed else tensor).contiguous()
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
                del tensor
            else:
                handle.truncate(offset + length)  # a hole: zeros, no disk
        self._offset = offset + length
        return ir.ExternalTensor(
            self.data_file.name,
            offset,
            length,
            _ONNX_DTYPES[dtype],
            shape=ir.Shape(shape),
            name=f"{name}.T" if transposed else name,
            base_dir=self.data_file.parent,
        )


@dataclass(frozen=True)
class _PaddingWrites:
    """Per token, where its cache write goes: the token whose key/value it writes, the slot, and row validity."""

    source: ir.Value  # [b, s] int64: the token itself, or its row's last valid token for padding
    positions: ir.Value  # [b, s] int64: the slot written (never −1)
    row_valid: ir.Value  # [b] bool: the row has a valid token


def _padding_writes(op: onnxscript.OpBuilder, position_ids: ir.Value) -> _PaddingWrites:
    valid = op.GreaterOrEqual(position_ids, 0)
    tokens = op.Unsqueeze(op.Range(0, op.Squeeze(op.Shape(position_ids, start=1, end=2)), 1), [0])  # [1, s]
    last = op.ArgMax(position_ids, axis=1, keepdims=1)  # [b, 1]: the largest position is the last valid token
    source = op.Where(valid, tokens, last)
    positions = op.Max(op.GatherElements(position_ids, source, axis=1), 0)
    row_valid = op.Cast(op.ReduceMax(op.Cast(valid, to=ir.DataType.INT32), [1], keepdims=0), to=ir.DataType.BOOL)
    return _PaddingWrites(source, positions, row_valid)


def _gelu(op: onnxscript.OpBuilder, x: ir.Value) -> ir.Value:
    """Exact (erf) GELU, as HF MPT's FFN; opset 17 has no Gelu op."""
    return op.Mul(op.Mul(x, 0.5), op.Add(op.Erf(op.Div(x, 1.4142135623730951)), 1.0))


def _input_type(name: str, config: MptConfig, head_dim: int, rows: str) -> dict:
    int64 = ir.TensorType(ir.DataType.INT64)
    if name in ("input_ids", "position_ids"):
        return {"type": int64, "shape": ir.Shape([BATCH, SEQ])}
    if name == BATCH_INDEX:
        return {"type": int64, "shape": ir.Shape([BATCH, 1])}
    if name == COMP_CTX_LENGTHS:
        return {"type": int64, "shape": ir.Shape([CCL])}
    if name == NUM_LOGITS_TO_KEEP:
        return {"type": int64, "shape": ir.Shape([NUM_LOGITS_TO_KEEP, 1])}
    return {"type": ir.TensorType(ir.DataType.FLOAT), "shape": ir.Shape([rows, config.n_heads, CTX, head_dim])}
