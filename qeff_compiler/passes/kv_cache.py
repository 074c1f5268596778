"""`kv-cache{ctx_len=N dtype=auto|fp16|mxint8 logits=last|all}`: make the program stateful with a static,
position-addressed KV cache.

New inputs `position_ids` [b, s] (−1 = padding) and `past_key.{i}` / `past_value.{i}` [b, n_heads, ctx_len,
head_dim]; each fused attention op becomes `qeff::mpt_attention_kv`, which writes the new keys/values at their
positions and attends over the whole buffer. Outputs follow the QEfficient convention: `logits` [b, 1, vocab]
for each row's last valid position (the lm_head runs on that position only), then
`past_key.{i}_RetainedState`, `past_value.{i}_RetainedState` per layer. `logits=all` keeps the logits of every
position instead ([b, s, vocab]), for scoring a text through the cache (`qc.evaluate` with a KV-cache dtype).

`dtype` says what the cache stores:
- `auto` (default): activations, fp32, or fp16 when the program's activations are fp16 already (`lower-fp16`
  ran first; it converts the cache otherwise).
- `fp16`: fp16 cache tensors even over fp32 activations (values are rounded to fp16 when written).
- `mxint8`: OCP MXINT8 values (int8 elements, one shared E8M0 scale per 32 elements of head_dim, per token and
  head). The cache tensors keep the activation dtype as their container and the op gets
  `kv_cache_format="mxint8"`, which fake-quantizes every key and value it writes; so the retained states hold
  the *dequantized* MXINT8 values and the I/O tensors are not byte-compressed. Each such value k * 2^(s-6) is
  exact in fp32. In fp16 it is exact whenever the block scale 2^s >= 2^-18: the element step 2^(s-6) is then no
  finer than fp16's smallest subnormal 2^-24, and |value| <= 65024 since the block max is an fp16 value. Below
  that the cast could round to a multiple of 2^-24, but an fp16 cache only ever receives fp16 keys and values
  (fp16 activations), and a block of those with a max below 2^-18 quantizes to itself, so every stored value is
  exact. A device stores 8.25 bits per element (`mx_storage_bits_per_element("int8")`); the memory planner
  accounts for that, not these tensors.

Before:
    %mpt_attention = qeff.mpt_attention(%layer_norm, %wqkv, %out_proj, %alibi_slopes, n_heads=4, ...) : f32[1,8,32]
    ...
    %linear_8 = aten.linear(%layer_norm_4, %p_model_lm_head_weight) : f32[1,8,64]
    return [%linear_8]
After:
    %mpt_attention_kv = qeff.mpt_attention_kv(%layer_norm, %wqkv, %out_proj, %alibi_slopes, %position_ids,
        %past_key_0, %past_value_0, n_heads=4, ...) : (f32[1,8,32], f32[1,4,128,8], f32[1,4,128,8])
      (dtype=fp16: f16[1,4,128,8] caches; dtype=mxint8: f32 caches and `..., kv_cache_format='mxint8')`)
    %attention_output_0 = getitem(%mpt_attention_kv, 0) : f32[1,8,32]
    ...
    %last_position = aten.argmax(%position_ids, 1, True) : i64[1,1]
    %last_hidden = aten.gather(%layer_norm_4, 1, %last_index) : f32[1,1,32]
    %linear_8 = aten.linear(%last_hidden, %p_model_lm_head_weight) : f32[1,1,64]
    return [%linear_8, %key_cache_0, %value_cache_0, ...]
"""

from __future__ import annotations

import dataclasses
import operator
from typing import ClassVar

import torch
import torch.fx

from qeff_compiler.errors import InvalidArgumentError, PassOptionError, VerificationError
from qeff_compiler.ir.graph_utils import add_placeholder
from qeff_compiler.ir.layers import LAYER
from qeff_compiler.ir.ops import ATTENTION, ATTENTION_KV, traits
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.passes.base import Forbid, Pass, option
from qeff_compiler.passes.registry import register_pass

aten = torch.ops.aten
#: values of the `dtype` option
CACHE_DTYPES = ("auto", "fp16", "mxint8")
LOGITS_CHOICES = ("last", "all")


@dataclasses.dataclass(frozen=True)
class KVCacheOptions:
    ctx_len: int | None = option(None, "cache length in tokens (required; ≤ max_seq_len, ≥ the program's seq len)")
    dtype: str = option(
        "auto",
        "what the cache stores: auto (the activation dtype), fp16, or mxint8 (OCP MXINT8 values, 32-element blocks "
        "along head_dim, held dequantized in activation-dtype tensors)",
    )

    logits: str = option("last", "which positions get logits: last (each row's last valid one) or all")

    def __post_init__(self) -> None:
        """Refuse a bad value when the pipeline is built, not when the pass runs."""
        if self.dtype not in CACHE_DTYPES:
            raise PassOptionError(f"kv-cache option dtype={self.dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
        if self.logits not in LOGITS_CHOICES:
            raise PassOptionError(f"kv-cache option logits={self.logits!r} is not one of {', '.join(LOGITS_CHOICES)}")


@register_pass
class KVCache(Pass):
    name = "kv-cache"
    summary = "add a static ctx_len KV cache written by position; logits for the last valid position only"
    Options: ClassVar[type] = KVCacheOptions
    requires: ClassVar[frozenset[str]] = frozenset({"attention-patched"})
    ensures: ClassVar[frozenset[str]] = frozenset({"kv-cache"})
    forbids: ClassVar[tuple[Forbid, ...]] = (
        Forbid(
            ("kv-cache",), "kv-cache runs on a program that has a KV cache already: the pipeline names kv-cache twice"
        ),
    )
    tolerance = 1e-5
    #: the tolerance with an fp16 cache or activations. On an fp16-activation program attending over ctx_len
    #: slots instead of seq_len changes the fp32 accumulation order, which can move a value across an fp16
    #: rounding boundary (one ulp: 2^-6 at 16); measured 2.4e-4 on the shipped model's logits. dtype=fp16 over
    #: fp32 activations rounds every key and value to fp16 (2^-11 relative): measured on the verifier's sample
    #: inputs (batch 2, seq 8, ctx 32, sample seeds 0 and 1) 1.3e-4 … 1.9e-3 on random tiny MPTs of
    #: tests/conftest.py (std-0.2 weights; 2-3 layers, 3/4/5/16 heads, head_dim 4 or 8, clip_qkv; weight seeds 0
    #: and 1), ≤ 5.7e-3 with head_dim 40 or 64, and 1.1e-3 … 1.6e-3 on the shipped TINY_MPT
    fp16_tolerance = 2e-2
    #: the tolerance with dtype=mxint8: each key and value moves by half an element step at most, ≤ 2^-7 of its
    #: block's largest magnitude. Measured as above, fp32 and fp16 activations (both pass orders): 6.4e-3 …
    #: 6.5e-2 on the head_dim 4/8 tiny MPTs, ≤ 0.115 with head_dim 40 (d_model 80), ≤ 0.33 with head_dim 64
    #: (d_model 128: std-0.2 weights make its scores far larger than a trained model's), and 3.0e-2 … 3.6e-2 on
    #: the shipped TINY_MPT, whose logits reach ±11.6. 0.5 leaves ≥ 4× over all but the d_model-128 model (1.5×)
    mxint8_tolerance = 0.5

    #: the tolerance once activations are int8 (`lower-w8a8` ran first): attending over ctx_len slots changes the
    #: fp32 summation order, an fp16 ulp here and there, which can flip an int8 activation code downstream.
    #: Measured 0.0625 on the shipped model and up to 0.070 over random tiny MPTs and alphas 0 … 1
    w8a8_tolerance = 0.25

    def tolerance_for(self, program: Program) -> float:
        if self.options.dtype == "mxint8":
            return max(self.mxint8_tolerance, self.w8a8_tolerance if "w8a8" in program.properties else 0.0)
        if "w8a8" in program.properties:
            return self.w8a8_tolerance
        if self.options.dtype == "fp16" or "fp16-activations" in program.properties:
            return self.fp16_tolerance
        return self.tolerance

    def transform(self, program: Program) -> Program:
        ctx_len = self._checked_ctx_len(program)
        graph_module = program.copy_graph()
        graph = graph_module.graph
        config = program.config
        (input_ids,) = [s for s in program.inputs if s.role == "input_ids"]
        batch, seq_len = input_ids.shape
        head_dim = config.d_model // config.n_heads
        dtype = torch.float16 if self.options.dtype == "fp16" else _activation_dtype(program)
        cache_format = {"kv_cache_format": "mxint8"} if self.options.dtype == "mxint8" else {}

        positions = add_placeholder(graph, "position_ids", ("input", "position_ids"))
        inputs = [*program.inputs, TensorSpec("position_ids", (batch, seq_len), torch.int64, "position_ids")]
        (logits,) = [s for s in program.outputs if s.role == "logits"]
        outputs = [_last_position_logits(graph, positions, program) if self.options.logits == "last" else logits]
        caches: list[torch.fx.Node] = []
        attention_nodes = sorted(graph.find_nodes(op="call_function", target=ATTENTION), key=lambda n: n.meta[LAYER])
        if len(attention_nodes) != config.n_layers:
            raise VerificationError(
                f"kv-cache: found {len(attention_nodes)} fused attention ops, expected {config.n_layers}"
            )
        for node in attention_nodes:
            layer = node.meta[LAYER]
            cache_shape = (batch, node.kwargs["n_heads"], ctx_len, head_dim)  # `prune` may have removed heads
            past = {}
            for kind in ("key", "value"):
                name = f"past_{kind}.{layer}"
                past[kind] = add_placeholder(graph, f"past_{kind}_{layer}", ("input", name))
                inputs.append(TensorSpec(name, cache_shape, dtype, f"past_{kind}"))
                outputs.append(TensorSpec(f"{name}_RetainedState", cache_shape, dtype, f"retained_{kind}"))
            hidden, wqkv, out_proj, slopes = node.args
            with graph.inserting_after(node):
                stateful = graph.call_function(
                    ATTENTION_KV,
                    (hidden, wqkv, out_proj, slopes, positions, past["key"], past["value"]),
                    {**node.kwargs, **cache_format},
                )
            stateful.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", LAYER)})
            with graph.inserting_after(stateful):
                attention_output = graph.call_function(operator.getitem, (stateful, 0))
                key_cache = graph.call_function(operator.getitem, (stateful, 1))
                value_cache = graph.call_function(operator.getitem, (stateful, 2))
            node.replace_all_uses_with(attention_output)
            graph.erase_node(node)
            caches += [key_cache, value_cache]
        (output_node,) = graph.find_nodes(op="output")
        output_node.args = ((output_node.args[0][0], *caches),)
        graph_module.recompile()
        return program.evolve(graph_module=graph_module, inputs=tuple(inputs), outputs=tuple(outputs))

    def _checked_ctx_len(self, program: Program) -> int:
        ctx_len = self.options.ctx_len
        if ctx_len is None:
            raise PassOptionError("kv-cache needs its ctx_len option, e.g. kv-cache{ctx_len=128}")
        (input_ids,) = [s for s in program.inputs if s.role == "input_ids"]
        seq_len, max_seq_len = input_ids.shape[1], program.config.max_seq_len
        if ctx_len > max_seq_len:
            raise InvalidArgumentError(f"ctx_len={ctx_len} exceeds the model's max_seq_len={max_seq_len}")
        if ctx_len < seq_len:
            raise InvalidArgumentError(f"ctx_len={ctx_len} is smaller than the program's sequence length {seq_len}")
        return ctx_len


def _activation_dtype(program: Program) -> torch.dtype:
    """The cache stores activations: fp16 once `lower-fp16` ran (its logits output stays fp32), else the logits'."""
    if "fp16-activations" in program.properties:
        return torch.float16
    (logits,) = [s for s in program.outputs if s.role == "logits"]
    return logits.dtype


def _last_position_logits(graph: torch.fx.Graph, positions: torch.fx.Node, program: Program) -> TensorSpec:
    """Make the lm_head read only each row's last valid position (the largest position id)."""
    (output_node,) = graph.find_nodes(op="output")
    lm_head = output_node.args[0][0]
    while lm_head.target == aten._to_copy.default:  # lower-fp16 ran first: look through the logits' fp16 round trip
        lm_head = lm_head.args[0]
    if not traits(lm_head.target).linear:
        raise VerificationError(f"kv-cache: logits come from {lm_head.format_node()}, expected the lm_head linear")
    hidden = lm_head.args[0]
    (logits,) = [s for s in program.outputs if s.role == "logits"]
    batch, _, vocab = logits.shape
    d_model = program.config.d_model
    with graph.inserting_before(lm_head):
        last = graph.call_function(aten.argmax.default, (positions, 1, True))
        index = graph.call_function(
            aten.expand.default, (graph.call_function(aten.unsqueeze.default, (last, 2)), [batch, 1, d_model])
        )
        last_hidden = graph.call_function(aten.gather.default, (hidden, 1, index))
    lm_head.replace_input_with(hidden, last_hidden)
    return TensorSpec("logits", (batch, 1, vocab), logits.dtype, "logits")
