"""Saving and loading compiled models: round trip, ONNX Runtime on the saved files, refusal of damaged artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import qeff_compiler as qc
from qeff_compiler import artifact
from qeff_compiler.backends.ai100 import simulator
from qeff_compiler.errors import ArtifactError, ArtifactExistsError, ArtifactIntegrityError, ArtifactVersionError
from qeff_compiler.ir.samples import sample_inputs
from tests.conftest import random_model, tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[qc.CompiledModel, Path]:
    compiled = qc.compile(random_model(tiny_config(n_heads=2)), precision="fp32", ctx_len=24, prefill_len=6, batch_size=2)
    path = tmp_path_factory.mktemp("artifacts") / "tiny"
    compiled.save(path)
    return compiled, path


def test_round_trip_generates_identical_tokens(saved) -> None:
    compiled, path = saved
    loaded = qc.load_compiled(path)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9]]
    assert loaded.generate(prompts, 8).new_tokens == compiled.generate(prompts, 8).new_tokens
    assert loaded.pipeline == compiled.pipeline and loaded.options == compiled.options


def test_saved_onnx_runs_in_onnx_runtime_like_the_host(saved) -> None:
    compiled, path = saved
    for name, program in (("program.onnx", compiled.prefill), ("decode.onnx", compiled.decode)):
        inputs = sample_inputs(program, seed=3)
        inputs = {k: v if not k.startswith("past") else torch.randn_like(v) for k, v in inputs.items()}
        expected = compiled.host_executors()[0 if name == "program.onnx" else 1](inputs)
        session = ort.InferenceSession(str(path / name), providers=["CPUExecutionProvider"])
        results = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        output_names = [o.name for o in session.get_outputs()]
        assert output_names == [s.name for s in program.outputs]
        for output, value in zip(output_names, results, strict=True):
            np.testing.assert_allclose(value, expected[output].numpy(), rtol=0, atol=1e-4, err_msg=f"{name}:{output}")


def test_manifest_records_files_pipeline_and_specializations(saved) -> None:
    compiled, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "weights.safetensors", "program.onnx", "decode.onnx", "partition_plan.json", "programs.json"
    }
    assert [s["name"] for s in manifest["specializations"]] == ["prefill", "decode"]
    assert manifest["pipeline"].startswith("strip-export-noise,patch-attention,kv-cache{ctx_len=24}")
    # dce dropped the tied input embedding's own name: the embedding is stored once, as lm_head.weight
    from safetensors import safe_open

    with safe_open(str(path / "weights.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    assert stored == set(compiled.prefill.weight_placeholders().values())
    assert "transformer.wte.weight" not in stored and manifest["tied_weights"] == {}
    assert not list(path.parent.glob(".tiny.*")), "no staging directory is left behind"


def test_onnx_initializers_point_into_the_one_weights_file(saved) -> None:
    """Weights are stored once: both ONNX files read their initializers from weights.safetensors, at the byte
    ranges its own header gives them (so ONNX Runtime, tested above, and safetensors read the same bytes)."""
    import onnx

    compiled, path = saved
    header_size = int.from_bytes((path / "weights.safetensors").read_bytes()[:8], "little")
    header = json.loads((path / "weights.safetensors").read_bytes()[8 : 8 + header_size])
    for name in ("program.onnx", "decode.onnx"):
        initializers = onnx.load(str(path / name), load_external_data=False).graph.initializer
        assert initializers
        for initializer in initializers:
            external = {e.key: e.value for e in initializer.external_data}
            begin, end = header[initializer.name]["data_offsets"]
            assert external["location"] == "weights.safetensors", initializer.name
            assert (int(external["offset"]), int(external["length"])) == (8 + header_size + begin, end - begin)
            assert initializer.data_location == onnx.TensorProto.EXTERNAL and not initializer.raw_data


def _copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_modified_file_is_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[1], tmp_path)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"weights.safetensors does not match its SHA-256 .*modified"):
        qc.load_compiled(copy)


def test_truncated_file_is_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[1], tmp_path)
    data = (copy / "weights.safetensors").read_bytes()
    (copy / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactIntegrityError, match=r"weights.safetensors has \d+ bytes.*truncated"):
        qc.load_compiled(copy)


def test_missing_file_and_broken_manifest_are_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[1], tmp_path)
    (copy / "decode.onnx").unlink()
    with pytest.raises(ArtifactIntegrityError, match="decode.onnx is missing"):
        qc.load_compiled(copy)
    (copy / "manifest.json").write_text('{"format": "qeff-compiled-model", "format_ver')
    with pytest.raises(ArtifactIntegrityError, match="not valid JSON"):
        qc.load_compiled(copy)


def test_other_format_version_is_refused(saved, tmp_path: Path) -> None:
    copy = _copy(saved[1], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactVersionError, match="format version 99"):
        qc.load_compiled(copy)


def test_version_2_artifact_is_refused_with_a_recompile_hint(saved, tmp_path: Path) -> None:
    copy = _copy(saved[1], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 2  # written before programs.json existed: loading recompiled it
    _write_manifest(copy, manifest)
    with pytest.raises(ArtifactVersionError, match=r"format version 2 .*reads version 3: recompile"):
        qc.load_compiled(copy)


def test_loading_reads_the_saved_programs_and_plans_without_tracing(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, path = saved

    def no_trace(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading an artifact must not trace or partition")

    monkeypatch.setattr(torch.export, "export", no_trace)
    monkeypatch.setattr(simulator, "partition_program", no_trace)
    loaded = qc.load_compiled(path)
    assert loaded.simulation.plans == compiled.simulation.plans
    assert loaded.simulation.steps == compiled.simulation.steps
    for mine, theirs in ((loaded.prefill, compiled.prefill), (loaded.decode, compiled.decode)):
        assert mine.graph_module.code == theirs.graph_module.code
        assert (mine.inputs, mine.outputs, mine.properties) == (theirs.inputs, theirs.outputs, theirs.properties)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda plans: plans["decode"].pop("ops"), r"partition_plan.json: decode: field 'ops' is missing"),
        (lambda plans: plans["prefill"]["shards"][0].__setitem__(1, "soc0"), r"prefill.shards\[0\]\[1\] must be a non"),
        (lambda plans: plans["decode"].__setitem__("num_cores", 3), r"partition_plan.json does not fit .*num_cores"),
        (lambda plans: plans.pop("prefill"), r"field 'prefill' is missing"),
    ],
    ids=["missing-field", "wrong-type", "wrong-target", "missing-specialization"],
)
def test_garbage_partition_plan_is_refused_naming_the_field(saved, tmp_path: Path, edit, field: str) -> None:
    copy = _copy(saved[1], tmp_path)
    plans = json.loads((copy / "partition_plan.json").read_text())
    edit(plans)
    (copy / "partition_plan.json").write_text(json.dumps(plans))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["partition_plan.json"] = artifact._fingerprint(copy / "partition_plan.json")  # re-checksummed
    _write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match=field):
        qc.load_compiled(copy)


def _write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {k: v for k, v in manifest.items() if k != artifact.MANIFEST_CHECKSUM}
    (directory / "manifest.json").write_text(artifact._manifest_text(manifest))


def test_existing_output_needs_overwrite(saved) -> None:
    compiled, path = saved
    with pytest.raises(ArtifactExistsError, match="exists"):
        compiled.save(path)
    compiled.save(path, overwrite=True)
    qc.load_compiled(path)
