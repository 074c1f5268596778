"""`compute-context-length`: attention reads only the first N cache positions, N the length of an input.

QEfficient's compute-context-length (CCL) buckets: a new input `comp_ctx_lengths` INT64 [N] (its values are
unused; its length N is the bucket). Every cached attention op reads positions 0..N−1 of the cache only, a real
slice, so a call at a small bucket does less work; writes still go to the full ctx_len cache. The caller picks N
above every position the call writes (`runtime.slots` takes the smallest bucket that does); a position at or
beyond N is refused by the op.

The numeric check runs both programs on sample inputs with positions 0..s−1 over an empty cache and
`comp_ctx_lengths` of length s, the smallest valid bucket: every position it cuts is one the plain program masks.

Before:
    %mpt_attention_kv = qeff.mpt_attention_kv(..., %position_ids, %past_key_0, %past_value_0, n_heads=4, ...)
After:
    %mpt_attention_kv = qeff.mpt_attention_kv(..., %position_ids, %past_key_0, %past_value_0, n_heads=4, ...,
        comp_ctx_lengths=%comp_ctx_lengths)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from qeff_compiler.ir.graph_utils import feed_input_to_calls
from qeff_compiler.ir.ops import ATTENTION_KV
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.passes.base import Forbid, Pass
from qeff_compiler.passes.registry import register_pass

#: the input whose length is the bucket, as QEfficient names it
COMP_CTX_LENGTHS = "comp_ctx_lengths"


@register_pass
class ComputeContextLength(Pass):
    name = "compute-context-length"
    summary = "attention reads only the first N cache positions, N the length of a comp_ctx_lengths input"
    requires: ClassVar[frozenset[str]] = frozenset({"kv-cache"})
    ensures: ClassVar[frozenset[str]] = frozenset({"compute-context-length"})
    forbids: ClassVar[tuple[Forbid, ...]] = (
        Forbid(("compute-context-length",), "the pipeline names compute-context-length twice"),
    )
    #: the cut positions are masked ones (exp underflows to exactly 0); only the softmax's summation order changes
    tolerance = 1e-5

    def transform(self, program: Program) -> Program:
        graph_module = program.copy_graph()
        feed_input_to_calls(graph_module, COMP_CTX_LENGTHS, ATTENTION_KV)
        ctx_len = next(s.shape[2] for s in program.inputs if s.role == "past_key")
        spec = TensorSpec(COMP_CTX_LENGTHS, (ctx_len,), torch.int64, COMP_CTX_LENGTHS)
        return program.evolve(graph_module=graph_module, inputs=(*program.inputs, spec))
