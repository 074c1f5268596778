"""Intermediate representation: Program, weight store, printer, sample inputs."""

from qeff_compiler.ir.program import BINDING, Program, TensorSpec
from qeff_compiler.ir.weights import WeightSpec, WeightStore

__all__ = ["BINDING", "Program", "TensorSpec", "WeightSpec", "WeightStore"]
