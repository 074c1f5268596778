"""The pass manager: order checks, verification that catches wrong passes, IR printing, timing; DCE and
strip-export-noise on real exported graphs."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.errors import PassOrderError, PipelineError, VerificationError
from qeff_compiler.ir.interpret import run_program
from qeff_compiler.ir.program import BINDING, Program, op_short_name
from qeff_compiler.passes import Pass, PassManager
from tests.conftest import random_model, tiny_config


class _ScaleLmHead(Pass):
    """Deliberately wrong: changes the lm_head weights by 1%, as a buggy rewrite might."""

    name = "test-scale-lm-head"
    summary = "test-only wrong pass"

    def transform(self, program: Program) -> Program:
        weight = program.weights.tensor("lm_head.weight")
        return program.evolve(weights=program.weights.with_tensors({"lm_head.weight": weight * 1.01}))


class _DropOutput(Pass):
    name = "test-drop-output"
    summary = "test-only pass that breaks the graph's output arity"

    def transform(self, program: Program) -> Program:
        graph_module = program.copy_graph()
        (output,) = graph_module.graph.find_nodes(op="output")
        output.args = ((),)
        graph_module.recompile()
        return program.evolve(graph_module=graph_module)


class _NeedsPatchedAttention(Pass):
    name = "test-needs-patched"
    summary = "test-only pass with a precondition"
    requires: ClassVar[frozenset[str]] = frozenset({"attention-patched"})

    def transform(self, program: Program) -> Program:
        return program


@pytest.fixture
def program() -> Program:
    return qc.capture(random_model(tiny_config(tie_word_embeddings=True)))


def test_numeric_check_catches_a_wrong_pass(program: Program) -> None:
    with pytest.raises(VerificationError, match=r"after test-scale-lm-head: output logits differs .* by"):
        PassManager([_ScaleLmHead()]).run(program)


def test_structure_check_catches_a_broken_graph(program: Program) -> None:
    with pytest.raises(VerificationError, match="declares 1 outputs"):
        PassManager([_DropOutput()]).run(program)


def test_unverified_run_lets_the_wrong_pass_through(program: Program) -> None:
    result = PassManager([_ScaleLmHead()], verify=False).run(program)
    assert torch.equal(result.weights.tensor("lm_head.weight"), program.weights.tensor("lm_head.weight") * 1.01)


def test_precondition_violation_is_a_pass_order_error(program: Program) -> None:
    with pytest.raises(PassOrderError, match=r"test-needs-patched requires \['attention-patched'\]"):
        PassManager([_NeedsPatchedAttention()]).run(program)


def test_strip_export_noise_removes_noise_and_keeps_numerics_exact(program: Program) -> None:
    noise = {"aten._assert_tensor_metadata", "aten.dropout", "aten.alias"}
    assert noise <= set(program.op_histogram())
    result = PassManager("strip-export-noise").run(program)
    assert not noise & set(result.op_histogram())
    casts = [n for n in result.graph.nodes if op_short_name(n.target) == "aten.to"]
    assert casts and all(n.args[1] != n.args[0].meta["val"].dtype for n in casts), "only real casts remain"
    input_ids = torch.randint(0, 64, (1, 8))
    before = run_program(program, {"input_ids": input_ids})["logits"]
    assert torch.equal(run_program(result, {"input_ids": input_ids})["logits"], before)
    assert "export-noise-free" in result.properties


def test_dce_removes_dead_nodes_and_unread_weights(program: Program) -> None:
    dead = [n.name for n in program.graph.nodes if n.op == "call_function" and not n.users]
    dead = [name for name in dead if "assert" not in name]  # asserts are side-effecting: strip-export-noise's job
    assert dead, "the exported MPT graph has dead unsqueeze nodes"
    result = PassManager("dce").run(program)
    remaining = {n.name for n in result.graph.nodes}
    assert not set(dead) & remaining
    # the tied model's graph reads the embedding through the lm_head placeholder; wte's own placeholder is dead
    assert "transformer.wte.weight" not in result.weights
    assert "lm_head.weight" in result.weights
    assert result.num_parameters() == program.num_parameters()
    assert len(result.graph.nodes) < len(program.graph.nodes)


def test_dce_keeps_weights_of_an_untied_model() -> None:
    untied = qc.capture(random_model(tiny_config(tie_word_embeddings=False)))
    result = PassManager("dce").run(untied)
    bound = {n.meta[BINDING][1] for n in result.graph.find_nodes(op="placeholder")}
    assert {"transformer.wte.weight", "lm_head.weight"} <= bound


def test_passes_do_not_modify_their_input_program(program: Program) -> None:
    nodes_before = [n.format_node() for n in program.graph.nodes]
    PassManager("strip-export-noise,dce").run(program)
    assert [n.format_node() for n in program.graph.nodes] == nodes_before


def test_print_ir_after_and_timing(program: Program) -> None:
    printed: list[str] = []
    manager = PassManager("strip-export-noise,dce", print_ir_after={"dce"}, printer=printed.append)
    manager.run(program)
    assert len(printed) == 1 and printed[0].startswith("// ----- IR after dce -----")
    assert "aten.linear(" in printed[0] and "weight 'lm_head.weight' : f32[64,32]" in printed[0]
    assert [r.pass_text for r in manager.records] == ["strip-export-noise", "dce"]
    assert all(r.max_abs_diff == 0.0 for r in manager.records)
    report = manager.timing_report()
    assert "strip-export-noise" in report and "dce" in report
    all_printed: list[str] = []
    PassManager("strip-export-noise,dce", print_ir_after_all=True, printer=all_printed.append).run(program)
    assert len(all_printed) == 2


def test_print_ir_after_a_pass_not_in_the_pipeline_is_an_error() -> None:
    with pytest.raises(PipelineError, match=r"not in the pipeline: \['kv-cache'\]"):
        PassManager("dce", print_ir_after={"kv-cache"})


def test_meta_programs_are_verified_by_shapes() -> None:
    manager = PassManager("strip-export-noise,dce")
    result = manager.run(qc.capture(tiny_config()))
    assert all(r.max_abs_diff is None for r in manager.records)
    assert result.outputs[0].shape == (1, 8, 64)
