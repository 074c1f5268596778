"""`w8a8`: the `linear_w8a8` op (host and ONNX Runtime), calibration tables, and the `lower-w8a8` pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from transformers import MptForCausalLM

import qeff_compiler as qc
from qeff_compiler.backends.onnx_export import export_onnx
from qeff_compiler.backends.onnx_quant import dequantize_call
from qeff_compiler.calibration import activation_maxima, load_calibration, save_calibration
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError, PassOptionError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.ops import DEQUANTIZE_INT8, LINEAR_W8A8
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.numerics import int8
from qeff_compiler.numerics.int8 import QMAX, quantize_weight_per_channel, smoothing_factors
from qeff_compiler.passes.lower_w8a8 import LowerW8A8
from qeff_compiler.passes.pipeline import build_passes, pipeline_text
from tests.conftest import random_model, tiny_config

FRONT = "strip-export-noise,patch-attention,lower-fp16"
CONFIG = tiny_config(n_heads=3, d_model=48, n_layers=2, attn_config={"clip_qkv": 0.5})
#: linears with a matmul weight in a 2-layer MPT: up_proj, down_proj per layer, and lm_head
LINEARS = 2 * CONFIG.n_layers + 1
LINEAR_WEIGHTS = [
    *(f"transformer.blocks.{i}.ffn.{proj}.weight" for i in range(CONFIG.n_layers) for proj in ("up_proj", "down_proj")),
    "lm_head.weight",
]


def _op_inputs(rows: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, ...]:
    """fp16-valued activations with an outlier channel, smoothing factors, a scale, and quantized weights."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, rows, in_features, generator=gen) * 2).half().float()
    x[..., 3] *= 40
    smooth = torch.rand(in_features, generator=gen) + 0.25
    act_scale = ((x / smooth).abs().max() / QMAX * 0.8).reshape(())  # the largest values saturate
    qweight, w_scale = quantize_weight_per_channel(torch.randn(out_features, in_features, generator=gen))
    return x, smooth, act_scale, qweight, w_scale


def test_linear_w8a8_op_is_smoothing_then_the_int8_reference() -> None:
    x, smooth, act_scale, qweight, w_scale = _op_inputs(5, 64, 24, seed=0)
    codes = int8.quantize_activation_per_tensor(x / smooth, act_scale.item())
    expected = int8.linear_w8a8(codes, act_scale.item(), qweight, w_scale)
    assert torch.equal(LINEAR_W8A8(x, smooth, act_scale, qweight, w_scale), expected)
    assert int((codes.abs() == QMAX).sum()) > 0  # saturation was exercised


def test_linear_w8a8_op_accumulates_exactly_past_2_to_the_24() -> None:
    """K = 4096 with all codes ±127: the sums are ±66,064,384, beyond fp32's exact integers (2^24)."""
    k = 4096
    act_scale, smooth = torch.tensor(0.5), torch.full((k,), 2.0)
    x = torch.full((1, k), 127.0)  # / 2 / 0.5 → code 127
    qweight = torch.tensor([[QMAX] * k, [-QMAX] * k], dtype=torch.int8)
    y = LINEAR_W8A8(x, smooth, act_scale, qweight, torch.tensor([1.0, 0.25]))
    assert y.tolist() == [[127.0 * 127 * k * 0.5, -127.0 * 127 * k * 0.5 * 0.25]]


def _onnx_session_of_op(shape: tuple[int, ...], in_features: int, out_features: int) -> ort.InferenceSession:
    """A one-node ONNX model calling the LinearW8A8 function that the exporter emits for the op."""
    graph = torch.fx.Graph()
    args = [graph.placeholder(name) for name in ("x", "smooth", "act_scale", "qweight", "w_scale")]
    call = dequantize_call(graph.call_function(LINEAR_W8A8, tuple(args)))
    function = ir.serde.serialize_function(call.build(21))
    types = [onnx.TensorProto.FLOAT] * 3 + [onnx.TensorProto.INT8, onnx.TensorProto.FLOAT]
    shapes = [shape, [in_features], [], [out_features, in_features], [out_features]]
    node = onnx.helper.make_node(call.function, [str(a) for a in args], ["y"], domain=function.domain)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "linear_w8a8",
            [onnx.helper.make_tensor_value_info(str(a), t, s) for a, t, s in zip(args, types, shapes, strict=True)],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [*shape[:-1], out_features])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid(function.domain, 1)],
        functions=[function],
    )
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnx_function_is_bit_exact_including_ties_saturation_and_the_k4096_worst_case() -> None:
    x, smooth, act_scale, qweight, w_scale = _op_inputs(3, 4096, 6, seed=1)
    qweight[0], qweight[1] = QMAX, -QMAX
    x[0, 0] = 1e4 * smooth  # all codes +127 in this row: the int32 sums reach ±66,064,384
    act_scale = torch.tensor(2.0**-4)  # ties · act_scale stay exact
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -126.5])  # exact in fp32 and fp64 as quotients
    x[0, 1, :7], smooth[:7] = ties * act_scale, 1.0
    session = _onnx_session_of_op(tuple(x.shape), 4096, 6)
    feeds = dict(zip(("x", "smooth", "act_scale", "qweight", "w_scale"), (x, smooth, act_scale, qweight, w_scale), strict=True))
    (actual,) = session.run(None, {name: value.numpy() for name, value in feeds.items()})
    assert np.array_equal(actual, LINEAR_W8A8(x, smooth, act_scale, qweight, w_scale).numpy())


@given(alpha=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_smoothing_leaves_the_linear_unchanged_in_exact_arithmetic(alpha: float, seed: int) -> None:
    """linear(x / s, W · s) = linear(x, W): in fp32 only roundings of x / s and W · s (2^-24 relative each) differ."""
    gen = torch.Generator().manual_seed(seed)
    x, weight = torch.randn(4, 32, generator=gen), torch.randn(8, 32, generator=gen)
    x[:, 5] *= 100
    s = smoothing_factors(x.abs().amax(dim=0), weight, alpha)
    smoothed = F.linear((x / s).double(), (weight * s).double())
    bound = 4 * 2.0**-24 * (x.double().abs() @ weight.double().abs().T)
    assert ((smoothed - F.linear(x.double(), weight.double())).abs() <= bound).all()


# calibration ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_table() -> dict[str, torch.Tensor]:
    return qc.calibrate(TINY_MPT, max_tokens=512)  # two 256-token windows of calibration.txt


def test_calibration_table_of_the_shipped_model_has_every_linear(shipped_table: dict[str, torch.Tensor]) -> None:
    layers = 4
    expected = {f"transformer.blocks.{i}.ffn.up_proj.weight": 256 for i in range(layers)}
    expected |= {f"transformer.blocks.{i}.ffn.down_proj.weight": 1024 for i in range(layers)}
    expected["lm_head.weight"] = 256
    assert {name: tuple(t.shape) for name, t in shipped_table.items()} == {n: (c,) for n, c in expected.items()}
    assert all(t.dtype == torch.float32 and bool((t > 0).all()) for t in shipped_table.values())


def test_calibration_maxima_match_hf_module_inputs(shipped_table: dict[str, torch.Tensor]) -> None:
    """An independent measurement: a forward hook on HF's up_proj of block 1 over the same two windows. HF computes
    in fp32 and calibration in fp16 (as the device), so they agree to fp16 rounding, a few 1e-3 relative."""
    from transformers import AutoTokenizer

    text = (TINY_MPT / "calibration.txt").read_text()
    ids = AutoTokenizer.from_pretrained(TINY_MPT)(text, verbose=False)["input_ids"]
    windows = torch.tensor(ids[:512]).reshape(2, 256)
    model = MptForCausalLM.from_pretrained(TINY_MPT, dtype=torch.float32).eval()
    maxima: list[torch.Tensor] = []
    hook = model.transformer.blocks[1].ffn.up_proj.register_forward_hook(
        lambda module, args, output: maxima.append(args[0].abs().amax(dim=(0, 1)))
    )
    with torch.no_grad():
        model(windows)
    hook.remove()
    measured = shipped_table["transformer.blocks.1.ffn.up_proj.weight"]
    torch.testing.assert_close(measured, maxima[0], rtol=1e-2, atol=1e-2)


def test_calibration_table_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    table = {"a.weight": torch.tensor([1.0, 2.0]), "b.weight": torch.tensor([0.0, 3.0, 4.0])}
    save_calibration(table, tmp_path / "t.safetensors")
    loaded = load_calibration(tmp_path / "t.safetensors")
    assert loaded.keys() == table.keys() and all(torch.equal(loaded[k], table[k]) for k in table)
    with pytest.raises(InvalidArgumentError, match="does not exist; make one with qc.calibrate"):
        load_calibration(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a table")
    with pytest.raises(InvalidArgumentError, match="not a readable safetensors file"):
        load_calibration(tmp_path / "text.safetensors")
    save_file({"a.weight": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(InvalidArgumentError, match="not a calibration table"):
        load_calibration(tmp_path / "plain.safetensors")
    with pytest.raises(InvalidArgumentError, match="'a.weight' has negative or non-finite maxima"):
        save_calibration({"a.weight": torch.tensor([1.0, -1.0])}, tmp_path / "neg.safetensors")


def test_calibrate_needs_text_and_a_full_window(tmp_path: Path) -> None:
    bare = tmp_path / "model"
    bare.mkdir()
    for file in TINY_MPT.iterdir():
        if file.name != "calibration.txt":
            (bare / file.name).symlink_to(file)
    with pytest.raises(InvalidArgumentError, match="has no calibration.txt; pass the calibration text"):
        qc.calibrate(bare)
    with pytest.raises(InvalidArgumentError, match="at least one 256-token window"):
        qc.calibrate(bare, text="def f(): pass")
    with pytest.raises(InvalidArgumentError, match="max_tokens must be a positive integer, got 0"):
        qc.calibrate(bare, max_tokens=0)


def test_calibration_text_is_not_validation_text() -> None:
    validation = (TINY_MPT / "validation.txt").read_text()
    files = (TINY_MPT / "calibration.txt").read_text().split("<|endoftext|>")[:-1]
    assert len(files) >= 5 and all(file not in validation for file in files)
    assert (TINY_MPT / "calibration.txt").stat().st_size <= 64 * 1024


# the pass ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration table of the seeded random CONFIG model, measured on four random-token windows."""
    program = qc.PassManager(FRONT, verify=False).run(qc.capture(random_model(CONFIG), seq_len=CONFIG.max_seq_len))
    windows = torch.randint(0, CONFIG.vocab_size, (4, CONFIG.max_seq_len), generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("calibration") / "table.safetensors"
    save_calibration(activation_maxima(program, windows), path)
    return path


def _w8a8(table: Path | str, options: str = "") -> str:
    return f"lower-w8a8{{calibration={table}{options}}}"


def _lowered(table: Path | str, options: str = "", *, kv_cache: bool = False) -> tuple[qc.Program, qc.PassManager]:
    """The seeded CONFIG model through FRONT and lower-w8a8 (after kv-cache if asked), verified by the manager."""
    middle = f"kv-cache{{ctx_len=16}},{_w8a8(table, options)}" if kv_cache else _w8a8(table, options)
    manager = qc.PassManager(f"{FRONT},{middle},dce")
    return manager.run(qc.capture(random_model(CONFIG), batch_size=2, seq_len=4)), manager


def test_linears_become_w8a8_and_attention_weights_int8(table_path: Path) -> None:
    program, manager = _lowered(table_path)
    histogram = program.op_histogram()
    assert histogram["qeff.linear_w8a8"] == LINEARS and histogram["aten.linear"] == 0
    assert histogram["qeff.dequantize_int8"] == 2 * CONFIG.n_layers  # Wqkv and out_proj, read by the fused ops
    for name in LINEAR_WEIGHTS:
        specs = [program.weights[f"{name}.{suffix}"] for suffix in ("w8a8", "w8a8_scale", "smooth", "act_scale")]
        out_features, in_features = random_model(CONFIG).get_parameter(name).shape
        assert [(s.shape, s.dtype) for s in specs] == [
            ((out_features, in_features), torch.int8), ((out_features,), torch.float32),
            ((in_features,), torch.float32), ((), torch.float32),
        ]
    record = next(r for r in manager.records if r.pass_text.startswith("lower-w8a8"))
    assert 0 < record.max_abs_diff <= LowerW8A8.tolerance
    assert any("fused-attention weights" in note and "W8A16" in note for note in record.notes)


def test_stored_parts_follow_smoothquant(table_path: Path) -> None:
    """s = smoothing_factors(a, W, alpha), codes and scales of W · s per channel, act_scale = max(a / s) / 127."""
    program, _ = _lowered(table_path, ",alpha=0.75")
    name = "transformer.blocks.1.ffn.down_proj.weight"
    absmax = load_calibration(table_path)[name]
    weight = random_model(CONFIG).get_parameter(name).detach().half().float()
    smooth = smoothing_factors(absmax, weight, 0.75)
    codes, scales = quantize_weight_per_channel(weight * smooth)
    assert torch.equal(program.weights.tensor(f"{name}.smooth"), smooth)
    assert torch.equal(program.weights.tensor(f"{name}.w8a8"), codes)
    assert torch.equal(program.weights.tensor(f"{name}.w8a8_scale"), scales)
    assert program.weights.tensor(f"{name}.act_scale").item() == ((absmax / smooth).max() / QMAX).item()


def test_w8a8_before_or_after_kv_cache_and_excluded_weights(table_path: Path) -> None:
    after, _ = _lowered(table_path, kv_cache=True)
    assert after.op_histogram()["qeff.linear_w8a8"] == LINEARS
    excluded, _ = _lowered(table_path, ",exclude=lm_head", kv_cache=True)
    assert excluded.op_histogram()["qeff.linear_w8a8"] == LINEARS - 1
    assert excluded.op_histogram()["aten.linear"] == 1 and "lm_head.weight" in excluded.weights
    # kv-cache after lower-w8a8 (lm_head is then a linear_w8a8), verified: kv-cache allows for an fp16 ulp of its
    # reordered attention flipping an int8 activation code downstream (KVCache.w8a8_tolerance)
    before = qc.PassManager(f"{FRONT},{_w8a8(table_path)},kv-cache{{ctx_len=16}},dce").run(
        qc.capture(random_model(CONFIG), batch_size=2, seq_len=4)
    )
    assert before.op_histogram()["qeff.linear_w8a8"] == LINEARS
    assert [s.name for s in before.outputs] == [s.name for s in after.outputs]


def test_config_only_program_gets_the_weights_of_a_real_one_without_a_table(table_path: Path) -> None:
    """Re-loading an artifact re-runs the pipeline on a meta capture, where the table file may be gone."""
    def pipeline(table: Path | str) -> str:
        return f"{FRONT},kv-cache{{ctx_len=16}},{_w8a8(table)},dce"

    meta = qc.PassManager(pipeline("/nonexistent/table.safetensors")).run(qc.capture(CONFIG))
    real = qc.PassManager(pipeline(table_path)).run(qc.capture(random_model(CONFIG)))
    assert not meta.has_weight_data
    assert {n: meta.weights[n] for n in meta.weights} == {n: real.weights[n] for n in real.weights}
    assert qc.PassManager(f"{FRONT},lower-w8a8").run(qc.capture(CONFIG)).op_histogram()["qeff.linear_w8a8"] == LINEARS


def test_onnx_runtime_matches_the_host_with_kv_cache(table_path: Path, tmp_path: Path) -> None:
    """Observed bit-identical on this machine; the tolerance (as for fp16 programs in test_quantized_weights) allows
    an fp32 reordering in ORT's attention to move an fp16 value that then flips an activation code."""
    program, _ = _lowered(table_path, kv_cache=True)
    export_onnx(program, tmp_path / "program.onnx")
    model = onnx.load(str(tmp_path / "program.onnx"), load_external_data=False)
    assert [n.op_type for n in model.graph.node].count("LinearW8A8") == LINEARS
    assert {"LinearW8A8", "DequantizeInt8"} <= {f.name for f in model.functions}
    session = ort.InferenceSession(str(tmp_path / "program.onnx"), providers=["CPUExecutionProvider"])
    inputs = sample_inputs(program, seed=2)
    generator = torch.Generator().manual_seed(2)
    for name, value in inputs.items():
        if name.startswith("past_"):
            inputs[name] = torch.randn(value.shape, generator=generator).to(value.dtype)
    inputs["position_ids"] = torch.tensor([[5, 6, 7, 8], [3, 4, -1, -1]])
    results = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    actual = dict(zip([o.name for o in session.get_outputs()], results, strict=True))
    for name, value in HostExecutor(program)(inputs).items():
        reference = value.double().numpy()
        atol = 2e-3 * np.abs(reference).max()
        np.testing.assert_allclose(actual[name].astype(np.float64), reference, rtol=0, atol=atol, err_msg=name)


def test_bad_options_and_tables_are_named(table_path: Path, tmp_path: Path) -> None:
    with pytest.raises(PassOptionError, match=r"alpha=1.5 is outside \[0, 1\]"):
        qc.PassManager(f"{FRONT},{_w8a8(table_path, ',alpha=1.5')}")
    with pytest.raises(PassOptionError, match=r"needs a calibration table .* qc.calibrate\(model_dir\)"):
        qc.PassManager(f"{FRONT},lower-w8a8").run(qc.capture(random_model(CONFIG)))
    table = load_calibration(table_path)
    save_calibration({k: v for k, v in table.items() if k != "lm_head.weight"}, tmp_path / "partial.safetensors")
    with pytest.raises(PassOptionError, match="has no maxima for weight 'lm_head.weight'"):
        _lowered(tmp_path / "partial.safetensors")
    unknown = {"transformer.blocks.7.ffn.up_proj.weight": torch.ones(48)}
    save_calibration(table | unknown, tmp_path / "extra.safetensors")
    with pytest.raises(PassOptionError, match="maxima for 'transformer.blocks.7.ffn.up_proj.weight'.*another model"):
        _lowered(tmp_path / "extra.safetensors")
    save_calibration(table | {"lm_head.weight": torch.ones(7)}, tmp_path / "shape.safetensors")
    with pytest.raises(PassOptionError, match=r"shape \[7\] for 'lm_head.weight', whose input has 48 channels"):
        _lowered(tmp_path / "shape.safetensors")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        _lowered(tmp_path / "missing.safetensors")


def test_dequantized_attention_weights_are_the_int8_codes_of_lower_int8(table_path: Path) -> None:
    """Wqkv / out_proj get exactly what lower-int8 stores for them (its code is reused)."""
    w8a8, _ = _lowered(table_path)
    w8a16 = qc.PassManager(f"{FRONT},lower-int8,dce").run(qc.capture(random_model(CONFIG), batch_size=2, seq_len=4))
    name = "transformer.blocks.0.attn.Wqkv.weight"
    for part in (f"{name}.int8", f"{name}.scale"):
        assert torch.equal(w8a8.weights.tensor(part), w8a16.weights.tensor(part))
    assert DEQUANTIZE_INT8 in {n.target for n in w8a8.graph.nodes}


def test_w8a8_compile_calibrates_and_its_artifact_keeps_the_table(tmp_path: Path) -> None:
    """compile(precision="w8a8") calibrates on the directory's calibration.txt; the artifact keeps the table, its
    manifest names the weights' precisions, and it reloads to the same tokens."""
    compiled = qc.compile(TINY_MPT, precision="w8a8", ctx_len=32, prefill_len=8)
    assert "lower-w8a8{calibration=calibration.safetensors}" in compiled.pipeline
    compiled.save(tmp_path / "artifact")
    assert load_calibration(tmp_path / "artifact" / "calibration.safetensors").keys() == compiled.calibration_table.keys()
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    assert manifest["weights"]["transformer.blocks.0.ffn.up_proj.weight"]["precision"] == "w8a8"
    assert manifest["weights"]["transformer.blocks.0.attn.Wqkv.weight"]["precision"] == "int8"
    loaded = qc.load_compiled(tmp_path / "artifact")
    assert torch.equal(loaded.generate([[5, 6, 7]], 6).sequences, compiled.generate([[5, 6, 7]], 6).sequences)


def test_w8a8_compile_of_a_model_object_needs_a_table(table_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="w8a8 needs calibration"):
        qc.compile(random_model(CONFIG), precision="w8a8", ctx_len=16, prefill_len=4)
    compiled = qc.compile(random_model(CONFIG), precision="w8a8", ctx_len=16, prefill_len=4, calibration=table_path)
    assert compiled.decode.op_histogram()["qeff.linear_w8a8"] == LINEARS


def test_calibration_table_path_with_a_comma_and_a_space_compiles(table_path: Path, tmp_path: Path) -> None:
    """Options reach the passes as values, not through pipeline text: any file name works, and the recorded
    pipeline names the table as the artifact stores it, so its text parses back to the same pipeline."""
    odd = tmp_path / "calib, v2 {final}=1.safetensors"
    shutil.copyfile(table_path, odd)
    compiled = qc.compile(random_model(CONFIG), precision="w8a8", ctx_len=16, prefill_len=4, calibration=odd)
    reference = qc.compile(random_model(CONFIG), precision="w8a8", ctx_len=16, prefill_len=4, calibration=table_path)
    assert compiled.decode.op_histogram()["qeff.linear_w8a8"] == LINEARS
    assert torch.equal(compiled.generate([[3, 4, 5]], 4).sequences, reference.generate([[3, 4, 5]], 4).sequences)
    assert "lower-w8a8{calibration=calibration.safetensors}" in compiled.pipeline
    assert pipeline_text(build_passes(compiled.pipeline)) == compiled.pipeline
