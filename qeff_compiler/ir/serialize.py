"""A Program without its weights, as JSON: the graph node by node, the I/O specs and the properties.

An artifact stores its lowered programs this way so loading needs no re-trace and no pass pipeline. JSON (not
pickle, not generated Python) keeps loading free of code execution: a node's target is looked up by name among
registered torch operators (`aten::…`, `qeff::…`) and `operator.getitem`, nothing else. Values a node's arguments
hold are JSON scalars, lists, and tagged tuples and dtypes. Node metadata that is JSON-able (the weight/input
binding, the module stack, the layer index) is kept; shapes (`meta["val"]`) are derived again on load.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx
from transformers import MptConfig

# the qeff:: operators must be registered before a graph naming them is rebuilt
from qeff_compiler.ir import ops as _ops  # noqa: F401
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.ir.weights import WeightStore

#: version of the layout below; bump when it changes
GRAPH_FORMAT = 1
#: metadata not worth storing: source locations of the traced model
_DROPPED_META = frozenset({"stack_trace"})
_NAMESPACES = ("aten", "qeff")
_FUNCTIONS: dict[str, Callable[..., Any]] = {"operator.getitem": operator.getitem}
_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in vars(torch).values() if isinstance(dtype, torch.dtype)}


class GraphFormatError(ValueError):
    """A stored graph that does not decode; the artifact loader reports it as an artifact error."""


def program_to_dict(program: Program) -> dict[str, Any]:
    """Everything of `program` but its weight store and config, as JSON-able data."""
    return {
        "graph_format": GRAPH_FORMAT,
        "inputs": [_spec_to_dict(s) for s in program.inputs],
        "outputs": [_spec_to_dict(s) for s in program.outputs],
        "properties": sorted(program.properties),
        "nodes": [_node_to_dict(node) for node in program.graph.nodes],
    }


def program_from_dict(data: Mapping[str, Any], weights: WeightStore, config: MptConfig) -> Program:
    """The Program `program_to_dict` described, reading `weights`; a `GraphFormatError` names what is wrong."""
    if data.get("graph_format") != GRAPH_FORMAT:
        raise GraphFormatError(f"graph_format is {data.get('graph_format')!r}, this reader knows {GRAPH_FORMAT}")
    graph = torch.fx.Graph()
    nodes: dict[str, torch.fx.Node] = {}
    for index, entry in enumerate(_field(data, "nodes", list)):
        where = f"nodes[{index}]"
        op, name = _field(entry, "op", str, where), _field(entry, "name", str, where)
        target = _target(op, _field(entry, "target", str, where), where)
        args = _decode(_field(entry, "args", list, where), nodes, where)
        kwargs = _decode(_field(entry, "kwargs", dict, where), nodes, where)
        node = graph.create_node(op, target, tuple(args), kwargs, name=name)
        if node.name != name:
            raise GraphFormatError(f"{where}: node name {name!r} is not unique")
        node.meta.update(_decode(_field(entry, "meta", dict, where), nodes, where))
        nodes[name] = node
    return Program(
        torch.fx.GraphModule(torch.nn.Module(), graph),
        weights,
        config,
        tuple(_spec_from_dict(s, "inputs") for s in _field(data, "inputs", list)),
        tuple(_spec_from_dict(s, "outputs") for s in _field(data, "outputs", list)),
        frozenset(_field(data, "properties", list)),
    )


# encoding --------------------------------------------------------------------------------------------------------
def _node_to_dict(node: torch.fx.Node) -> dict[str, Any]:
    meta = {key: value for key, value in node.meta.items() if key not in _DROPPED_META and _jsonable(value)}
    return {
        "name": node.name,
        "op": node.op,
        "target": _target_name(node),
        "args": _encode(list(node.args)),
        "kwargs": _encode(dict(node.kwargs)),
        "meta": _encode(meta),
    }


def _target_name(node: torch.fx.Node) -> str:
    if node.op in ("placeholder", "output"):
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target.name()  # "aten::linear" or "aten::add.Tensor"
    if node.target is operator.getitem:
        return "operator.getitem"
    raise GraphFormatError(f"node %{node.name} calls {node.target!r}, which a stored graph cannot name")


def _encode(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise GraphFormatError(f"a graph argument of type {type(value).__name__} cannot be stored: {value!r}")


def _jsonable(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float | str)


def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": list(spec.shape),
        "dtype": str(spec.dtype).removeprefix("torch."),
        "role": spec.role,
    }


# decoding --------------------------------------------------------------------------------------------------------
def _field(data: Any, key: str, kind: type, where: str = "program") -> Any:
    if not isinstance(data, Mapping) or not isinstance(data.get(key), kind):
        raise GraphFormatError(f"{where}: field {key!r} is missing or not a {kind.__name__}")
    return data[key]


def _target(op: str, name: str, where: str) -> Any:
    if op in ("placeholder", "output"):
        return name
    if op != "call_function":
        raise GraphFormatError(f"{where}: op {op!r} is not placeholder, call_function or output")
    if name in _FUNCTIONS:
        return _FUNCTIONS[name]
    namespace, _, qualified = name.partition("::")
    op_name, _, overload = qualified.partition(".")
    if namespace not in _NAMESPACES or not op_name:
        raise GraphFormatError(f"{where}: target {name!r} is not an operator of {', '.join(_NAMESPACES)}")
    try:
        return getattr(getattr(getattr(torch.ops, namespace), op_name), overload or "default")
    except AttributeError:
        raise GraphFormatError(f"{where}: no registered operator {name!r}") from None


def _decode(value: Any, nodes: Mapping[str, torch.fx.Node], where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise GraphFormatError(f"{where}: a tagged value has keys {sorted(value)}, expected one tag")
    ((tag, inner),) = value.items()
    if tag == "node":
        if inner not in nodes:
            raise GraphFormatError(f"{where}: argument refers to node {inner!r}, which no earlier node defines")
        return nodes[inner]
    if tag == "dtype":
        if inner not in _DTYPES:
            raise GraphFormatError(f"{where}: unknown dtype {inner!r}")
        return _DTYPES[inner]
    if tag == "tuple" and isinstance(inner, list):
        return tuple(_decode(v, nodes, where) for v in inner)
    if tag == "dict" and isinstance(inner, dict):
        return {k: _decode(v, nodes, where) for k, v in inner.items()}
    raise GraphFormatError(f"{where}: unknown tagged value {tag!r}")


def _spec_from_dict(data: Any, where: str) -> TensorSpec:
    dtype = _field(data, "dtype", str, where)
    if dtype not in _DTYPES:
        raise GraphFormatError(f"{where}: unknown dtype {dtype!r}")
    shape = _field(data, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise GraphFormatError(f"{where}: shape {shape!r} is not a list of integers")
    return TensorSpec(_field(data, "name", str, where), tuple(shape), _DTYPES[dtype], _field(data, "role", str, where))
