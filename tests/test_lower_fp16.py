"""lower-fp16: fp16 weights and caches, fp16-rounded activations computed in fp32, clipping notes, the overflow
detector, both orders with kv-cache, and generation with the lowered programs."""

from __future__ import annotations

import operator

import pytest
import torch
from typer.testing import CliRunner

import qeff_compiler as qc
from qeff_compiler.backends.ai100.simulator import SimulatedDevice, Target
from qeff_compiler.cli.main import app
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import Fp16OverflowError
from qeff_compiler.ir.ops import ATTENTION, ATTENTION_KV
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.passes.fp16_overflow import find_fp16_overflow
from qeff_compiler.passes.lower_fp16 import TO_COPY, LowerFp16
from qeff_compiler.runtime.generate import StaticShapes, generate
from qeff_compiler.runtime.sampling import SamplingConfig
from tests.conftest import random_model, tiny_config

CTX_LEN = 32
KV_THEN_LOWER = f"strip-export-noise,patch-attention,kv-cache{{ctx_len={CTX_LEN}}},lower-fp16,dce"
LOWER_THEN_KV = f"strip-export-noise,patch-attention,lower-fp16,kv-cache{{ctx_len={CTX_LEN}}},dce"
FP32 = f"strip-export-noise,patch-attention,kv-cache{{ctx_len={CTX_LEN}}},dce"
#: logits bound vs the fp32 program: measured ≤ 1.1e-2 on these models (fp16 rounding ≈ 5e-4 relative per op)
LOGITS_BOUND = 3e-2

MODELS = {
    "random-tied": lambda: random_model(tiny_config(tie_word_embeddings=True)),
    "random-3-heads-clip_qkv": lambda: random_model(tiny_config(n_heads=3, d_model=24, attn_config={"clip_qkv": 0.5})),
    "shipped": lambda: TINY_MPT,
}


def _run(pipeline: str, source: object, seq_len: int = 8) -> tuple[Program, qc.PassManager]:
    manager = qc.PassManager(pipeline)
    return manager.run(qc.capture(source, batch_size=2, seq_len=seq_len)), manager


def _is_fp16_exact(tensor: torch.Tensor) -> bool:
    return torch.equal(tensor, tensor.half().to(tensor.dtype))


def _round_trip_outputs(program: Program) -> list[torch.Tensor]:
    """The values every fp16 → fp32 cast of the graph produces on the sample inputs."""
    casts = {n for n in program.graph.nodes if n.target == TO_COPY and n.kwargs["dtype"] == torch.float32}
    seen: list[torch.Tensor] = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> object:
            result = super().run_node(node)
            if node in casts:
                seen.append(result)
            return result

    inputs = sample_inputs(program)
    args = [
        program.weights.tensor(name) if kind == "weight" else inputs[name]
        for kind, name in (n.meta[BINDING] for n in program.graph.find_nodes(op="placeholder"))
    ]
    with torch.no_grad():
        Recorder(program.graph_module).run(*args)
    return seen


@pytest.mark.parametrize("pipeline", [KV_THEN_LOWER, LOWER_THEN_KV], ids=["kv-then-lower", "lower-then-kv"])
@pytest.mark.parametrize("model", list(MODELS))
def test_weights_caches_fp16_and_logits_close_to_fp32(model: str, pipeline: str) -> None:
    source = MODELS[model]()
    lowered, manager = _run(pipeline, source)
    reference, _ = _run(FP32, source)
    read = set(lowered.weight_placeholders().values())
    assert {name for name in read if lowered.weights[name].dtype != torch.float16} == {"alibi_slopes"}
    caches = [s for s in (*lowered.inputs, *lowered.outputs) if s.role.startswith(("past", "retained"))]
    assert len(caches) == 4 * lowered.config.n_layers and all(s.dtype == torch.float16 for s in caches)
    (logits_spec,) = [s for s in lowered.outputs if s.role == "logits"]
    assert logits_spec.dtype == torch.float32
    inputs = sample_inputs(reference)
    expected = HostExecutor(reference)(inputs)["logits"]
    actual = HostExecutor(lowered)({k: v.to(s.dtype) for (k, v), s in zip(inputs.items(), lowered.inputs, strict=True)})
    assert 0 < (actual["logits"] - expected).abs().max() < LOGITS_BOUND
    assert all(_is_fp16_exact(value) for value in actual.values())
    assert all(_is_fp16_exact(value) for value in _round_trip_outputs(lowered))
    assert "weights" in manager.notes_report() and "converted to fp16" in manager.notes_report()


def test_fused_ops_round_internally_and_no_compute_runs_in_fp16() -> None:
    lowered, _ = _run(KV_THEN_LOWER, MODELS["random-tied"]())
    attention = [n for n in lowered.graph.nodes if n.target in (ATTENTION_KV, ATTENTION)]
    assert attention and all(n.kwargs["fp16_activations"] for n in attention)
    math = [n for n in lowered.graph.nodes if n.op == "call_function" and n.target not in (TO_COPY, operator.getitem)]
    values = {n.name: n.meta["val"] for n in math if isinstance(n.meta["val"], torch.Tensor)}
    assert [name for name, value in values.items() if value.dtype == torch.float16] == []


def test_values_beyond_fp16_range_are_clipped_and_reported() -> None:
    program = qc.PassManager("patch-attention").run(qc.capture(random_model(tiny_config())))
    name = "transformer.blocks.0.ffn.down_proj.weight"
    weight = program.weights.tensor(name).clone()
    weight[0, :3] = torch.tensor([1e5, -1e5, 7e4])
    program = program.evolve(weights=program.weights.with_tensors({name: weight}))
    manager = qc.PassManager([LowerFp16(LowerFp16.Options(check_overflow=False))], verify=False)
    lowered = manager.run(program)
    stored = lowered.weights.tensor(name)
    assert stored.dtype == torch.float16
    assert stored[0, :3].tolist() == [65504.0, -65504.0, 65504.0]
    assert f"{name}: 3 values beyond ±65504 clipped" in manager.notes_report()
    assert manager.records[0].notes[0].startswith("14 weights")


def _overflowing_program() -> Program:
    """Block 1's FFN up-projection ×1e5: its outputs (≈1e5) overflow fp16 while block 0 stays in range."""
    program = qc.PassManager("strip-export-noise,patch-attention").run(qc.capture(random_model(tiny_config())))
    name = "transformer.blocks.1.ffn.up_proj.weight"
    return program.evolve(weights=program.weights.with_tensors({name: program.weights.tensor(name) * 1e5}))


def test_overflow_detector_names_the_first_overflowing_layer_and_op() -> None:
    program = _overflowing_program()
    report = find_fp16_overflow(program)
    assert report is not None
    assert report.layer == "transformer.blocks.1.ffn.up_proj" and report.op == "aten.linear"
    assert report.max_abs > 65504
    assert find_fp16_overflow(qc.PassManager("patch-attention").run(qc.capture(random_model(tiny_config())))) is None


def test_lower_fp16_refuses_an_overflowing_model() -> None:
    with pytest.raises(Fp16OverflowError, match=r"\(aten\.linear\) in transformer\.blocks\.1\.ffn\.up_proj"):
        qc.PassManager("lower-fp16").run(_overflowing_program())


def test_the_overflow_check_is_an_analysis_pass_lower_fp16_runs_unless_already_done() -> None:
    program = _overflowing_program()
    with pytest.raises(Fp16OverflowError, match=r"in transformer\.blocks\.1\.ffn\.up_proj"):
        qc.PassManager("check-fp16-range").run(program)
    fine = qc.PassManager("check-fp16-range").run(qc.PassManager("patch-attention").run(qc.capture(random_model(tiny_config()))))
    assert "fp16-range-checked" in fine.properties
    # a program marked checked (a streamed decode specialization whose prefill was checked) is not checked again
    checked = program.evolve(properties=program.properties | {"fp16-range-checked"})
    lowered = qc.PassManager("lower-fp16", verify=False).run(checked)
    assert "fp16-activations" in lowered.properties


def test_generation_with_lowered_programs_matches_fp32_tokens_on_the_shipped_model() -> None:
    """The trained model's top-1 margins are wide enough that fp16 rounding keeps every greedy token."""
    tokens = {}
    for precision, pipeline in (("fp16", KV_THEN_LOWER), ("fp32", FP32)):
        prefill = qc.PassManager(pipeline).run(qc.capture(TINY_MPT, batch_size=1, seq_len=8))
        decode = qc.PassManager(pipeline).run(qc.capture(TINY_MPT, batch_size=1, seq_len=1))
        caches = {s.name: (s.shape, s.dtype) for s in prefill.inputs if s.role in ("past_key", "past_value")}
        prompt = [[5, 17, 42, 99, 7, 300, 12, 8, 64, 3, 21]]  # two prefill chunks
        out = generate(
            HostExecutor(prefill), HostExecutor(decode), StaticShapes.of(prefill), caches, prompt, 12,
            SamplingConfig(), frozenset(), 0, SimulatedDevice(prefill, decode, Target()),
        )
        tokens[precision] = out.new_tokens
        assert len(out.new_tokens[0]) == 12
        assert {dtype for _, dtype in caches.values()} == {torch.float16 if precision == "fp16" else torch.float32}
    assert tokens["fp16"] == tokens["fp32"]


def test_cli_lists_lower_fp16_with_its_option() -> None:
    result = CliRunner().invoke(app, ["passes"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "lower-fp16" in result.output and "check_overflow=True" in result.output
