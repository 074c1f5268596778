"""Refactors keep numerics to the bit: for each precision, the saved artifact's weights and its ONNX files' outputs on
ONNX Runtime (one thread, fixed inputs) hash to the values pinned in tests/data/output_pins.json, which were
recorded before the issue-15 restructuring. Regenerate only for an intended numerical change:
`python tests/test_output_pins.py` rewrites the pins (and say why in the commit)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT

PINS = Path(__file__).parent / "data" / "output_pins.json"
#: (precision, kv_cache_dtype) pairs whose artifacts are pinned
CASES = [("fp32", None), ("fp16", None), ("int8", None), ("mxfp6", None), ("w8a8", None), ("fp16", "mxint8")]


def _case_name(precision: str, kv_cache_dtype: str | None) -> str:
    return precision if kv_cache_dtype is None else f"{precision}+kv-{kv_cache_dtype}"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _fixed_inputs(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Deterministic inputs for every graph input: a prompt that starts at position 0 with one padded row end, and
    a seeded random cache (the same for every precision)."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in session.get_inputs():
        shape = spec.shape
        if spec.name == "input_ids":
            feed[spec.name] = rng.integers(0, 2048, size=shape, dtype=np.int64)
        elif spec.name == "position_ids":
            positions = np.tile(np.arange(shape[1], dtype=np.int64) + (0 if shape[1] > 1 else 20), (shape[0], 1))
            positions[-1, -1] = -1  # a padding position: must not be written to the cache
            feed[spec.name] = positions
        else:
            dtype = np.float16 if "float16" in spec.type else np.float32
            feed[spec.name] = rng.standard_normal(size=shape).astype(dtype)
    return feed


def artifact_digests(artifact: Path) -> dict[str, str]:
    """SHA-256 of every stored weight tensor and of every output of both ONNX files on the fixed inputs."""
    digests = {f"weight:{name}": _digest(value) for name, value in sorted(load_file(artifact / "weights.safetensors").items())}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for onnx_file in ("program.onnx", "decode.onnx"):
        session = ort.InferenceSession(str(artifact / onnx_file), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, _fixed_inputs(session))
        for spec, value in zip(session.get_outputs(), outputs, strict=True):
            digests[f"{onnx_file}:{spec.name}"] = _digest(value)
    return digests


def compile_case(precision: str, kv_cache_dtype: str | None, directory: Path) -> Path:
    compiled = qc.compile(
        TINY_MPT, precision=precision, kv_cache_dtype=kv_cache_dtype, ctx_len=32, prefill_len=8, batch_size=2, verify=False
    )
    compiled.save(directory)
    return directory


@pytest.mark.parametrize(("precision", "kv_cache_dtype"), CASES, ids=[_case_name(*case) for case in CASES])
def test_artifact_weights_and_onnx_outputs_are_pinned(precision: str, kv_cache_dtype: str | None, tmp_path: Path) -> None:
    pins = json.loads(PINS.read_text())[_case_name(precision, kv_cache_dtype)]
    actual = artifact_digests(compile_case(precision, kv_cache_dtype, tmp_path / "artifact"))

    assert actual.keys() == pins.keys()
    changed = sorted(name for name in pins if actual[name] != pins[name])
    assert not changed, f"changed against the pinned outputs: {changed}"


if __name__ == "__main__":  # regenerate the pins
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        pins = {
            _case_name(*case): artifact_digests(compile_case(*case, Path(scratch) / _case_name(*case))) for case in CASES
        }
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
