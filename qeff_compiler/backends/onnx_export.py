"""ONNX emit: write a Program as an ONNX model that ONNX Runtime runs as it is (QEfficient's I/O convention).

The graph is exported by `torch.onnx.export` (dynamo) from a module that holds stand-ins of the program's
weights (shape and dtype, one element of memory); the initializers then point at the weights' bytes in a safetensors
file (`weights_file.write_weights`), which a saved artifact shares with its weight store.
Each fused attention op becomes one node in the `qeff` domain (via `torch.onnx.ops.symbolic_multi_out`), and the
model gets an ONNX function (FunctionProto) of that name with the op's semantics, built from the same math as the
reference kernels in `qeff_compiler.ir.ops`. Every weight is an initializer named like its weight-store entry,
stored once (tied weights included) in one external data file next to the model.

The functions bake in the layer settings (`n_heads`, `softmax_scale`, `clip_qkv`, `fp16_activations`) and read
every shape at run time, so one function serves every layer and any batch, sequence and cache length. With
`fp16_activations` they round to fp16 (Cast to FLOAT16 and back) at the reference kernel's points; fp16 weights
are FLOAT16 initializers and an fp16 cache is a FLOAT16 graph input/output, read back as FLOAT for the math.

Quantized weights stay quantized: their codes and scales are INT8/UINT8 initializers and each weight-dequantize op
becomes a `qeff` node calling an ONNX function (`backends.onnx_quant`), so the file is as small as the precision
makes it and ONNX Runtime still runs it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import onnx
import onnx_ir as ir
import onnxscript
import torch
import torch.fx

from qeff_compiler.backends.onnx_quant import DequantizeCall, dequantize_call, qeff_weight_node
from qeff_compiler.errors import MetaWeightError, VerificationError
from qeff_compiler.ir.ops import ATTENTION, ATTENTION_KV, KV_CACHE_FORMATS, MASK_VALUE, NAMESPACE as QEFF_DOMAIN
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.numerics.mx_onnx import fake_quantize_mxint8
from qeff_compiler.weights_file import WeightsFile, write_weights

#: version of the ONNX functions' domain
QEFF_OPSET = 1
#: loggers that warn about unrelated optional packages (torchvision) on every export
_QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration",)


def export_onnx(program: Program, path: Path, weights: WeightsFile | None = None) -> None:
    """Write `program` to `path` (ONNX) with its initializers as external data in `weights` (a file written by
    `write_weights` holding every weight the program reads, next to `path`); by default the weights are
    written to `path.name + ".data"`. Then check the file.

    The graph is traced with stand-in weights (no weight is loaded), and each initializer is pointed at its bytes in
    the weights file directly, so exporting a 7B program needs no memory for its weights."""
    if not program.has_weight_data:
        raise MetaWeightError(
            "cannot export a program without weight data to ONNX (it was captured from a config alone); "
            "capture from a model object or a checkpoint directory"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = write_weights(
            program.weights, path.parent / f"{path.name}.data", program.weight_placeholders().values()
        )
    settings = _layer_settings(program)
    module = _ExportModule(program).eval()
    example = tuple(torch.zeros(spec.shape, dtype=spec.dtype) for spec in program.inputs)
    with _quiet_export():
        onnx_program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[spec.name for spec in program.inputs],
            output_names=[spec.name for spec in program.outputs],
            optimize=False,  # the optimizer folds weight transposes into new initializers (a tied weight twice)
            verbose=False,
        )
    if onnx_program is None:  # only the legacy exporter (dynamo=False) returns None
        raise VerificationError("torch.onnx.export (dynamo=True) returned no ONNX program")
    model = onnx_program.model
    for value in list(model.graph.initializers.values()):
        if value.name not in module.weight_names:
            raise VerificationError(f"ONNX export made initializer {value.name!r}, which is no weight of the program")
        value.name = module.weight_names[value.name]
        value.const_value = _external(value, weights, path.parent)
    for target, kwargs in settings.items():
        function = _build_function(_fused(target, kwargs), model.opset_imports[""], **kwargs)
        model.functions[function.identifier()] = function
    for call in _dequantize_calls(program).values():
        function = call.build(model.opset_imports[""])
        model.functions[function.identifier()] = function
    model.opset_imports[QEFF_DOMAIN] = QEFF_OPSET
    for value in model.graph.inputs:
        if value.name == "comp_ctx_lengths":  # only its length is read: any bucket length runs
            value.shape = ir.Shape(["comp_ctx_lengths"])
    for node in model.graph.all_nodes():
        node.metadata_props.clear()  # exporter notes: stack traces with local paths, differing per run
    ir.save(model, path)  # initializers stay where they point
    onnx.checker.check_model(str(path), full_check=True)


def _external(value: ir.Value, weights: WeightsFile, base_dir: Path) -> ir.ExternalTensor:
    """The initializer's data as a range of the weights file (which must hold it, at the expected size)."""
    name, tensor = value.name, value.const_value
    if name is None or tensor is None:
        raise VerificationError(f"ONNX export made an initializer without a name or a value: {value!r}")
    if not isinstance(tensor.shape, ir.Shape):
        raise VerificationError(f"initializer {name!r} has shape {tensor.shape!r}, expected an onnx_ir Shape")
    stored = weights.tensors.get(name)
    expected = tensor.nbytes
    if stored is None or stored.length != expected:
        raise VerificationError(
            f"weights file {weights.path.name} holds {stored} for initializer {value.name!r}, expected {expected} bytes"
        )
    return ir.ExternalTensor(
        weights.path.relative_to(base_dir),
        stored.offset,
        stored.length,
        tensor.dtype,
        shape=tensor.shape,
        name=name,
        base_dir=base_dir,
    )


class _ExportModule(torch.nn.Module):
    """The program as a module: weights as stand-in buffers (shapes only), user inputs as arguments in input-spec order.

    Placeholders are bound by their `qeff_binding`. Buffers are named `weight_<i>` (weight names are not
    attribute names) and `weight_names` maps them back; tied weight names share one buffer.
    """

    def __init__(self, program: Program) -> None:
        super().__init__()
        self.graph_module = _with_qeff_nodes(program)
        self.input_names = [spec.name for spec in program.inputs]
        stored_as = {name: group[0] for group in program.weights.tied_groups() for name in group}
        buffers: dict[str, str] = {}  # weight name → buffer name
        self._bindings: list[tuple[str, str]] = []
        for node in program.graph.find_nodes(op="placeholder"):
            kind, name = node.meta[BINDING]
            if kind == "weight":
                name = stored_as.get(name, name)
                if name not in buffers:
                    buffers[name] = f"weight_{len(buffers)}"
                    spec = program.weights[name]
                    self.register_buffer(buffers[name], _stand_in(spec.shape, spec.dtype))
                name = buffers[name]
            self._bindings.append((kind, name))
        #: buffer name → weight name, to name the ONNX initializers after the weight store
        self.weight_names = {buffer: name for name, buffer in buffers.items()}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        by_name = dict(zip(self.input_names, inputs, strict=True))
        args = [getattr(self, name) if kind == "weight" else by_name[name] for kind, name in self._bindings]
        return tuple(self.graph_module(*args))


def _stand_in(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A weight-shaped tensor that allocates one element: only its shape and dtype are traced. (Meta tensors
    cannot be used: torch.onnx's `symbolic` ops make their fake outputs on the CPU, and devices would mix.)"""
    return torch.zeros((), dtype=dtype).expand(shape)


def _with_qeff_nodes(program: Program) -> torch.fx.GraphModule:
    """A copy of the graph whose fused ops become `qeff::<function>` nodes when exported to ONNX."""
    graph_module = program.copy_graph()
    for node in graph_module.graph.nodes:
        if node.target in _FUSED:
            fused = _fused(node.target, _settings(node))
            serving = tuple(node.kwargs[name] for name in _SERVING_OPERANDS if node.kwargs.get(name) is not None)
            node.args = (*node.args, *serving)
            node.target, node.kwargs = _qeff_node, {"function": fused.function, "outputs_like": fused.outputs_like}
        elif (call := dequantize_call(node)) is not None:
            value = node.meta["val"]
            node.target, node.args = qeff_weight_node, tuple(a for a in node.args if isinstance(a, torch.fx.Node))
            node.kwargs = {
                "function": call.function,
                "attributes": call.attributes,
                "dtype": value.dtype,
                "shape": tuple(value.shape),
            }
    graph_module.recompile()
    return graph_module


def _qeff_node(*inputs: torch.Tensor, function: str, outputs_like: tuple[int, ...]) -> torch.Tensor | tuple:
    """One `qeff::<function>` node whose outputs have the shapes and dtypes of the inputs `outputs_like` names."""
    like = [inputs[i] for i in outputs_like]
    outputs = torch.onnx.ops.symbolic_multi_out(
        f"{QEFF_DOMAIN}::{function}",
        inputs,
        dtypes=[t.dtype for t in like],
        shapes=[t.shape for t in like],
        version=QEFF_OPSET,
    )
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _dequantize_calls(program: Program) -> dict[str, DequantizeCall]:
    """The weight-dequantize functions the program calls, by function name."""
    calls = (dequantize_call(node) for node in program.graph.nodes if node.op == "call_function")
    return {call.function: call for call in calls if call is not None}


def _layer_settings(program: Program) -> dict[torch._ops.OpOverload, dict]:
    """The settings (op kwargs) of each fused op the program uses; a function bakes them in, so layers must agree."""
    settings: dict[torch._ops.OpOverload, dict] = {}
    for node in program.graph.nodes:
        if node.target in _FUSED and settings.setdefault(node.target, _settings(node)) != _settings(node):
            raise VerificationError(
                f"{_FUSED[node.target].function} layers differ in settings: {settings[node.target]} vs {node.kwargs}"
            )
    return settings


def _settings(node: torch.fx.Node) -> dict:
    """A fused op's settings: its constant kwargs, and whether it has each serving operand (`indexed`:
    batch_index, `bucketed`: comp_ctx_lengths), which become function inputs."""
    settings = {k: v for k, v in node.kwargs.items() if k not in _SERVING_OPERANDS}
    flags = {
        flag: True
        for flag, name in zip(("indexed", "bucketed"), _SERVING_OPERANDS, strict=True)
        if node.kwargs.get(name) is not None
    }
    return settings | flags


def _fused(target: torch._ops.OpOverload, settings: dict) -> _Fused:
    """How `target` appears in ONNX with these settings: the cached attention with serving operands is its own
    function (`MptAttentionKV_CB`, `_CCL`, `_CB_CCL`) with those operands as extra inputs."""
    fused = _FUSED[target]
    names = [name for flag, name in zip(("indexed", "bucketed"), _SERVING_OPERANDS, strict=True) if settings.get(flag)]
    if not names:
        return fused
    suffix = "".join({"batch_index": "_CB", "comp_ctx_lengths": "_CCL"}[name] for name in names)
    return fused._replace(function=fused.function + suffix, inputs=(*fused.inputs, *names))


def _build_function(
    fused: _Fused,
    opset: int,
    *,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16_activations: bool = False,
    kv_cache_format: str | None = None,
    indexed: bool = False,
    bucketed: bool = False,
) -> ir.Function:
    """The ONNX function of one fused op, with its layer settings as constants."""
    settings: dict[str, int | float | bool | str | None] = {
        "n_heads": n_heads,
        "softmax_scale": softmax_scale,
        "clip_qkv": clip_qkv,
        "fp16": fp16_activations,
    }
    if kv_cache_format is not None:  # a setting of the cached op only
        settings["kv_cache_format"] = kv_cache_format
    if indexed or bucketed:  # so are the serving operands
        settings |= {"indexed": indexed, "bucketed": bucketed}

    def trace(op: onnxscript.OpBuilder, *inputs: ir.Value) -> list[ir.Value]:
        return fused.body(op, *inputs, **settings)

    inputs = [ir.Value(name=name) for name in fused.inputs]
    opsets = {"": opset}
    function = onnxscript.build_function(trace, inputs, domain=QEFF_DOMAIN, name=fused.function, opset_imports=opsets)
    for node in function:
        node.metadata_props.clear()  # builder notes (scopes, "type not known" for the untyped function inputs)
    return function


# ONNX function bodies ------------------------------------------------------------------------------------------
# `op` is an onnxscript OpBuilder: `op.MatMul(a, b)` records a node; Python numbers and lists become constants
# (numbers cast like the op's other inputs), so the bodies work for any float dtype.


def _attention_body(
    op: onnxscript.OpBuilder,
    hidden: ir.Value,
    wqkv: ir.Value,
    out_proj: ir.Value,
    slopes: ir.Value,
    *,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16: bool,
) -> list[ir.Value]:
    """`qeff::mpt_attention`: the sequence attends to itself, query and key positions are 0..seq-1."""
    query, key, value = _project_qkv(op, hidden, wqkv, n_heads, clip_qkv, fp16)
    positions = op.Unsqueeze(_arange(op, op.Shape(hidden, start=1, end=2)), [0])  # [1, seq]
    context = _attend(op, query, key, value, slopes, positions, positions, softmax_scale, fp16)
    return [_project_out(op, context, out_proj, fp16)]


def _attention_kv_body(
    op: onnxscript.OpBuilder,
    hidden: ir.Value,
    wqkv: ir.Value,
    out_proj: ir.Value,
    slopes: ir.Value,
    position_ids: ir.Value,
    past_key: ir.Value,
    past_value: ir.Value,
    *serving: ir.Value,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16: bool,
    kv_cache_format: str | None = None,
    indexed: bool = False,
    bucketed: bool = False,
) -> list[ir.Value]:
    """`qeff::mpt_attention_kv`: write the new keys/values at their positions, attend over the whole cache
    (read back in the activations' type: an fp16 cache is storage only). With `kv_cache_format="mxint8"` the new
    keys/values are MXINT8-rounded before they are written, as in the reference kernel; reads need nothing.
    `serving` holds `batch_index` when `indexed` (each row reads and writes the cache row it names) and then
    `comp_ctx_lengths` when `bucketed` (attention reads the first len(comp_ctx_lengths) positions)."""
    if kv_cache_format not in KV_CACHE_FORMATS:
        raise VerificationError(f"MptAttentionKV has no ONNX form for kv_cache_format={kv_cache_format!r}")
    batch_index = serving[0] if indexed else None
    lengths = serving[-1] if bucketed else None
    query, key, value = _project_qkv(op, hidden, wqkv, n_heads, clip_qkv, fp16)
    if kv_cache_format == "mxint8":
        key, value = fake_quantize_mxint8(op, key), fake_quantize_mxint8(op, value)
    slots = op.Unsqueeze(_arange(op, op.Shape(past_key, start=2, end=3)), [0])  # [1, ctx_len]
    written, source = _slot_writers(op, position_ids, slots)
    key_rows = past_key if batch_index is None else op.Gather(past_key, op.Squeeze(batch_index, [1]), axis=0)
    value_rows = past_value if batch_index is None else op.Gather(past_value, op.Squeeze(batch_index, [1]), axis=0)
    key_cache = _write_cache(op, key_rows, op.CastLike(key, past_key), written, source)
    value_cache = _write_cache(op, value_rows, op.CastLike(value, past_value), written, source)
    keys, values = op.CastLike(key_cache, query), op.CastLike(value_cache, query)
    if lengths is not None:  # a compute-context-length bucket: the first N positions only
        end = op.Shape(lengths)
        keys, values = op.Slice(keys, [0], end, [2]), op.Slice(values, [0], end, [2])
        slots = op.Unsqueeze(_arange(op, end), [0])
    context = _attend(op, query, keys, values, slopes, position_ids, slots, softmax_scale, fp16)
    if batch_index is not None:  # the slots' rows back into the whole cache
        key_cache = op.ScatterND(past_key, batch_index, key_cache)
        value_cache = op.ScatterND(past_value, batch_index, value_cache)
    return [_project_out(op, context, out_proj, fp16), key_cache, value_cache]


def _arange(op: onnxscript.OpBuilder, length: ir.Value) -> ir.Value:
    """0..length-1 (int64) for a one-element `length` tensor."""
    return op.Range(0, op.Squeeze(length), 1)


def _round_fp16(op: onnxscript.OpBuilder, value: ir.Value, enabled: bool) -> ir.Value:
    """`value` rounded to fp16 and cast back to its type (the reference kernels' `round_fp16`)."""
    return op.CastLike(op.Cast(value, to=ir.DataType.FLOAT16), value) if enabled else value


def _project_qkv(
    op: onnxscript.OpBuilder, hidden: ir.Value, wqkv: ir.Value, n_heads: int, clip_qkv: float | None, fp16: bool
) -> list[ir.Value]:
    """Fused QKV projection (clamped only when clip_qkv is set) → three [batch, heads, seq, head_dim] values."""
    qkv = op.MatMul(hidden, op.Transpose(wqkv, perm=[1, 0]))
    if clip_qkv is not None:
        qkv = op.Clip(qkv, -clip_qkv, clip_qkv)
    qkv = _round_fp16(op, qkv, fp16)
    parts = op.Split(qkv, axis=-1, num_outputs=3, _outputs=3)
    return [op.Transpose(op.Reshape(part, [0, 0, n_heads, -1]), perm=[0, 2, 1, 3]) for part in parts]


def _attend(
    op: onnxscript.OpBuilder,
    query: ir.Value,
    key: ir.Value,
    value: ir.Value,
    slopes: ir.Value,
    query_positions: ir.Value,
    key_positions: ir.Value,
    softmax_scale: float,
    fp16: bool,
) -> ir.Value:
    """Causal ALiBi attention; positions are [batch or 1, len] int64. Masked scores are replaced by MASK_VALUE."""
    scores = op.Mul(op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2])), softmax_scale)
    distance = op.Sub(op.Unsqueeze(key_positions, [1, 2]), op.Unsqueeze(query_positions, [1, 3]))  # [b, 1, s, k]
    bias = op.Mul(op.Unsqueeze(op.CastLike(slopes, scores), [0, 2, 3]), op.CastLike(distance, scores))
    scores = op.Where(op.LessOrEqual(distance, 0), _round_fp16(op, op.Add(scores, bias), fp16), MASK_VALUE)
    probabilities = _round_fp16(op, op.Softmax(op.Cast(scores, to=ir.DataType.FLOAT), axis=-1), fp16)
    return _round_fp16(op, op.MatMul(op.CastLike(probabilities, value), value), fp16)


def _project_out(op: onnxscript.OpBuilder, context: ir.Value, out_proj: ir.Value, fp16: bool) -> ir.Value:
    """Merge heads ([b, heads, s, head_dim] → [b, s, d]) and apply the output projection."""
    merged = op.Reshape(op.Transpose(context, perm=[0, 2, 1, 3]), [0, 0, -1])
    return _round_fp16(op, op.MatMul(merged, op.Transpose(out_proj, perm=[1, 0])), fp16)


def _slot_writers(op: onnxscript.OpBuilder, position_ids: ir.Value, slots: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Which cache slots the tokens write ([b, ctx] bool) and, for each, the (last) token writing it ([b, ctx]).

    Slots look up their token instead of tokens scattering by index: ScatterND would wrap position −1
    (padding) to the last slot, while −1 here matches no slot, so padding is never written.
    """
    hits = op.Cast(op.Equal(op.Unsqueeze(position_ids, [2]), slots), to=ir.DataType.INT32)  # [b, s, ctx]
    written = op.Cast(op.ReduceMax(hits, [1], keepdims=0), to=ir.DataType.BOOL)
    source = op.ArgMax(hits, axis=1, keepdims=0, select_last_index=1)
    return written, source


def _write_cache(
    op: onnxscript.OpBuilder, cache: ir.Value, new: ir.Value, written: ir.Value, source: ir.Value
) -> ir.Value:
    """`cache` [b, h, ctx, d] with each written slot replaced by its token's row of `new` [b, h, s, d]."""
    gathered = op.GatherElements(new, op.Expand(op.Unsqueeze(source, [1, 3]), op.Shape(cache)), axis=2)
    return op.Where(op.Unsqueeze(written, [1, 3]), gathered, cache)


class _Fused(NamedTuple):
    """How a fused op appears in ONNX.

    `outputs_like` names the inputs whose shape and dtype each output has, as in the op's fake kernel.
    """

    function: str
    inputs: tuple[str, ...]
    outputs_like: tuple[int, ...]
    body: Callable[..., list[ir.Value]]


_ATTENTION_INPUTS = ("hidden", "wqkv", "out_proj", "alibi_slopes")
#: the cached attention's optional tensor operands (`continuous-batching`, `compute-context-length`), in order
_SERVING_OPERANDS = ("batch_index", "comp_ctx_lengths")
_FUSED = {
    ATTENTION: _Fused("MptAttention", _ATTENTION_INPUTS, (0,), _attention_body),
    ATTENTION_KV: _Fused(
        "MptAttentionKV", (*_ATTENTION_INPUTS, "position_ids", "past_key", "past_value"), (0, 5, 6), _attention_kv_body
    ),
}


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence export-time messages a user cannot act on (torch-internal deprecations, missing torchvision)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
