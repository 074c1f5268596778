"""The KV-cache custom op of the device hand-off graph: `com.qualcomm.cloud::CtxScatter`, as an ONNX function.

Qualcomm's compiler recognises the cache scatter by its domain and name (the op QEfficient's exports use): write
`updates` [batch, heads, seq, head_dim] into `data` [batch, heads, ctx_len, head_dim] at the slots
`position_ids` [batch, seq] name. The function body (standard ScatterND) is what ONNX Runtime runs; the device
compiler maps the node to its own cache-update kernel and keeps the cache resident (`-retained-state`).
"""

from __future__ import annotations

import onnx_ir as ir
import onnxscript

#: domain and version of the cache ops, as the device compiler expects them
CLOUD_DOMAIN = "com.qualcomm.cloud"
CLOUD_OPSET = 1
CTX_SCATTER = "CtxScatter"
CTX_SCATTER_CB = "CtxScatterCB"


def ctx_scatter_function(opset: int) -> ir.Function:
    """`CtxScatter(data, position_ids, updates)`: ScatterND at (batch, head, position) for every token."""

    def body(op: onnxscript.OpBuilder, data: ir.Value, position_ids: ir.Value, updates: ir.Value) -> ir.Value:
        batch = op.Shape(data, start=0, end=1)
        heads = op.Shape(data, start=1, end=2)
        seq = op.Shape(position_ids, start=1, end=2)
        shape = op.Concat(batch, heads, seq, [1], axis=0)  # [b, h, s, 1]
        batch_index = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(batch), 1), [1, 2, 3]), shape)
        head_index = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(heads), 1), [0, 2, 3]), shape)
        slot_index = op.Expand(op.Unsqueeze(position_ids, [1, 3]), shape)
        return op.ScatterND(data, op.Concat(batch_index, head_index, slot_index, axis=3), updates)

    inputs = [ir.Value(name=name) for name in ("data", "position_ids", "updates")]
    function = onnxscript.build_function(body, inputs, domain=CLOUD_DOMAIN, name=CTX_SCATTER, opset_imports={"": opset})
    for node in function:
        node.metadata_props.clear()
    return function


def ctx_scatter_cb_function(opset: int) -> ir.Function:
    """`CtxScatterCB(data, batch_index, position_ids, updates)`: the continuous-batching form; row b of `updates`
    goes to cache row `batch_index[b, 0]` of `data` [full_batch_size, heads, ctx_len, head_dim]."""

    def body(
        op: onnxscript.OpBuilder, data: ir.Value, batch_index: ir.Value, position_ids: ir.Value, updates: ir.Value
    ) -> ir.Value:
        batch = op.Shape(batch_index, start=0, end=1)
        heads = op.Shape(data, start=1, end=2)
        seq = op.Shape(position_ids, start=1, end=2)
        shape = op.Concat(batch, heads, seq, [1], axis=0)  # [b, h, s, 1]
        row_index = op.Expand(op.Unsqueeze(batch_index, [2, 3]), shape)
        head_index = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(heads), 1), [0, 2, 3]), shape)
        slot_index = op.Expand(op.Unsqueeze(position_ids, [1, 3]), shape)
        return op.ScatterND(data, op.Concat(row_index, head_index, slot_index, axis=3), updates)

    inputs = [ir.Value(name=name) for name in ("data", "batch_index", "position_ids", "updates")]
    function = onnxscript.build_function(
        body, inputs, domain=CLOUD_DOMAIN, name=CTX_SCATTER_CB, opset_imports={"": opset}
    )
    for node in function:
        node.metadata_props.clear()
    return function
