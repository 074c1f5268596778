"""`continuous-batching{full_batch_size=F}`: the cache holds F slots; each input row names the slot it uses.

QEfficient's continuous batching: a new input `batch_index` INT64 [batch, 1] and caches of `full_batch_size` rows
(`past_key.{i}` [F, n_heads, ctx_len, head_dim]). Prefill runs one request (batch 1) and writes its slot
`batch_index`; decode runs all F slots (batch F, `batch_index` 0..F−1). Every cached attention op gets the
`batch_index` operand: it writes and reads its rows' slots, and the other slots pass through unchanged.

The numeric check compares with the program before the pass on sample inputs whose `batch_index` names slots
0..b−1 (`ir.samples`): those cache rows and the logits must match, and every other slot must stay untouched.

Before:
    %mpt_attention_kv = qeff.mpt_attention_kv(..., %position_ids, %past_key_0, %past_value_0, n_heads=4, ...)
        : (f32[1,8,32], f32[1,4,128,8], f32[1,4,128,8])
After (full_batch_size=4):
    %mpt_attention_kv = qeff.mpt_attention_kv(..., %position_ids, %past_key_0, %past_value_0, n_heads=4, ...,
        batch_index=%batch_index) : (f32[1,8,32], f32[4,4,128,8], f32[4,4,128,8])
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from qeff_compiler.errors import InvalidArgumentError, PassOptionError
from qeff_compiler.ir.graph_utils import feed_input_to_calls
from qeff_compiler.ir.ops import ATTENTION_KV
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.passes.base import Forbid, Pass, option
from qeff_compiler.passes.registry import register_pass

#: the input naming each row's slot, as QEfficient names it
BATCH_INDEX = "batch_index"
_CACHE_ROLES = ("past_key", "past_value", "retained_key", "retained_value")


@dataclasses.dataclass(frozen=True)
class ContinuousBatchingOptions:
    full_batch_size: int | None = option(None, "cache slots (required; ≥ the program's batch)")


@register_pass
class ContinuousBatching(Pass):
    name = "continuous-batching"
    summary = "caches of full_batch_size slots; a batch_index input names each row's slot"
    Options: ClassVar[type] = ContinuousBatchingOptions
    requires: ClassVar[frozenset[str]] = frozenset({"kv-cache"})
    ensures: ClassVar[frozenset[str]] = frozenset({"continuous-batching"})
    forbids: ClassVar[tuple[Forbid, ...]] = (
        Forbid(("continuous-batching",), "the pipeline names continuous-batching twice"),
    )
    #: rows run the same ops on the same values; only which cache row they read and write changes
    tolerance = 0.0

    def transform(self, program: Program) -> Program:
        slots = self.options.full_batch_size
        if slots is None:
            raise PassOptionError("continuous-batching needs its full_batch_size option, e.g. {full_batch_size=4}")
        (ids,) = [s for s in program.inputs if s.role == "input_ids"]
        if not isinstance(slots, int) or slots < ids.shape[0]:
            raise InvalidArgumentError(
                f"full_batch_size={slots} is smaller than the program's batch {ids.shape[0]}: every row needs a slot"
            )
        graph_module = program.copy_graph()
        feed_input_to_calls(graph_module, BATCH_INDEX, ATTENTION_KV)

        def widened(spec: TensorSpec) -> TensorSpec:
            return dataclasses.replace(spec, shape=(slots, *spec.shape[1:])) if spec.role in _CACHE_ROLES else spec

        inputs = (*map(widened, program.inputs), TensorSpec(BATCH_INDEX, (ids.shape[0], 1), torch.int64, BATCH_INDEX))
        outputs = tuple(map(widened, program.outputs))
        return program.evolve(graph_module=graph_module, inputs=inputs, outputs=outputs)
