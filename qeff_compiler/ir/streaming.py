"""Run a Program reading each weight only when an op needs it, so a 7B model runs in the memory of one layer.

The host executor folds weight-only values (fp16 → fp32 casts, dequantized weights) once and keeps them: at 7B
that is 28 GB of fp32. `StreamingInterpreter` instead defers every weight-only value and computes it from the
weight store at each op that reads it, dropping it when the op is done (torch.fx's Interpreter frees values
after their last use). Slow — each weight is re-read and re-decoded per call — but its memory is flat in model
size. The pass manager's fp16 overflow check and host runs of streaming stores use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx
from torch.fx.node import map_aggregate

from qeff_compiler.ir.graph_utils import weight_only_nodes
from qeff_compiler.ir.program import BINDING, Program


class _Deferred:
    """A weight-only value not computed yet."""

    def __init__(self, node: torch.fx.Node) -> None:
        self.node = node


class StreamingInterpreter(torch.fx.Interpreter):
    """A torch.fx Interpreter over a Program whose weight-only values are computed at each use, then freed."""

    def __init__(self, program: Program) -> None:
        super().__init__(program.graph_module)
        self.program = program
        self._weight_only = weight_only_nodes(program.graph)

    def run_program(self, inputs: Mapping[str, torch.Tensor]) -> tuple[Any, ...]:
        """Run on user inputs by name; weights come from the program's store."""
        bindings = [node.meta[BINDING] for node in self.program.graph.find_nodes(op="placeholder")]
        args = [inputs[name] if kind == "input" else None for kind, name in bindings]
        with torch.no_grad():
            return tuple(self.run(*args))

    def run_node(self, node: torch.fx.Node) -> Any:
        if node in self._weight_only:
            if node.op == "placeholder":
                next(self.args_iter)  # keep the positional arguments of later placeholders aligned
            return _Deferred(node)
        with self._set_current_node(node):
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            args, kwargs = map_aggregate((args, kwargs), self._resolve)
            return getattr(self, node.op)(node.target, args, kwargs)

    def _resolve(self, value: Any) -> Any:
        """A deferred value computed now (recursively from the weights it depends on); others as they are."""
        if not isinstance(value, _Deferred):
            return value
        node = value.node
        if node.op == "placeholder":
            return self.program.weights.tensor(node.meta[BINDING][1])
        args, kwargs = map_aggregate((node.args, node.kwargs), self._resolve_node)
        target: Callable[..., Any] = node.target  # type: ignore[assignment]  # call_function: an operator
        return target(*args, **kwargs)

    def _resolve_node(self, value: Any) -> Any:
        return self._resolve(_Deferred(value)) if isinstance(value, torch.fx.Node) else value
