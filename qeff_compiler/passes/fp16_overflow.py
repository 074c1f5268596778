"""Find where a program's activations leave fp16's range, before lowering it to fp16 makes them inf.

`find_fp16_overflow` runs the program node by node (a `torch.fx.Interpreter` that streams weights) on sample inputs and reports the
first node, in graph order, with a floating output element beyond ±65504 — the largest finite fp16 value. On an
fp32 program that is the value the device would overflow on; on an fp16-lowered program the report lands on the
node before its fp16 round trip (the value before rounding), since later nodes only see the resulting inf.

A fused attention op is one node: an overflow inside it (e.g. in its QKV projection) shows only through its
outputs — directly when they are out of range, or as inf/NaN when the op runs with `fp16_activations`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from qeff_compiler.ir.program import Program, op_short_name
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.ir.streaming import StreamingInterpreter

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

    def describe(self) -> str:
        where = self.layer or "outside any module"
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
                self.report = OverflowReport(node.name, op_short_name(node.target), module_path(node), largest)
        return result


def _max_abs(value: object) -> float:
    """Largest magnitude over the floating tensors in `value` (a tensor or a tuple of them); NaN counts as inf."""
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    largest = 0.0
    for tensor in tensors:
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
