"""`check-fp16-range`: find where a program's activations leave fp16's range, before lowering it to fp16 makes
them inf. An analysis: the program is returned unchanged (with property `fp16-range-checked`), or the pass fails
with `Fp16OverflowError` naming the first overflowing layer and op. `lower-fp16` runs it first unless the program
was checked already (or `lower-fp16{check_overflow=false}`); a program without weight data (meta) has no values
to check.

`find_fp16_overflow` runs the program node by node (a `torch.fx.Interpreter` that streams weights) on sample inputs
and reports the first node, in graph order, with a floating output element beyond ±65504 — the largest finite fp16
value. On an fp32 program that is the value the device would overflow on; on an fp16-lowered program the report
lands on the node before its fp16 round trip (the value before rounding), since later nodes only see the resulting inf.

A fused attention op is one node: an overflow inside it (e.g. in its QKV projection) shows only through its
outputs — directly when they are out of range, or as inf/NaN when the op runs with `fp16_activations`.

Before:
    %linear_6 = aten.linear(%layer_norm_3, %p_model_transformer_blocks_1_ffn_up_proj_weight) : f32[1,8,128]
After (unchanged, or Fp16OverflowError):
    %linear_6 = aten.linear(%layer_norm_3, %p_model_transformer_blocks_1_ffn_up_proj_weight) : f32[1,8,128]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx

from qeff_compiler.errors import Fp16OverflowError
from qeff_compiler.ir.program import Program, op_short_name
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.ir.streaming import StreamingInterpreter
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.registry import register_pass

#: largest finite fp16 magnitude
FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True)
class OverflowReport:
    """The first node whose output does not fit fp16."""

    node: str
    op: str
    #: module path the node was traced in, e.g. `transformer.blocks.2.ffn.up_proj` ("" when unknown)
    layer: str
    max_abs: float
    #: the output holds NaN (counted as inf in `max_abs`), which the message must say rather than "|x| = inf"
    has_nan: bool = False

    def describe(self) -> str:
        where = self.layer or "outside any module"
        if self.has_nan:
            return f"%{self.node} ({self.op}) in {where} produces NaN"
        return f"%{self.node} ({self.op}) in {where} reaches |x| = {self.max_abs:.4g} > {FP16_MAX:g}"


def find_fp16_overflow(
    program: Program, inputs: Mapping[str, torch.Tensor] | None = None, seed: int = 0
) -> OverflowReport | None:
    """The first node of `program` whose floating output exceeds fp16's range on `inputs` (default: the
    program's sample inputs for `seed`); None when every value fits."""
    inputs = dict(inputs) if inputs is not None else sample_inputs(program, seed)
    finder = _OverflowFinder(program)
    finder.run_program(inputs)
    return finder.report


@register_pass
class CheckFp16Range(Pass):
    name = "check-fp16-range"
    summary = "analysis: fail (naming layer and op) if activations exceed fp16's ±65504 on sample inputs"
    ensures: ClassVar[frozenset[str]] = frozenset({"fp16-range-checked"})
    tolerance = 0.0  # the program is returned as it is

    def transform(self, program: Program) -> Program:
        overflow = find_fp16_overflow(program) if program.has_weight_data else None
        if overflow is not None:
            raise Fp16OverflowError(f"lower-fp16: activations overflow fp16: {overflow.describe()}")
        return program


class _OverflowFinder(StreamingInterpreter):
    """Runs the graph (reading weights as ops need them, so a 7B checkpoint is checked in little memory) and
    remembers the first call_function node with an out-of-range floating output."""

    def __init__(self, program: Program) -> None:
        super().__init__(program)
        self.report: OverflowReport | None = None

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        if self.report is None and node.op == "call_function":
            largest = _max_abs(result)
            if largest > FP16_MAX:
                nan = any(
                    isinstance(t, torch.Tensor) and t.is_floating_point() and bool(t.isnan().any())
                    for t in _tensors(result)
                )
                self.report = OverflowReport(node.name, op_short_name(node.target), module_path(node), largest, nan)
        return result


def _tensors(value: object) -> tuple | list:
    return value if isinstance(value, (tuple, list)) else (value,)


def _max_abs(value: object) -> float:
    """Largest magnitude over the floating tensors in `value` (a tensor or a tuple of them); NaN counts as inf."""
    largest = 0.0
    for tensor in _tensors(value):
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            magnitude = tensor.detach().abs().nan_to_num(nan=float("inf")).max().item()
            largest = max(largest, magnitude)
    return largest


def module_path(node: torch.fx.Node) -> str:
    """The innermost module `node` was traced in, named like the model's weights (`transformer.blocks.1.ffn`).

    Capture wraps the HF model as the attribute `model`, so recorded paths start with `model.`; that is dropped.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return path.removeprefix("model.")
