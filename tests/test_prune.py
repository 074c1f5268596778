"""The `prune` pass: consistent shapes, identity at 0 %, equality with zeroed output weights, the documented
score, the cost model and parameter count of the pruned shipped model, ONNX Runtime and the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qeff_compiler as qc
from qeff_compiler.backends.ai100.sharded import run_sharded
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.backends.onnx_export import export_onnx
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError, PassOptionError, PassOrderError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.passes.prune import Prune, PruneOptions
from tests.conftest import random_model, tiny_config
from tests.strategies import mpt_configs

PATCHED = "strip-export-noise,patch-attention"


def _patched(model: object, seq_len: int = 8) -> qc.Program:
    return qc.PassManager(PATCHED).run(qc.capture(model, batch_size=2, seq_len=seq_len))


def _rows_in(original: torch.Tensor, pruned: torch.Tensor, dim: int) -> list[int]:
    """Which slices of `original` along `dim` `pruned` kept, found by exact equality (index_select copies)."""
    a, b = original.movedim(dim, 0).flatten(1), pruned.movedim(dim, 0).flatten(1)
    matches = (a[None, :, :] == b[:, None, :]).all(-1)
    assert bool((matches.sum(1) == 1).all()), "every kept slice is one original slice"
    return matches.int().argmax(1).tolist()


def test_shapes_are_consistent_in_the_store_the_nodes_and_the_cache() -> None:
    program = qc.PassManager(f"{PATCHED},prune{{ffn=0.25,heads=0.25}},kv-cache{{ctx_len=64}},dce").run(
        qc.capture(TINY_MPT, batch_size=1, seq_len=8)
    )
    config = program.config
    head_dim, ffn = config.d_model // config.n_heads, 4 * config.d_model
    kept_ffn, kept_heads = ffn - round(0.25 * ffn), config.n_heads - round(0.25 * config.n_heads)
    for layer in range(config.n_layers):
        block = f"transformer.blocks.{layer}"
        assert program.weights[f"{block}.ffn.up_proj.weight"].shape == (kept_ffn, config.d_model)
        assert program.weights[f"{block}.ffn.down_proj.weight"].shape == (config.d_model, kept_ffn)
        assert program.weights[f"{block}.attn.Wqkv.weight"].shape == (3 * kept_heads * head_dim, config.d_model)
        assert program.weights[f"{block}.attn.out_proj.weight"].shape == (config.d_model, kept_heads * head_dim)
        assert program.weights[f"alibi_slopes.{layer}"].shape == (kept_heads,)
        assert {s.shape for s in program.inputs if s.name.endswith(f".{layer}")} == {(1, kept_heads, 64, head_dim)}
    assert "alibi_slopes" not in program.weights
    up_outputs = [n.meta["val"].shape[-1] for n in program.graph.nodes if n.target == torch.ops.aten.gelu.default]
    assert up_outputs == [kept_ffn] * config.n_layers
    attention = [n for n in program.graph.nodes if n.target == torch.ops.qeff.mpt_attention_kv.default]
    assert [n.kwargs["n_heads"] for n in attention] == [kept_heads] * config.n_layers


def test_pruning_nothing_is_the_identity() -> None:
    program = _patched(random_model(tiny_config()))
    result = Prune(PruneOptions(ffn=0.0, heads=0.0)).run(program).program
    assert result.graph_module is program.graph_module and result.weights is program.weights
    assert "pruned" in result.properties


@settings(max_examples=8)
@given(config=mpt_configs(), ffn=st.sampled_from([0.0, 0.1, 0.25, 0.5]), heads=st.sampled_from([0.0, 0.25, 0.5]),
       seed=st.integers(0, 3))
def test_pruned_program_equals_the_unpruned_one_with_removed_output_weights_zeroed(
    config: object, ffn: float, heads: float, seed: int
) -> None:
    """Dropping channel j / head h equals zeroing its down_proj column / out_proj columns: its output is then 0.
    The kept channels and heads are also the documented magnitude score's top ones."""
    if config.n_heads - round(heads * config.n_heads) < 1:
        heads = 0.0
    program = _patched(random_model(config, seed), seq_len=min(8, config.max_seq_len))
    pruned = qc.PassManager(f"prune{{ffn={ffn},heads={heads}}}").run(program)
    zeroed = {}
    head_dim = config.d_model // config.n_heads
    for layer in range(config.n_layers):
        block = f"transformer.blocks.{layer}"
        up, down = (program.weights.tensor(f"{block}.ffn.{p}_proj.weight") for p in ("up", "down"))
        kept = _rows_in(up, pruned.weights.tensor(f"{block}.ffn.up_proj.weight"), 0)
        assert kept == sorted(kept) and len(kept) == 4 * config.d_model - round(ffn * 4 * config.d_model)
        _assert_top(up.norm(dim=1) * down.norm(dim=0), kept)
        removed = sorted(set(range(4 * config.d_model)) - set(kept))
        zeroed[f"{block}.ffn.down_proj.weight"] = down.index_fill(1, torch.tensor(removed, dtype=torch.long), 0.0)
        wqkv, out = program.weights.tensor(f"{block}.attn.Wqkv.weight"), program.weights.tensor(f"{block}.attn.out_proj.weight")
        slopes_name = f"alibi_slopes.{layer}" if f"alibi_slopes.{layer}" in pruned.weights else "alibi_slopes"
        kept_heads = _rows_in(program.weights.tensor("alibi_slopes")[:, None], pruned.weights.tensor(slopes_name)[:, None], 0)
        block_rows = config.n_heads * head_dim
        values = wqkv[2 * block_rows :].reshape(config.n_heads, -1).norm(dim=1)
        _assert_top(values * out.reshape(config.d_model, config.n_heads, head_dim).transpose(0, 1).flatten(1).norm(dim=1), kept_heads)
        columns = torch.tensor([h * head_dim + i for h in kept_heads for i in range(head_dim)], dtype=torch.long)
        assert torch.equal(pruned.weights.tensor(f"{block}.attn.out_proj.weight"), out[:, columns])
        mask = torch.zeros(config.d_model, dtype=torch.bool)
        mask[columns] = True
        zeroed[f"{block}.attn.out_proj.weight"] = out * mask
    reference = program.evolve(weights=program.weights.with_tensors(zeroed))
    inputs = sample_inputs(program, seed=seed)
    expected, actual = HostExecutor(reference)(inputs), HostExecutor(pruned)(inputs)
    torch.testing.assert_close(actual["logits"], expected["logits"], rtol=0, atol=2e-5)


def _assert_top(scores: torch.Tensor, kept: list[int]) -> None:
    removed = sorted(set(range(len(scores))) - set(kept))
    if removed:
        assert scores[kept].min() >= scores[removed].max()


def test_activation_score_keeps_the_channels_with_the_largest_activation_times_output_norm(tmp_path: Path) -> None:
    from qeff_compiler.calibration import save_calibration

    program = _patched(random_model(tiny_config()))
    maxima = {f"transformer.blocks.{i}.ffn.down_proj.weight": torch.rand(128) for i in range(2)}
    save_calibration(maxima, tmp_path / "table.safetensors")
    pruned = qc.PassManager(f"prune{{ffn=0.5,score=activation,calibration={tmp_path / 'table.safetensors'}}}").run(program)
    for name, activation in maxima.items():
        down = program.weights.tensor(name)
        kept = _rows_in(down, pruned.weights.tensor(name), 1)
        _assert_top(activation * down.norm(dim=0), kept)


def test_shipped_model_pruned_25pct_ffn_loses_the_expected_parameters_and_decode_time() -> None:
    """Parameters: 25 % of each layer's FFN channels, each an up_proj row and a down_proj column. Decode: the
    cost model sees the smaller FFN: its memory-bound matmuls stream 25 % fewer weight bytes and its GELU works
    on 25 % fewer elements; every other op costs the same."""
    dense = qc.compile(TINY_MPT, precision="fp16", verify=False)
    pruned = qc.compile(TINY_MPT, precision="fp16", verify=False, prune_ffn=0.25)
    config = dense.config
    removed_channels = round(0.25 * 4 * config.d_model)
    assert dense.decode.num_parameters() - pruned.decode.num_parameters() == config.n_layers * removed_channels * 2 * config.d_model

    def ffn_ops(model: qc.CompiledModel) -> dict[str, object]:
        ffn = {n.name for n in model.decode.graph.nodes if ".ffn." in str(n.meta.get("nn_module_stack", {}))}
        return {op.node: op for op in model.simulation.steps["decode"].ops if op.node in ffn}

    work = {w.node: w for w in program_workload(dense.decode)}
    pruned_work = {w.node: w for w in program_workload(pruned.decode)}
    dense_ffn, pruned_ffn = ffn_ops(dense), ffn_ops(pruned)
    assert sum(op.kind == "matmul" for op in dense_ffn.values()) == 2 * config.n_layers
    assert dense_ffn.keys() == pruned_ffn.keys()
    expected_saving = 0.0
    for node, op in dense_ffn.items():
        after = pruned_ffn[node]
        if op.kind == "matmul":
            assert pruned_work[node].weight_bytes == work[node].weight_bytes * 3 // 4  # from the shapes
            assert op.bound == after.bound == "memory"  # batch-1 decode streams the weights
            assert after.memory_s == pytest.approx(0.75 * op.memory_s, rel=1e-12)
            expected_saving += op.memory_s - after.memory_s + op.transfer_s - after.transfer_s
        elif work[node].vector_elements == 4 * config.d_model:  # GELU (up_proj's output width)
            assert pruned_work[node].vector_elements == 3 * config.d_model
            assert after.core_s < op.core_s and op.bound == after.bound == "core"
            expected_saving += op.core_s - after.core_s
        else:  # the residual add after down_proj: d_model wide either way
            assert after.seconds == op.seconds
    others = {op.node: op.seconds for op in dense.simulation.steps["decode"].ops if op.node not in dense_ffn}
    assert others == {op.node: op.seconds for op in pruned.simulation.steps["decode"].ops if op.node not in pruned_ffn}
    dense_step = dense.estimate(prompt_len=32, generation_len=32).token_latencies_s[0]
    pruned_step = pruned.estimate(prompt_len=32, generation_len=32).token_latencies_s[0]
    assert expected_saving > 0
    assert dense_step - pruned_step == pytest.approx(expected_saving, rel=1e-9)


def test_pruned_program_runs_in_onnx_runtime_like_the_host(tmp_path: Path) -> None:
    model = random_model(tiny_config(n_heads=4, d_model=32, n_layers=2))
    pipeline = f"{PATCHED},prune{{ffn=0.25,heads=0.5}},lower-fp16,lower-int8,kv-cache{{ctx_len=16}},dce"
    program = qc.PassManager(pipeline).run(qc.capture(model, batch_size=2, seq_len=4))
    export_onnx(program, tmp_path / "program.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "program.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = sample_inputs(program, seed=1)
    expected = HostExecutor(program)(inputs)
    results = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    for spec, value in zip(program.outputs, results, strict=True):
        np.testing.assert_allclose(value, expected[spec.name].numpy(), rtol=0, atol=2e-3, err_msg=spec.name)


def test_pruned_artifact_loads_and_generates_the_same_tokens(tmp_path: Path) -> None:
    compiled = qc.compile(random_model(tiny_config()), precision="int8", ctx_len=32, prefill_len=8, prune_ffn=0.25,
                          prune_heads=0.5, verify=False)
    compiled.save(tmp_path / "pruned")
    loaded = qc.load_compiled(tmp_path / "pruned")
    assert loaded.pipeline == compiled.pipeline and "prune{ffn=0.25,heads=0.5" in loaded.pipeline
    assert loaded.decode.num_parameters() == compiled.decode.num_parameters()
    prompt = [[5, 17, 20, 33, 9]]
    assert torch.equal(loaded.generate(prompt, 12).sequences, compiled.generate(prompt, 12).sequences)


def test_accuracy_cost_is_measured_against_the_unpruned_reference() -> None:
    dense = qc.evaluate(TINY_MPT, precision="fp32", max_tokens=512)
    pruned = qc.evaluate(TINY_MPT, precision="fp32", max_tokens=512, prune_ffn=0.25)
    assert pruned.tokens_scored == dense.tokens_scored == 2 * 255
    assert pruned.reference_perplexity == dense.reference_perplexity
    assert pruned.perplexity > dense.perplexity
    assert pruned.pruning == "ffn=0.25,heads=0,score=magnitude" and pruned.gate_failures() == []


@pytest.mark.parametrize(
    ("pipeline", "error"),
    [
        (f"{PATCHED},lower-fp16,prune{{ffn=0.25}}", PassOrderError),
        (f"{PATCHED},prune{{ffn=1.0}}", PassOptionError),
        (f"{PATCHED},prune{{heads=-0.1}}", PassOptionError),
        (f"{PATCHED},prune{{ffn=0.25,score=activation}}", PassOptionError),
        (f"{PATCHED},prune{{ffn=0.25,score=random}}", PassOptionError),
        ("strip-export-noise,prune{ffn=0.25}", PassOrderError),
        (f"{PATCHED},prune{{ffn=0.25}},prune{{heads=0.25}}", PassOrderError),
    ],
)
def test_bad_pruning_requests_are_refused(pipeline: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        qc.PassManager(pipeline).run(qc.capture(random_model(tiny_config()), batch_size=1, seq_len=4))


@pytest.mark.parametrize(
    "kwargs",
    [{"prune_ffn": 1.5}, {"prune_heads": True}, {"prune_score": "random"}, {"prune_ffn": 0.25, "precision": "w8a8"}],
)
def test_compile_refuses_bad_pruning_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError, match=next(iter(kwargs))):
        qc.compile(TINY_MPT, **kwargs)


def test_pruned_program_partitioned_over_socs_and_cores_runs_like_the_host() -> None:
    """Fewer heads per layer than the config says, and narrower FFNs: the partition plan splits what is there."""
    compiled = qc.compile(random_model(tiny_config(n_heads=4, d_model=32)), precision="int8", ctx_len=16, prefill_len=4,
                          prune_ffn=0.25, prune_heads=0.5, num_cores=3, num_devices=2, verify=False)
    for name, program in (("prefill", compiled.prefill), ("decode", compiled.decode)):
        inputs = sample_inputs(program, seed=0)
        expected = HostExecutor(program)(inputs)
        actual = run_sharded(program, compiled.simulation.plans[name], inputs)
        for output, value in expected.items():
            torch.testing.assert_close(actual[output], value, rtol=0, atol=1e-5)
