"""Host executor: run a Program's graph on torch tensors on this machine's CPU.

It is the numerical reference every later stage is checked against: the pass manager's numeric verification,
the tests, and (later) the simulated device's exact numerics all run programs through it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from qeff_compiler.errors import ProgramInputError
from qeff_compiler.ir.program import BINDING, Program


class HostExecutor:
    """Binds a Program's weights once, then runs it on named inputs as often as asked."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._bindings = [node.meta[BINDING] for node in program.graph.find_nodes(op="placeholder")]
        weight_names = [name for kind, name in self._bindings if kind == "weight"]
        self._weights = program.weights.materialize(weight_names)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on `inputs` (by input spec name); returns the outputs by output spec name."""
        self._check_inputs(inputs)
        args = [self._weights[name] if kind == "weight" else inputs[name] for kind, name in self._bindings]
        with torch.no_grad():
            results = self.program.graph_module(*args)
        return {spec.name: value for spec, value in zip(self.program.outputs, results, strict=True)}

    def _check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        expected = {spec.name: spec for spec in self.program.inputs}
        missing, extra = sorted(set(expected) - set(inputs)), sorted(set(inputs) - set(expected))
        if missing or extra:
            raise ProgramInputError(f"program inputs are {sorted(expected)}; missing {missing}, unexpected {extra}")
        for name, spec in expected.items():
            value = inputs[name]
            if not isinstance(value, torch.Tensor):
                raise ProgramInputError(f"input {name!r} must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
                raise ProgramInputError(
                    f"input {name!r} must be {spec.describe()}, got {value.dtype} {list(value.shape)}"
                )


def run_program(program: Program, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `program` once on the host (binds its weights for this call only)."""
    return HostExecutor(program)(inputs)
