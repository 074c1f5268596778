"""The ONNX Runtime engine's inputs read once and checked against the artifact's manifest: what is verified is
what runs.

`load_compiled` verifies every file's size and SHA-256, but the onnxruntime engine opens the ONNX files only at
the first `generate`; a file changed (or an artifact recompiled into the same directory) in between would run
unchecked, or fail inside ONNX Runtime. So the engine reads each ONNX file and the weights file into memory,
checks those bytes against the fingerprints `load_compiled` verified, and builds its sessions from them: the
graph from the bytes, every external initializer as an array over the weights' bytes (ONNX Runtime then opens no
file itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qeff_compiler.errors import ArtifactIntegrityError

#: an ONNX graph's bytes and its external initializers (name → array over the verified weights)
SessionSource = tuple[bytes, dict[str, np.ndarray]]


def verified_sources(
    directory: Path, fingerprints: Mapping[str, Mapping[str, Any]], onnx_files: Mapping[str, str], weights_file: str
) -> dict[str, SessionSource]:
    """Per specialization (`onnx_files`: name → file), the ONNX bytes and initializers read from `directory`, each
    file matching its manifest fingerprint (`{"bytes", "sha256"}`); any difference is an `ArtifactIntegrityError`."""
    weights = read_verified(directory / weights_file, fingerprints)
    sources = {}
    for name, file in onnx_files.items():
        model = read_verified(directory / file, fingerprints)
        sources[name] = (model, _initializers(model, weights, file, weights_file))
    return sources


def read_verified(path: Path, fingerprints: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The bytes of `path`, which must match the fingerprint recorded for its name."""
    expected = fingerprints.get(path.name)
    if expected is None:
        raise ArtifactIntegrityError(f"{path.name} is not among the files the artifact's manifest records")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{path} is missing: the artifact is incomplete") from None
    except OSError as exc:
        raise ArtifactIntegrityError(f"cannot read artifact file {path}: {exc.strerror or exc}") from exc
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ArtifactIntegrityError(
            f"artifact file {path.name} in {path.parent} changed after load_compiled verified it (its size or "
            "SHA-256 no longer matches the manifest; recompiled or modified): load the artifact again"
        )
    return data


def _initializers(model_bytes: bytes, weights: bytes, onnx_file: str, weights_file: str) -> dict[str, np.ndarray]:
    """Arrays over `weights` for every initializer the graph stores as external data in the weights file."""
    graph = onnx.load_model_from_string(model_bytes).graph
    arrays = {}
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims, dtype=np.int64))
        if info.get("location") != weights_file or length != count * dtype.itemsize or offset + length > len(weights):
            raise ArtifactIntegrityError(
                f"{onnx_file}: initializer {tensor.name!r} points at {info.get('location')!r} bytes "
                f"[{offset}, {offset + length}), not at its data in {weights_file}"
            )
        array = np.frombuffer(weights, dtype=dtype, count=count, offset=offset)
        arrays[tensor.name] = array.reshape(tuple(tensor.dims))
    return arrays
