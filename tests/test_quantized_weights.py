"""`lower-int8` and `lower-mxfp6`: what they store, what the lowered program computes, mixed precision, meta
programs, ONNX Runtime parity and the compiled artifact of each precision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open

import qeff_compiler as qc
from qeff_compiler.backends.onnx_export import export_onnx
from qeff_compiler.errors import InvalidArgumentError, PassOptionError
from qeff_compiler.ir.ops import DEQUANTIZE_INT8, DEQUANTIZE_MXFP6
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import BINDING
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.numerics.int8 import quantize_weight_per_channel
from qeff_compiler.numerics.mx import fake_quantize_mx, mx_storage_bits_per_element
from tests.conftest import random_model, tiny_config

FRONT = "strip-export-noise,patch-attention,lower-fp16"
CONFIG = tiny_config(n_heads=3, d_model=48, n_layers=2, attn_config={"clip_qkv": 0.5})
#: matmul weights of a 2-layer MPT: Wqkv, out_proj, up_proj, down_proj per layer, and lm_head
MATMUL_WEIGHTS = 4 * CONFIG.n_layers + 1


def _mxfp6_rounded(fmt: str):
    return lambda weight: fake_quantize_mx(weight.half().float(), fmt).half()


def _with_replaced_weights(rounded, seed: int = 1) -> torch.nn.Module:
    """The seeded model with every matmul weight but the (tied) lm_head replaced by `rounded(weight)`."""
    model = random_model(CONFIG, seed=seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "wte" not in name and "lm_head" not in name:
                parameter.copy_(rounded(parameter).float())
    return model


@pytest.mark.parametrize("fmt", ["e2m3", "e3m2"])
def test_mxfp6_program_computes_the_fp16_program_with_decoded_weights(fmt: str) -> None:
    """An MXFP6 weight must act exactly like its decoded fp16 value: the lowered program's logits equal, bit for
    bit, those of the fp16 program of a model whose matmul weights were so replaced. (lm_head is excluded: it is
    tied to the input embedding, which stays fp16.)"""
    lowering = f"lower-mxfp6{{format={fmt},exclude=lm_head}}"
    quantized = qc.PassManager(f"{FRONT},{lowering}").run(qc.capture(random_model(CONFIG, seed=1)))
    reference = qc.PassManager(FRONT).run(qc.capture(_with_replaced_weights(_mxfp6_rounded(f"fp6_{fmt}"))))
    inputs = sample_inputs(quantized, seed=4)
    assert torch.equal(HostExecutor(quantized)(inputs)["logits"], HostExecutor(reference)(inputs)["logits"])


def test_int8_program_computes_with_the_dequantized_weights() -> None:
    """W8A16 scales after the fp32 accumulation, which no fp16 program can express exactly; its logits must be
    near those of the fp16 program whose weights are the dequantized int8 ones (rounded to fp16) and at least
    5x nearer than to the unquantized fp16 program's."""
    quantized = qc.PassManager(f"{FRONT},lower-int8{{exclude=lm_head}}").run(qc.capture(random_model(CONFIG, seed=1)))

    def dequantized(weight: torch.Tensor) -> torch.Tensor:
        codes, scales = quantize_weight_per_channel(weight.half())
        return (codes.float() * scales[:, None]).half()

    near = qc.PassManager(FRONT).run(qc.capture(_with_replaced_weights(dequantized)))
    unquantized = qc.PassManager(FRONT).run(qc.capture(random_model(CONFIG, seed=1)))
    inputs = sample_inputs(quantized, seed=4)
    logits = HostExecutor(quantized)(inputs)["logits"]
    to_near = (logits - HostExecutor(near)(inputs)["logits"]).abs().max()
    to_unquantized = (logits - HostExecutor(unquantized)(inputs)["logits"]).abs().max()
    assert to_unquantized > 0 and to_near < to_unquantized / 5


def test_int8_weights_are_per_channel_codes_and_scales_of_the_fp16_weight() -> None:
    model = random_model(CONFIG)
    program = qc.PassManager(f"{FRONT},lower-int8").run(qc.capture(model))
    histogram = program.op_histogram()
    # linears run as W8A16 ops; the fused attention ops read dequantized Wqkv and out_proj
    assert histogram["qeff.linear_w8a16"] == 2 * CONFIG.n_layers + 1
    assert histogram["qeff.dequantize_int8"] == 2 * CONFIG.n_layers
    weight = model.transformer.blocks[1].ffn.down_proj.weight
    codes, scales = quantize_weight_per_channel(weight.detach().half())
    name = "transformer.blocks.1.ffn.down_proj.weight"
    assert torch.equal(program.weights.tensor(f"{name}.int8"), codes)
    assert torch.equal(program.weights.tensor(f"{name}.scale"), scales)
    assert name not in program.weights  # the fp16 weight is gone once nothing reads it
    assert program.weights["lm_head.weight"].dtype == torch.float16  # still read by the tied input embedding


def test_mxfp6_weights_are_packed_six_bit_codes_with_e8m0_scales() -> None:
    program = qc.PassManager(f"{FRONT},lower-mxfp6").run(qc.capture(random_model(CONFIG)))
    assert program.op_histogram()["qeff.dequantize_mxfp6"] == MATMUL_WEIGHTS
    rows, cols = 4 * CONFIG.d_model, CONFIG.d_model  # up_proj
    name = "transformer.blocks.0.ffn.up_proj.weight"
    assert program.weights[f"{name}.mxfp6"].shape == (rows, cols * 6 // 8)
    assert program.weights[f"{name}.mxfp6"].dtype == torch.uint8
    assert program.weights[f"{name}.mxscale"].shape == (rows, -(-cols // 32))


def test_exclude_patterns_keep_matching_weights_fp16() -> None:
    """Mixed precision: the lm_head and all of block 0 stay fp16 while the rest is MXFP6."""
    pipeline = f"{FRONT},lower-mxfp6{{exclude=lm_head|transformer.blocks.0.*}},kv-cache{{ctx_len=32}}"
    manager = qc.PassManager(pipeline)
    program = manager.run(qc.capture(random_model(CONFIG)))
    assert program.op_histogram()["qeff.dequantize_mxfp6"] == 4
    assert all(n.startswith("transformer.blocks.1.") for n in program.weights if n.endswith(".mxfp6"))
    assert program.weights["transformer.blocks.0.attn.Wqkv.weight"].dtype == torch.float16
    assert "4 weights" in manager.notes_report()


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (f"{FRONT},lower-int8{{exclude=lm_haed}}", "exclude pattern 'lm_haed' matches none"),
        (f"{FRONT},lower-mxfp6{{format=e4m1}}", "format='e4m1' is not an MXFP6 element type"),
    ],
)
def test_bad_options_are_named(pipeline: str, message: str) -> None:
    with pytest.raises(PassOptionError, match=message):
        qc.PassManager(pipeline).run(qc.capture(random_model(CONFIG)))


def test_quantizing_needs_fp16_activations_first() -> None:
    with pytest.raises(qc.QeffError, match="fp16-activations"):
        qc.PassManager("strip-export-noise,patch-attention,lower-int8").run(qc.capture(random_model(CONFIG)))


@pytest.mark.parametrize("lowering", ["lower-int8", "lower-mxfp6"])
def test_config_only_programs_get_quantized_shapes_without_data(lowering: str) -> None:
    meta = qc.PassManager(f"{FRONT},{lowering},kv-cache{{ctx_len=32}},dce").run(qc.capture(CONFIG))
    real = qc.PassManager(f"{FRONT},{lowering},kv-cache{{ctx_len=32}},dce").run(qc.capture(random_model(CONFIG)))
    assert not meta.has_weight_data
    assert {n: meta.weights[n] for n in meta.weights} == {n: real.weights[n] for n in real.weights}


@pytest.mark.parametrize("lowering", ["lower-int8", "lower-mxfp6"])
def test_onnx_keeps_quantized_initializers_and_matches_the_host(lowering: str, tmp_path: Path) -> None:
    """Codes stay INT8 / UINT8 initializers behind qeff dequantize functions. Tolerance as for fp16 programs
    (test_onnx_export): 2e-3 of each output's largest magnitude, a few fp16 ulps."""
    program = qc.PassManager(f"{FRONT},{lowering},kv-cache{{ctx_len=16}},dce").run(
        qc.capture(random_model(CONFIG), batch_size=2, seq_len=4)
    )
    export_onnx(program, tmp_path / "program.onnx")
    model = onnx.load(str(tmp_path / "program.onnx"), load_external_data=False)
    types = {i.name: i.data_type for i in model.graph.initializer}
    code_type = onnx.TensorProto.INT8 if lowering == "lower-int8" else onnx.TensorProto.UINT8
    assert sum(t == code_type for n, t in types.items() if n.endswith((".int8", ".mxfp6"))) == MATMUL_WEIGHTS
    assert {f.name for f in model.functions} >= {"DequantizeInt8" if lowering == "lower-int8" else "DequantizeMXFP6E2M3"}
    session = ort.InferenceSession(str(tmp_path / "program.onnx"), providers=["CPUExecutionProvider"])
    inputs = sample_inputs(program, seed=2)
    inputs["position_ids"] = torch.tensor([[0, 1, 2, 3], [0, 1, -1, -1]])
    actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, {k: v.numpy() for k, v in inputs.items()}), strict=True))
    for name, value in HostExecutor(program)(inputs).items():
        reference = value.double().numpy()
        np.testing.assert_allclose(actual[name].astype(np.float64), reference, rtol=0, atol=2e-3 * np.abs(reference).max(), err_msg=name)


@pytest.fixture(scope="module")
def mxfp6_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[qc.CompiledModel, Path]:
    config = tiny_config(d_model=64, n_heads=2, n_layers=2, vocab_size=96)
    compiled = qc.compile(random_model(config), precision="mxfp6", ctx_len=24, prefill_len=6)
    path = tmp_path_factory.mktemp("artifacts") / "mxfp6"
    compiled.save(path)
    return compiled, path


def test_mxfp6_artifact_stores_6_25_bits_per_quantized_parameter(mxfp6_artifact) -> None:
    compiled, path = mxfp6_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    quantized = {name: entry for name, entry in manifest["weights"].items() if entry["precision"] == "mxfp6-e2m3"}
    assert len(quantized) == 4 * 2 + 1
    with safe_open(str(path / "weights.safetensors"), framework="pt") as handle:
        stored_bytes = sum(handle.get_tensor(part).numel() for entry in quantized.values() for part in entry["stored_as"])
    parameters = sum(math.prod(_dequantized_shape(compiled, name)) for name in quantized)
    bits = 8 * stored_bytes / parameters
    assert bits == pytest.approx(mx_storage_bits_per_element("fp6_e2m3"), rel=0.01)


def _dequantized_shape(compiled: qc.CompiledModel, name: str) -> tuple[int, ...]:
    """Shape of weight `name` as the program rebuilds it from its MXFP6 parts."""
    for node in compiled.prefill.graph.find_nodes(op="call_function", target=DEQUANTIZE_MXFP6):
        if node.args[0].meta[BINDING][1] == f"{name}.mxfp6":
            return tuple(node.meta["val"].shape)
    raise AssertionError(f"no dequantize node reads {name}.mxfp6")


def test_saved_mxfp6_onnx_files_run_in_onnx_runtime_like_the_host(mxfp6_artifact) -> None:
    """The artifact's own files (packed MXFP6 initializers, fp16 caches) against the host executors; tolerance
    as for fp16 programs: 2e-3 of each output's largest magnitude."""
    compiled, path = mxfp6_artifact
    for file, program, executor in zip(("program.onnx", "decode.onnx"), (compiled.prefill, compiled.decode), compiled.host_executors(), strict=True):
        inputs = sample_inputs(program, seed=3)
        session = ort.InferenceSession(str(path / file), providers=["CPUExecutionProvider"])
        results = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        for spec, actual in zip(program.outputs, results, strict=True):
            reference = executor(inputs)[spec.name].double().numpy()
            bound = 2e-3 * np.abs(reference).max()
            np.testing.assert_allclose(actual.astype(np.float64), reference, rtol=0, atol=bound, err_msg=f"{file}:{spec.name}")


def test_mxfp6_artifact_round_trip_and_recorded_precisions(mxfp6_artifact) -> None:
    compiled, path = mxfp6_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["options"]["precision"] == "mxfp6"
    assert manifest["weights"]["transformer.norm_f.weight"]["precision"] == "fp16"
    assert manifest["weights"]["lm_head.weight"]["unquantized_copy"]["precision"] == "fp16"
    loaded = qc.load_compiled(path)
    prompts = [[1, 2, 3, 4, 5, 6, 7]]
    assert torch.equal(loaded.generate(prompts, 6).sequences, compiled.generate(prompts, 6).sequences)


def test_int8_compile_generates_and_reports_the_precision_of_each_weight() -> None:
    compiled = qc.compile(random_model(CONFIG), precision="int8", ctx_len=24, prefill_len=6)
    assert "lower-int8" in compiled.pipeline
    assert compiled.generate([[1, 2, 3]], 4).sequences.shape == (1, 7)
    assert DEQUANTIZE_INT8 in {n.target for n in compiled.decode.graph.nodes}


def test_unknown_precision_and_cache_dtype_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="precision 'int4' is not one of"):
        qc.compile(CONFIG, precision="int4")
    with pytest.raises(InvalidArgumentError, match="kv_cache_dtype 'int4' is not one of"):
        qc.compile(CONFIG, kv_cache_dtype="int4")
