"""A lowered program survives the JSON round trip of an artifact's programs.json exactly, and a stored graph can
only name registered operators: anything else is refused with the field that is wrong."""

from __future__ import annotations

import json

import pytest
import torch.fx

import qeff_compiler as qc
from qeff_compiler.ir.serialize import GraphFormatError, program_from_dict, program_to_dict
from tests.conftest import tiny_config

PIPELINES = {
    "mxfp6+mxint8": "strip-export-noise,patch-attention,lower-fp16,lower-mxfp6,kv-cache{ctx_len=16,dtype=mxint8},dce",
    "int8 pruned": "strip-export-noise,patch-attention,prune{heads=0.5},lower-fp16,lower-int8,kv-cache{ctx_len=16},dce",
    "w8a8 stateless": "strip-export-noise,patch-attention,lower-fp16,lower-w8a8,dce",
}


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def lowered(request: pytest.FixtureRequest) -> qc.Program:
    """A config-only (meta) program: serialization reads the graph, never weight data."""
    program = qc.capture(tiny_config(n_heads=2), batch_size=2, seq_len=4)
    return qc.PassManager(PIPELINES[request.param], verify=False).run(program)


def test_round_trip_rebuilds_the_same_graph_specs_and_metadata(lowered: qc.Program) -> None:
    stored = json.loads(json.dumps(program_to_dict(lowered)))  # as written to and read from the file
    loaded = program_from_dict(stored, lowered.weights, lowered.config)
    assert loaded.graph_module.code == lowered.graph_module.code
    assert (loaded.inputs, loaded.outputs, loaded.properties) == (lowered.inputs, lowered.outputs, lowered.properties)
    for mine, theirs in zip(loaded.graph.nodes, lowered.graph.nodes, strict=True):
        assert (mine.name, mine.op, mine.target, _named(mine.args), _named(mine.kwargs)) == (
            theirs.name, theirs.op, theirs.target, _named(theirs.args), _named(theirs.kwargs)
        )
        kept = {k: v for k, v in theirs.meta.items() if k in ("qeff_binding", "nn_module_stack", "qeff_layer")}
        assert {k: mine.meta[k] for k in kept} == kept


def _named(arguments: object) -> object:
    """Node references by name (nodes of two graphs never compare equal), everything else as it is."""
    return torch.fx.node.map_arg(arguments, lambda node: f"%{node.name}")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d["nodes"][-2].__setitem__("target", "os::system"), r"nodes\[\d+\]: target 'os::system' is not"),
        (lambda d: d["nodes"][-2].__setitem__("target", "aten::no_such_op"), r"no registered operator 'aten::no_such"),
        (lambda d: d["nodes"][-2].__setitem__("op", "call_module"), r"op 'call_module' is not"),
        (lambda d: d["nodes"][-1].__setitem__("args", [{"node": "ghost"}]), r"refers to node 'ghost'"),
        (lambda d: d["inputs"][0].__setitem__("dtype", "complex1024"), r"inputs: unknown dtype 'complex1024'"),
        (lambda d: d.pop("nodes"), r"field 'nodes' is missing"),
        (lambda d: d.__setitem__("graph_format", 0), r"graph_format is 0"),
    ],
    ids=["foreign-namespace", "unknown-op", "module-call", "dangling-node", "bad-dtype", "no-nodes", "version"],
)
def test_a_malformed_stored_graph_is_refused_naming_the_field(lowered: qc.Program, edit, problem: str) -> None:
    stored = json.loads(json.dumps(program_to_dict(lowered)))
    edit(stored)
    with pytest.raises(GraphFormatError, match=problem):
        program_from_dict(stored, lowered.weights, lowered.config)
