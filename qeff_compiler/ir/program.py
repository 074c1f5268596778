"""`Program`: the unit every stage of the compiler takes and returns.

A Program is a pure function graph (a `torch.fx.GraphModule` at ATen level) plus what it needs to run: the
weight store its weight placeholders name, the MPT config it came from, and named input/output specs. Each
placeholder carries a binding in `node.meta[BINDING]`: `("weight", name)` for a weight in the store, or
`("input", name)` for a user input named like the ONNX I/O convention (`input_ids`, `past_key.0`, ...).
`properties` records what passes have established (e.g. "attention-patched"), so passes can state what they
require and the manager can reject a pipeline in the wrong order.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.fx
from transformers import MptConfig

from qeff_compiler.ir.weights import WeightStore

#: key of the placeholder binding in `node.meta`
BINDING = "qeff_binding"

Binding = tuple[Literal["weight", "input"], str]


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input or output: static shape, dtype, and its role in the I/O convention."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    role: str

    def describe(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.name}: {dtype_short_name(self.dtype)}[{dims}]"


@dataclass(frozen=True)
class Program:
    """A captured or transformed MPT program. Treat as immutable: passes return new Programs."""

    graph_module: torch.fx.GraphModule
    weights: WeightStore
    config: MptConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    properties: frozenset[str] = field(default_factory=frozenset)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.graph_module.graph

    @property
    def has_weight_data(self) -> bool:
        """True when numerics can run (not a config-only meta capture)."""
        return self.weights.has_data

    def copy_graph(self) -> torch.fx.GraphModule:
        """A private deep copy of the graph for a pass to edit without touching this Program."""
        return copy.deepcopy(self.graph_module)

    def evolve(self, **changes: Any) -> Program:
        """A new Program with the given fields replaced (dataclasses.replace with a name that reads well)."""
        return replace(self, **changes)

    def weight_placeholders(self) -> dict[str, str]:
        """Placeholder node name → weight name, for every weight the graph reads."""
        return {
            node.name: node.meta[BINDING][1]
            for node in self.graph.find_nodes(op="placeholder")
            if node.meta[BINDING][0] == "weight"
        }

    def op_histogram(self) -> Counter[str]:
        """How many times each operator is called, by short name (e.g. `aten.linear`)."""
        return Counter(op_short_name(n.target) for n in self.graph.nodes if n.op == "call_function")

    def num_parameters(self) -> int:
        """Distinct weight elements the graph reads (tied weights counted once)."""
        return self.weights.distinct_numel(self.weight_placeholders().values())


def op_short_name(target: object) -> str:
    """`torch.ops.aten.linear.default` → `aten.linear`; other callables → their qualified name."""
    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target.name().split("::")
        return f"{namespace}.{name.split('.')[0]}"
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


_DTYPE_SHORT = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}


def dtype_short_name(dtype: torch.dtype) -> str:
    return _DTYPE_SHORT.get(dtype, str(dtype).removeprefix("torch."))
