"""Host executor: run a Program's graph on torch tensors on this machine's CPU.

It is the numerical reference every later stage is checked against: the pass manager's numeric verification,
the tests, and (later) the simulated device's exact numerics all run programs through it.

Values computed from weights alone (fp16 weights cast to fp32, quantized weights dequantized) are the same on
every call, so the executor computes them once when it binds the weights and runs a graph that reads them as
inputs. It also selects host kernels that need weights prepared once: each `qeff::linear_w8a16` runs on its weight
packed for oneDNN's exact int8 GEMM (`numerics.int8.PreparedW8A16`), the op's reference computation without
re-packing per call. A quantized program thus runs on the host at least as fast as an fp32 one.

A program whose weight store is streaming (a real-size checkpoint) is run by `StreamingInterpreter` instead:
nothing is folded or held, each weight is read when an op needs it — slow, but in the memory of one layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx

from qeff_compiler.errors import ProgramInputError
from qeff_compiler.ir.fx_sources import forget_dead_sources
from qeff_compiler.ir.graph_utils import erase_dead_code, weight_only_nodes
from qeff_compiler.ir.ops import ATTENTION_KV, LINEAR_W8A16
from qeff_compiler.ir.ops.attention import ReadBuffers, attention_kv
from qeff_compiler.ir.program import BINDING, Program, TensorSpec
from qeff_compiler.ir.streaming import StreamingInterpreter
from qeff_compiler.numerics.int8 import PreparedW8A16, prepare_w8a16

#: binding kind of a placeholder that reads a value folded from weights
_FOLDED = "folded"


class HostExecutor:
    """Binds a Program's weights once (folding weight-only computations), then runs it on named inputs.

    `donate_caches=True` is for a caller that owns its KV cache and only ever feeds a call's RetainedState
    outputs back (a generation loop): each cached attention writes into its past_key / past_value inputs and
    returns them, instead of copying the whole cache per layer per call. The inputs are then changed.
    `fold=False` runs like a streaming store (each weight-only value computed where it is read, then freed): one
    run holds no fp32 copy of fp16 or quantized weights, which is what a numeric check needs."""

    def __init__(self, program: Program, *, donate_caches: bool = False, fold: bool = True) -> None:
        self.program = program
        forget_dead_sources()  # executors are made per load and per check: old graphs' sources go now
        #: a streaming store (real-size checkpoint) runs without folding, reading each weight as an op needs it
        self._streaming = StreamingInterpreter(program) if program.weights.streaming or not fold else None
        if self._streaming is not None:
            return
        self._graph_module, folded = _fold_weight_computations(program)
        _use_prepared_int8_linears(self._graph_module, folded)
        if donate_caches:
            _write_caches_in_place(self._graph_module)
        self._bindings = [node.meta[BINDING] for node in self._graph_module.graph.find_nodes(op="placeholder")]
        self._constants = folded

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on `inputs` (by input spec name); returns the outputs by output spec name."""
        check_inputs(self.program, inputs)
        if self._streaming is not None:
            results = self._streaming.run_program(inputs)
        else:
            args = [inputs[name] if kind == "input" else self._constants[name] for kind, name in self._bindings]
            with torch.no_grad():
                results = self._graph_module(*args)
        return {spec.name: value for spec, value in zip(self.program.outputs, results, strict=True)}


def check_inputs(program: Program, inputs: Mapping[str, torch.Tensor]) -> None:
    """Refuse missing, unexpected, non-tensor or wrongly shaped/typed inputs, naming the input."""
    expected = {spec.name: spec for spec in program.inputs}
    missing, extra = sorted(set(expected) - set(inputs)), sorted(set(inputs) - set(expected))
    if missing or extra:
        raise ProgramInputError(f"program inputs are {sorted(expected)}; missing {missing}, unexpected {extra}")
    for name, spec in expected.items():
        value = inputs[name]
        if not isinstance(value, torch.Tensor):
            raise ProgramInputError(f"input {name!r} must be a torch.Tensor, got {type(value).__name__}")
        if spec.role == "comp_ctx_lengths":
            _check_bucket(spec, value)
            continue
        if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
            raise ProgramInputError(f"input {name!r} must be {spec.describe()}, got {value.dtype} {list(value.shape)}")


def _check_bucket(spec: TensorSpec, value: torch.Tensor) -> None:
    """`comp_ctx_lengths` is a context bucket: only its length counts, 1 up to the cache length."""
    if value.dim() != 1 or value.dtype != spec.dtype or not 1 <= value.shape[0] <= spec.shape[0]:
        raise ProgramInputError(
            f"input {spec.name!r} must be int64[N] with 1 <= N <= {spec.shape[0]} (N is the context bucket), "
            f"got {value.dtype} {list(value.shape)}"
        )


def run_program(program: Program, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `program` once on the host (binds its weights for this call only)."""
    return HostExecutor(program)(inputs)


def _fold_weight_computations(program: Program) -> tuple[torch.fx.GraphModule, dict[str, torch.Tensor]]:
    """A copy of the graph in which every value computed from weights alone, and read by a node that also
    depends on inputs, is a placeholder; and the values of all such placeholders (weights included) by name."""
    graph_module = program.copy_graph()
    graph = graph_module.graph
    values: dict[torch.fx.Node, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    weight_names = [
        name for kind, name in (n.meta[BINDING] for n in graph.find_nodes(op="placeholder")) if kind == "weight"
    ]
    tensors = program.weights.materialize(weight_names)
    weight_only = weight_only_nodes(graph)
    for node in graph.nodes:
        if node not in weight_only:
            continue
        if node.op == "placeholder":
            values[node] = tensors[node.meta[BINDING][1]]
        else:
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
    first_input = next(n for n in graph.find_nodes(op="placeholder") if n.meta[BINDING][0] == "input")
    for node, value in values.items():
        if node.op == "placeholder":
            constants[node.meta[BINDING][1]] = value
            continue
        if all(user in values for user in node.users):
            continue  # only other weight computations read it
        with graph.inserting_before(first_input):
            folded = graph.placeholder(f"folded_{node.name}")
        folded.meta[BINDING] = (_FOLDED, folded.name)
        node.replace_all_uses_with(folded)
        constants[folded.name] = value
    erase_dead_code(graph)
    for node in graph.find_nodes(op="placeholder"):
        if not node.users and node.meta[BINDING][0] != "input":
            graph.erase_node(node)
    graph_module.recompile()
    return graph_module, constants


class _DonatingAttention(torch.nn.Module):
    """Cached attention that writes the donated cache in place and casts what it reads into buffers kept
    between calls (shared by the layers, which run one after another)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_buffers = ReadBuffers()

    def forward(self, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attention_kv(*args, **kwargs, in_place=True, read_buffers=self.read_buffers)  # type: ignore[arg-type]


def _write_caches_in_place(graph_module: torch.fx.GraphModule) -> None:
    """Run every cached attention in place (see `HostExecutor`'s donate_caches)."""
    graph = graph_module.graph
    graph_module.add_submodule("donating_attention", _DonatingAttention())
    for node in list(graph.find_nodes(op="call_function", target=ATTENTION_KV)):
        with graph.inserting_before(node):
            call = graph.call_module("donating_attention", node.args, node.kwargs)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph_module.recompile()


class _PreparedLinear(torch.nn.Module):
    """A W8A16 linear whose weight was packed once (a module, so the graph can call it)."""

    def __init__(self, prepared: PreparedW8A16) -> None:
        super().__init__()
        self.prepared = prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prepared(x)


def _use_prepared_int8_linears(graph_module: torch.fx.GraphModule, constants: Mapping[str, torch.Tensor]) -> None:
    """Replace each `linear_w8a16` whose weight parts are bound constants by a call of its prepared kernel."""
    graph = graph_module.graph
    modules: dict[tuple[str, str], str] = {}
    for node in list(graph.find_nodes(op="call_function", target=LINEAR_W8A16)):
        x, qweight, scales = node.args
        key = (qweight.meta[BINDING][1], scales.meta[BINDING][1])
        if key not in modules:
            modules[key] = f"w8a16_linear_{len(modules)}"
            graph_module.add_submodule(
                modules[key], _PreparedLinear(prepare_w8a16(constants[key[0]], constants[key[1]]))
            )
        with graph.inserting_before(node):
            call = graph.call_module(modules[key], (x,))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    for node in graph.find_nodes(op="placeholder"):
        if not node.users and node.meta[BINDING][0] != "input":
            graph.erase_node(node)
    graph_module.recompile()
