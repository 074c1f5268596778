"""The numeric check the pass manager runs after every pass (the structural checks and shape refresh every pass
run gets are `ir.validate`'s): when weights are real, `compare_outputs` runs both programs on the same sample
inputs and fails if any shared output moved by more than the pass's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qeff_compiler.errors import VerificationError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.samples import sample_inputs


@dataclass(frozen=True)
class NumericComparison:
    """Largest absolute difference per shared output between two programs on the same sample inputs."""

    max_abs_diff: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def reference_outputs(program: Program, seed: int) -> dict[str, torch.Tensor]:
    """The outputs the numeric check compares against: the program run on its sample inputs, computing each
    weight-only value (fp16 casts, dequantized weights) where it is read, so checking a lowered program holds
    no fp32 copy of its weights beside the store."""
    return HostExecutor(program, fold=False)(sample_inputs(program, seed))


def _sampled_slots(state: torch.Tensor, rows: int, after: str, name: str) -> torch.Tensor:
    """The first `rows` slots of a widened cache (the samples' rows write slots 0..rows-1); every other slot must
    still hold the samples' empty (zero) cache."""
    if state[rows:].count_nonzero():
        raise VerificationError(f"after {after}: output {name} changed slots no input row names")
    return state[:rows]


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
        if now.shape[1:] == before.shape[1:] and now.shape[0] > before.shape[0] and name.endswith("_RetainedState"):
            now = _sampled_slots(now, before.shape[0], after, name)  # continuous batching: row i wrote slot i
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
