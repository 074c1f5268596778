"""The onnxruntime engine runs the same compiled program as the reference host executor: same greedy tokens on the
shipped model, logits equal up to float rounding, the artifact's own files when loaded from one, and a clear error
for an unknown engine."""

from __future__ import annotations

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import ArtifactIntegrityError, InvalidArgumentError


@pytest.fixture(scope="module")
def compiled() -> qc.CompiledModel:
    return qc.compile(TINY_MPT, precision="int8", ctx_len=64, prefill_len=16, batch_size=2, verify=False)


def test_onnxruntime_engine_generates_the_host_tokens(compiled: qc.CompiledModel) -> None:
    prompts = [[5, 9, 100, 7, 31, 2, 8, 64, 12, 99, 3, 17, 40, 41, 42, 43, 44, 45, 46], [200, 13, 7]]  # two chunks
    host = compiled.generate(prompts, max_new_tokens=12, eos_token_id=[])
    ort = compiled.generate(prompts, max_new_tokens=12, eos_token_id=[], engine="onnxruntime")

    assert torch.equal(ort.sequences, host.sequences)
    assert ort.stats.token_latencies_s == host.stats.token_latencies_s  # simulated figures do not depend on it
    assert len(ort.stats.host_token_latencies_s) == 11


def test_onnxruntime_engine_matches_host_logits(compiled: qc.CompiledModel) -> None:
    (host_prefill, host_decode), (ort_prefill, ort_decode) = compiled.executors("host"), compiled.executors("onnxruntime")
    generator = torch.Generator().manual_seed(0)
    for host, ort, program in ((host_prefill, ort_prefill, compiled.prefill), (host_decode, ort_decode, compiled.decode)):
        inputs = {}
        for spec in program.inputs:
            if spec.role == "input_ids":
                inputs[spec.name] = torch.randint(0, compiled.config.vocab_size, spec.shape, generator=generator)
            elif spec.role == "position_ids":
                inputs[spec.name] = torch.arange(spec.shape[1]).repeat(spec.shape[0], 1) + 20
            else:
                inputs[spec.name] = torch.randn(spec.shape, generator=generator).to(spec.dtype)
        expected, actual = host(inputs), ort(inputs)
        assert expected.keys() == actual.keys()
        for name in expected:
            # int8 activations are fp16: another summation order flips fp16 roundings by one unit (2^-11 relative),
            # and the flips propagate; the outputs stay within 2^-8 of each tensor's range
            error = (actual[name].float() - expected[name].float()).abs().max().item()
            assert error <= 2**-8 * expected[name].float().abs().max().item(), (name, error)


def test_loaded_artifact_runs_its_own_onnx_files(compiled: qc.CompiledModel, tmp_path) -> None:
    compiled.save(tmp_path / "artifact")
    loaded = qc.load_compiled(tmp_path / "artifact")
    (tmp_path / "artifact" / "decode.onnx").rename(tmp_path / "decode.onnx.moved")

    with pytest.raises(ArtifactIntegrityError, match="decode.onnx is missing"):  # its files, not a re-export
        loaded.executors("onnxruntime")


def test_unknown_engine_is_refused(compiled: qc.CompiledModel) -> None:
    with pytest.raises(InvalidArgumentError, match="'cuda'.*host, onnxruntime"):
        compiled.generate([[1, 2]], max_new_tokens=2, engine="cuda")
