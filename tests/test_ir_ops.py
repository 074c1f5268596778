"""ir owns op knowledge: the trait registry and the quantization schemes; passes run correctly outside the manager
and their contracts are data the pass infrastructure checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.errors import PassOrderError
from qeff_compiler.ir.ops import (
    ATTENTION,
    ATTENTION_KV,
    DEQUANTIZE_INT8,
    DEQUANTIZE_MXFP6,
    LINEAR_W8A8,
    LINEAR_W8A16,
    PART_AXES,
    SCHEMES,
    targets_with,
    traits,
)
from qeff_compiler.ir.ops.schemes import part_shape
from qeff_compiler.passes.base import PassResult
from qeff_compiler.passes.kv_cache import KVCache
from qeff_compiler.passes.lower_fp16 import LowerFp16
from qeff_compiler.passes.lower_int8 import LowerInt8
from qeff_compiler.passes.patch_attention import PatchAttention
from tests.conftest import random_model, tiny_config

PACKAGE = Path(qc.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("layer", ["ir", "backends"])
def test_no_module_below_the_passes_imports_them(layer: str) -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imported_modules(path) if m.startswith("qeff_compiler.passes"))
        for path in (PACKAGE / layer).rglob("*.py")
    }
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_each_op_fact_is_stated_once_in_the_registry() -> None:
    aten = torch.ops.aten
    assert targets_with(linear=True) == {aten.linear.default, LINEAR_W8A16, LINEAR_W8A8}
    assert targets_with(attention=True) == {ATTENTION, ATTENTION_KV}
    assert targets_with(dequantize=True) == {DEQUANTIZE_INT8, DEQUANTIZE_MXFP6}
    assert targets_with(vector_decompress=True) == {DEQUANTIZE_MXFP6}
    assert traits(LINEAR_W8A8).compute == "int8" and traits(LINEAR_W8A16).compute == "fp16"
    assert traits(aten.view.default).data_moving and not traits(aten.gelu.default).data_moving
    assert traits(aten.add.Tensor) == traits(object())  # an op nobody registered has no traits


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_a_schemes_declared_parts_are_what_its_encoder_makes_and_its_ops_read(scheme) -> None:
    rows, cols = 8, 70  # a partial last MX block
    weight = (torch.randn(rows, cols) * 0.1).half()
    options = {"mxfp6": {"fmt": "fp6_e2m3"}, "w8a8": {"act_absmax": torch.rand(cols) + 0.5, "alpha": 0.5}}
    made = scheme.encode(weight, **options.get(scheme.name, {}))
    assert [(tuple(t.shape), t.dtype) for t in made] == [(s.shape, s.dtype) for s in scheme.part_specs((rows, cols))]
    for part, tensor in zip(scheme.parts, made, strict=True):
        assert len(tensor.shape) == len(part_shape(part.layout, rows, cols)) and part.layout in PART_AXES
    readers = [op for op in (scheme.linear_op, scheme.dequantize_op) if op is not None]
    for op in readers:
        assert traits(op).scheme is scheme
        assert sorted(traits(op).parts.values()) == sorted(p.layout for p in scheme.parts)


def test_passes_run_outside_the_manager_as_inside() -> None:
    """`Pass.run` refreshes shape metadata, so a chain of bare runs (lower-fp16 reads `node.meta["val"]` of the
    fused ops patch-attention made) builds the manager's program; notes come back in the result."""
    program = qc.capture(random_model(tiny_config()), batch_size=1, seq_len=4)
    bare, notes = program, {}
    for current in (PatchAttention(), LowerFp16(), LowerInt8(), KVCache(KVCache.Options(ctx_len=16))):
        result = current.run(bare)
        assert isinstance(result, PassResult)
        bare, notes[current.name] = result.program, result.notes
    managed = qc.PassManager("patch-attention,lower-fp16,lower-int8,kv-cache{ctx_len=16}").run(program)
    assert [n.format_node() for n in bare.graph.nodes] == [n.format_node() for n in managed.graph.nodes]
    assert bare.properties == managed.properties
    assert notes["lower-int8"][0].endswith("quantized to int8") and notes["lower-fp16"][0].endswith("converted to fp16")


def test_contracts_are_declared_and_checked_by_pass_run() -> None:
    program = qc.capture(random_model(tiny_config()), batch_size=1, seq_len=4)
    with pytest.raises(PassOrderError, match=r"pass kv-cache requires \['attention-patched'\]"):
        KVCache(KVCache.Options(ctx_len=16)).run(program)
    stateful = KVCache(KVCache.Options(ctx_len=16)).run(PatchAttention().run(program).program).program
    assert [f.properties for f in KVCache.forbids] == [("kv-cache",)]
    with pytest.raises(PassOrderError, match="the pipeline names kv-cache twice"):
        KVCache(KVCache.Options(ctx_len=16)).run(stateful)
