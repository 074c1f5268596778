"""The hand-off files match what QEfficient writes for the same MPT and options, written down here from its code
(quic/efficient-transformers: `QEFFBaseModel._compile`, `QEFFAutoModelForCausalLM.compile` and its specialization
builders, `to_named_specializations`, `generate_mdp_partition_config`, `create_json`)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import qeff_compiler as qc
from qeff_compiler.errors import HandoffError
from tests.conftest import random_model, tiny_config

N_LAYERS, N_HEADS, HEAD_DIM, VOCAB = 2, 4, 8, 64


def qefficient_signature(n_layers: int) -> tuple[list[tuple], list[tuple]]:
    """QEfficient's export of an MPT: (name, elem type, dims) of the inputs and outputs, in order. Symbolic dims
    are named; the logits' batch dim is QEfficient's `batch_size` too (its other output dims are auto-named)."""
    kv = ["batch_size", N_HEADS, "ctx_len", HEAD_DIM]
    inputs = [("input_ids", onnx.TensorProto.INT64, ["batch_size", "seq_len"])]
    outputs = [("logits", onnx.TensorProto.FLOAT, ["batch_size", 1, VOCAB])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append((f"past_{kind}.{i}", onnx.TensorProto.FLOAT, kv))
            outputs.append((f"past_{kind}.{i}_RetainedState", onnx.TensorProto.FLOAT, kv))
    inputs.append(("position_ids", onnx.TensorProto.INT64, ["batch_size", "seq_len"]))
    return inputs, outputs


QEFFICIENT_SPECIALIZATIONS = {
    "specializations": [
        {"name": "Prefill", "symbols": {"batch_size": "1", "ctx_len": "24", "seq_len": "8"}},
        {"name": "Decode", "symbols": {"batch_size": "1", "ctx_len": "24", "seq_len": "1"}},
    ]
}
QEFFICIENT_CUSTOM_IO_MXINT8 = (
    " - IOName: past_key.0\n   Precision: mxint8\n\n"
    " - IOName: past_key.0_RetainedState\n   Precision: mxint8\n\n"
    " - IOName: past_value.0\n   Precision: mxint8\n\n"
    " - IOName: past_value.0_RetainedState\n   Precision: mxint8\n\n"
    " - IOName: past_key.1\n   Precision: mxint8\n\n"
    " - IOName: past_key.1_RetainedState\n   Precision: mxint8\n\n"
    " - IOName: past_value.1\n   Precision: mxint8\n\n"
    " - IOName: past_value.1_RetainedState\n   Precision: mxint8\n\n"
)
QEFFICIENT_MDP_2 = {
    "connections": [{"devices": [0, 1], "type": "p2p"}],
    "partitions": [
        {"name": "Partition0", "devices": [{"deviceId": 0, "numCores": 14}, {"deviceId": 1, "numCores": 14}]}
    ],
}
QEFFICIENT_COMMAND = (
    "-aic-hw -aic-hw-version=ai100 -m=model.onnx -retained-state -convert-to-fp16 -mxfp6-matmul -aic-num-cores=14 "
    "-mdp-load-partition-config=mdp_ts_2.json -network-specialization-config=specializations.json "
    "-custom-IO-list-file=custom_io.yaml -aic-binary-dir=qpc"
)


@pytest.fixture(scope="module")
def model() -> object:
    return random_model(tiny_config(d_model=N_HEADS * HEAD_DIM, n_heads=N_HEADS, n_layers=N_LAYERS, vocab_size=VOCAB))


def export(model: object, directory: Path, **options: object) -> list[Path]:
    handoff = {k: options.pop(k) for k in ("named_specializations", "weight_dtype") if k in options}
    compiled = qc.compile(model, **{"precision": "fp32", "ctx_len": 24, "prefill_len": 8, "verify": False, **options})
    return compiled.export_qaic(directory, **handoff)


def signature(values: list[onnx.ValueInfoProto]) -> list[tuple]:
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in values]


def test_mxfp6_mxint8_two_devices_match_qefficient(model: object, tmp_path: Path) -> None:
    files = export(model, tmp_path, precision="mxfp6", kv_cache_dtype="mxint8", num_devices=2)
    names = ["model.onnx", "model.onnx.data", "specializations.json", "custom_io.yaml", "mdp_ts_2.json", "compile.sh"]
    assert [f.name for f in files] == names
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    assert (signature(graph.input), signature(graph.output)) == qefficient_signature(N_LAYERS)
    assert json.loads((tmp_path / "specializations.json").read_text()) == QEFFICIENT_SPECIALIZATIONS
    assert (tmp_path / "custom_io.yaml").read_text() == QEFFICIENT_CUSTOM_IO_MXINT8
    assert json.loads((tmp_path / "mdp_ts_2.json").read_text()) == QEFFICIENT_MDP_2
    script = (tmp_path / "compile.sh").read_text()
    assert f'"${{QAIC_SDK:-/opt/qti-aic}}/exec/qaic-compile" {QEFFICIENT_COMMAND} "$@"' in script
    assert (tmp_path / "compile.sh").stat().st_mode & 0o111


def test_fp16_single_device_legacy_specializations(model: object, tmp_path: Path) -> None:
    files = export(model, tmp_path, precision="fp16", batch_size=2, named_specializations=False, num_cores=4)
    assert "mdp_ts_1.json" not in [f.name for f in files]
    assert json.loads((tmp_path / "specializations.json").read_text()) == {
        "specializations": [
            {"batch_size": "2", "ctx_len": "24", "seq_len": "8"},
            {"batch_size": "2", "ctx_len": "24", "seq_len": "1"},
        ]
    }
    assert (tmp_path / "custom_io.yaml").read_text() == QEFFICIENT_CUSTOM_IO_MXINT8.replace("mxint8", "float16")
    script = (tmp_path / "compile.sh").read_text()
    flags = "-m=model.onnx -retained-state -convert-to-fp16 -aic-num-cores=4 -network-specialization-config="
    assert flags in script and "-mxfp6-matmul" not in script and "-mdp-load-partition-config" not in script


def test_fp16_weights_halve_the_data_file(model: object, tmp_path: Path) -> None:
    export(model, tmp_path / "fp32", precision="fp16")
    export(model, tmp_path / "fp16", precision="fp16", weight_dtype="fp16")
    sizes = [(tmp_path / d / "model.onnx.data").stat().st_size for d in ("fp32", "fp16")]
    assert sizes[1] < 0.6 * sizes[0]
    onnx.checker.check_model(str(tmp_path / "fp16" / "model.onnx"))


def test_prefill_len_1_has_no_separate_decode(model: object, tmp_path: Path) -> None:
    export(model, tmp_path, precision="fp16", prefill_len=1)
    assert json.loads((tmp_path / "specializations.json").read_text())["specializations"] == [
        {"name": "Prefill", "symbols": {"batch_size": "1", "ctx_len": "24", "seq_len": "1"}}
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "int8"}, "precision 'int8' has no Cloud AI 100 compiler flag"),
        ({"precision": "fp16", "prune_ffn": 0.25}, "a pruned model"),
        (
            {"passes": "strip-export-noise,patch-attention,lower-fp16,kv-cache{ctx_len=24},dce"},
            "is not the default of its",
        ),
        (
            {"precision": "fp16", "num_devices": 2, "p2p_format": "mxint8"},
            "p2p_format='mxint8' has no qaic-compile flag",
        ),
        ({"precision": "fp16", "weight_dtype": "bf16"}, "weight_dtype 'bf16' is not one of fp32, fp16"),
    ],
)
def test_requests_the_device_cannot_express_are_refused(
    model: object, tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(HandoffError, match=message):
        export(model, tmp_path, **options)
    assert not (tmp_path / "model.onnx").exists()
