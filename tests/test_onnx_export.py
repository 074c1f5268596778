"""ONNX emit: the exported file runs in ONNX Runtime as it is and computes what the host executor computes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import MptConfig

import qeff_compiler as qc
from qeff_compiler.backends.onnx_export import QEFF_DOMAIN, export_onnx
from qeff_compiler.errors import MetaWeightError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.program import Program
from tests.conftest import random_model, tiny_config

BATCH, SEQ_LEN, CTX_LEN = 2, 4, 16
KV_PIPELINE = f"strip-export-noise,patch-attention,kv-cache{{ctx_len={CTX_LEN}}},dce"
PREFILL_PIPELINE = "strip-export-noise,patch-attention,dce"
_ORT_TYPES = {torch.int64: "tensor(int64)", torch.float32: "tensor(float)"}


@dataclass(frozen=True)
class Exported:
    program: Program
    path: Path
    session: ort.InferenceSession

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        results = self.session.run(None, {name: value.numpy() for name, value in inputs.items()})
        return dict(zip([spec.name for spec in self.program.outputs], results, strict=True))

    def model(self) -> onnx.ModelProto:
        return onnx.load(str(self.path), load_external_data=False)


def _export(program: Program, directory: Path) -> Exported:
    path = directory / "program.onnx"
    export_onnx(program, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the machine is shared
    return Exported(program, path, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))


def _capture(config: MptConfig, directory: Path, *, from_checkpoint: bool, pipeline: str) -> Program:
    """A seeded random model through `pipeline`; captured from a saved checkpoint if asked, where tied
    embeddings are two weight names sharing one stored tensor."""
    model = random_model(config)
    if from_checkpoint:
        model.save_pretrained(directory / "checkpoint")
    source = directory / "checkpoint" if from_checkpoint else model
    return qc.PassManager(pipeline).run(qc.capture(source, batch_size=BATCH, seq_len=SEQ_LEN))


KV_CASES = {
    "tied-3-heads-clip_qkv": (tiny_config(n_heads=3, d_model=24, attn_config={"clip_qkv": 0.5}), True),
    "untied-5-heads": (tiny_config(n_heads=5, d_model=40, tie_word_embeddings=False), False),
}


@pytest.fixture(scope="module", params=list(KV_CASES))
def kv_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    config, from_checkpoint = KV_CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    program = _capture(config, directory, from_checkpoint=from_checkpoint, pipeline=KV_PIPELINE)
    return _export(program, directory / "onnx")


def _inputs(program: Program, position_ids: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random input ids and a random (nonzero) past cache at every slot, so stale or wrong writes show."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        spec.name: torch.randn(spec.shape, generator=generator)
        for spec in program.inputs
        if spec.role in ("past_key", "past_value")
    }
    inputs["input_ids"] = torch.randint(0, program.config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
    inputs["position_ids"] = torch.tensor(position_ids)
    return inputs


CONTINUING = [[5, 6, 7, 8], [9, 10, 11, 12]]  # both rows after a cached prefix
RAGGED = [[5, 6, 7, 8], [3, 4, -1, -1]]  # second row: two tokens, then padding


@pytest.mark.parametrize("position_ids", [CONTINUING, RAGGED], ids=["continuing", "ragged"])
def test_ort_matches_host_executor(kv_export: Exported, position_ids: list[list[int]]) -> None:
    inputs = _inputs(kv_export.program, position_ids)
    expected = HostExecutor(kv_export.program)(inputs)
    actual = kv_export.run(inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value.numpy(), rtol=0, atol=1e-4, err_msg=name)


def test_padding_positions_are_never_written(kv_export: Exported) -> None:
    inputs = _inputs(kv_export.program, RAGGED, seed=1)
    actual = kv_export.run(inputs)
    retained = [spec.name for spec in kv_export.program.outputs if spec.role.startswith("retained")]
    assert len(retained) == 2 * kv_export.program.config.n_layers
    for name in retained:
        past = inputs[name.removesuffix("_RetainedState")].numpy()
        assert np.abs(past[1, :, CTX_LEN - 1]).max() > 0
        np.testing.assert_array_equal(actual[name][1, :, CTX_LEN - 1], past[1, :, CTX_LEN - 1], err_msg=name)
        np.testing.assert_array_equal(actual[name][1, :, 5:], past[1, :, 5:], err_msg=name)


def _described(values: list[ort.NodeArg]) -> list[tuple[str, tuple, str]]:
    return [(value.name, tuple(value.shape), value.type) for value in values]


def test_io_names_shapes_and_dtypes_follow_the_specs(kv_export: Exported) -> None:
    program, session = kv_export.program, kv_export.session
    assert _described(session.get_inputs()) == [(s.name, s.shape, _ORT_TYPES[s.dtype]) for s in program.inputs]
    assert _described(session.get_outputs()) == [(s.name, s.shape, _ORT_TYPES[s.dtype]) for s in program.outputs]
    assert [s.name for s in program.inputs][2:4] == ["past_key.0", "past_value.0"]
    assert [s.name for s in program.outputs][1:3] == ["past_key.0_RetainedState", "past_value.0_RetainedState"]


def test_file_passes_full_check_with_weights_in_one_external_file(kv_export: Exported) -> None:
    onnx.checker.check_model(str(kv_export.path), full_check=True)
    assert sorted(p.name for p in kv_export.path.parent.iterdir()) == ["program.onnx", "program.onnx.data"]
    initializers = kv_export.model().graph.initializer
    assert initializers
    for initializer in initializers:
        assert initializer.data_location == onnx.TensorProto.EXTERNAL, initializer.name
        assert {e.key: e.value for e in initializer.external_data}["location"] == "program.onnx.data"


def test_weights_are_named_initializers_stored_once(kv_export: Exported) -> None:
    """Tied weights (embedding and lm_head) are one initializer: stored elements = distinct parameters."""
    initializers = {i.name: int(np.prod(i.dims)) for i in kv_export.model().graph.initializer}
    assert sum(initializers.values()) == kv_export.program.num_parameters()
    assert set(initializers) <= set(kv_export.program.weights)
    tied = kv_export.program.weights.tied_groups()
    assert all(sum(name in initializers for name in group) == 1 for group in tied)


def test_attention_layers_are_calls_of_one_qeff_function(kv_export: Exported) -> None:
    model = kv_export.model()
    assert [(f.domain, f.name) for f in model.functions] == [(QEFF_DOMAIN, "MptAttentionKV")]
    calls = [node.op_type for node in model.graph.node if node.domain == QEFF_DOMAIN]
    assert calls == ["MptAttentionKV"] * kv_export.program.config.n_layers
    assert not any(node.op_type == "Softmax" for node in model.graph.node)


def test_prefill_without_cache_exports_and_matches(tmp_path: Path) -> None:
    config = tiny_config(n_heads=5, d_model=40, attn_config={"clip_qkv": 0.3})
    exported = _export(_capture(config, tmp_path, from_checkpoint=False, pipeline=PREFILL_PIPELINE), tmp_path)
    input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    expected = HostExecutor(exported.program)({"input_ids": input_ids})["logits"]
    actual = exported.run({"input_ids": input_ids})["logits"]
    assert actual.shape == (BATCH, SEQ_LEN, config.vocab_size)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-4)
    assert [(f.domain, f.name) for f in exported.model().functions] == [(QEFF_DOMAIN, "MptAttention")]


def test_config_only_program_is_rejected_before_writing(tmp_path: Path) -> None:
    program = qc.PassManager(KV_PIPELINE).run(qc.capture(tiny_config(), batch_size=BATCH, seq_len=SEQ_LEN))
    with pytest.raises(MetaWeightError, match="captured from a config alone"):
        export_onnx(program, tmp_path / "program.onnx")
    assert not any(tmp_path.iterdir())


def test_fp16_lowered_stateful_program_matches_host_executor(tmp_path: Path) -> None:
    """fp16 weights are FLOAT16 initializers, the cache FLOAT16 I/O, and the functions round where the reference
    kernels do. Tolerance: 2e-3 of each output's largest magnitude — a few fp16 ulps, for the rare value an fp32
    accumulation-order difference (ORT vs torch matmul) moves across a rounding boundary; measured 0 on this
    model and ≤ 4.9e-4 relative on the shipped one."""
    config = tiny_config(n_heads=3, d_model=24, attn_config={"clip_qkv": 0.5})
    program = _capture(config, tmp_path, from_checkpoint=False, pipeline=KV_PIPELINE.replace(",dce", ",lower-fp16,dce"))
    exported = _export(program, tmp_path / "onnx")
    caches = [i for i in exported.session.get_inputs() if i.name.startswith("past_")]
    assert caches and all(i.type == "tensor(float16)" for i in caches)
    initializers = {i.name: i.data_type for i in exported.model().graph.initializer}
    assert initializers.pop("alibi_slopes") == onnx.TensorProto.FLOAT
    assert set(initializers.values()) == {onnx.TensorProto.FLOAT16}
    inputs = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in _inputs(program, RAGGED).items()}
    expected = HostExecutor(program)(inputs)
    actual = exported.run(inputs)
    for name, value in expected.items():
        reference = value.double().numpy()
        bound = 2e-3 * np.abs(reference).max()
        np.testing.assert_allclose(actual[name].astype(np.float64), reference, rtol=0, atol=bound, err_msg=name)
