"""Checks the pass manager runs after every pass.

1. `check_structure`: torch.fx graph lint plus the Program's own invariants (every placeholder bound, every
   bound weight present in the store, inputs and outputs matching the specs).
2. `propagate_shapes`: re-derive every node's shape and dtype with fake tensors (no memory, works on meta
   programs at 30B scale) and check the graph still produces the declared outputs.
3. `compare_outputs`: when weights are real, run both programs on the same sample inputs and fail if any shared
   output moved by more than the pass's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from qeff_compiler.errors import VerificationError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.ir.samples import sample_inputs


def check_structure(program: Program, after: str) -> None:
    """Lint the graph and check placeholder bindings and output arity against the program's specs."""
    try:
        program.graph.lint()
    except RuntimeError as exc:
        raise VerificationError(f"graph lint failed after {after}: {exc}") from exc
    input_names = [spec.name for spec in program.inputs]
    bound_inputs = []
    for node in program.graph.find_nodes(op="placeholder"):
        if BINDING not in node.meta:
            raise VerificationError(f"after {after}: placeholder %{node.name} has no weight/input binding")
        kind, name = node.meta[BINDING]
        if kind == "weight" and name not in program.weights:
            raise VerificationError(f"after {after}: placeholder %{node.name} reads missing weight {name!r}")
        if kind == "input":
            bound_inputs.append(name)
    if sorted(bound_inputs) != sorted(input_names):
        raise VerificationError(f"after {after}: graph inputs {bound_inputs} do not match the specs {input_names}")
    (output_node,) = program.graph.find_nodes(op="output")
    results = output_node.args[0]
    if not isinstance(results, (tuple, list)) or len(results) != len(program.outputs):
        raise VerificationError(
            f"after {after}: graph returns {results!r}, but the program declares {len(program.outputs)} outputs"
        )


def propagate_shapes(program: Program, after: str) -> None:
    """Recompute `node.meta["val"]` with fake tensors and check the outputs' shapes and dtypes."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    specs = {spec.name: spec for spec in program.inputs}
    with mode:
        args = []
        for node in program.graph.find_nodes(op="placeholder"):
            kind, name = node.meta[BINDING]
            spec = program.weights[name] if kind == "weight" else specs[name]
            args.append(torch.empty(spec.shape, dtype=spec.dtype))
    try:
        results = FakeTensorProp(program.graph_module, mode).propagate_dont_convert_inputs(*args)
    except RuntimeError as exc:
        raise VerificationError(f"shape propagation failed after {after}: {exc}") from exc
    for spec, value in zip(program.outputs, results, strict=True):
        if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
            raise VerificationError(
                f"after {after}: output {spec.name} is {value.dtype} {list(value.shape)}, declared {spec.describe()}"
            )


@dataclass(frozen=True)
class NumericComparison:
    """Largest absolute difference per shared output between two programs on the same sample inputs."""

    max_abs_diff: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def reference_outputs(program: Program, seed: int) -> dict[str, torch.Tensor]:
    """The outputs the numeric check compares against: the program run on its sample inputs."""
    return HostExecutor(program)(sample_inputs(program, seed))


def compare_outputs(
    reference: dict[str, torch.Tensor], program: Program, seed: int, tolerance: float, after: str
) -> tuple[NumericComparison, dict[str, torch.Tensor]]:
    """Run `program` on the sample inputs and fail if a shared output differs from `reference` beyond tolerance.

    Returns the comparison and the new outputs (the reference for the next pass).
    """
    outputs = reference_outputs(program, seed)
    shared = sorted(set(reference) & set(outputs))
    if not shared:
        raise VerificationError(f"after {after}: no output in common with the previous stage to compare")
    diffs: dict[str, float] = {}
    for name in shared:
        before, now = reference[name], outputs[name]
        if name == "logits" and now.shape[1] == 1 < before.shape[1]:
            before = before[:, -1:]  # the stateful program returns the last valid position only (all are valid)
        if before.shape != now.shape:
            raise VerificationError(
                f"after {after}: output {name} changed shape {list(before.shape)} → {list(now.shape)}"
            )
        if not torch.isfinite(now).all() and torch.isfinite(before).all():
            raise VerificationError(f"after {after}: output {name} has non-finite values the previous stage had not")
        diffs[name] = (now.double() - before.double()).abs().max().item()
        if diffs[name] > tolerance:
            raise VerificationError(
                f"after {after}: output {name} differs from the previous stage by {diffs[name]:.3g} "
                f"(tolerance {tolerance:.3g}) on sample inputs (seed {seed})"
            )
    return NumericComparison(diffs), outputs
