"""Write a weight store to one safetensors file one tensor at a time, and say where each tensor's bytes lie.

A safetensors file is an 8-byte little-endian header length, a JSON header (name → dtype, shape, byte range in
the data section), then the raw little-endian tensor bytes. The header needs only shapes and dtypes, which the
store knows without reading data, so it is written first; then each tensor is loaded (a streaming store computes
it from the checkpoint now), written and dropped: a 7B model is written in the memory of its largest tensor.
`safetensors.torch.save_file` needs every tensor in memory at once, hence this writer.

The byte ranges let the ONNX files point their initializers into this same file, so an artifact stores each
weight once (tied weights included) instead of once per file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from qeff_compiler.errors import WeightError
from qeff_compiler.ir.weights import WeightStore, release_evaluated

_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
}
#: safetensors pads its header so the data starts 8-byte aligned
_ALIGNMENT = 8


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's raw bytes lie in the file (absolute offset from the file's start)."""

    offset: int
    length: int


@dataclass(frozen=True)
class WeightsFile:
    """A written weights file and the byte range of every weight name in it (tied aliases share a range)."""

    path: Path
    tensors: dict[str, StoredTensor]
    #: tied weight name → the name it is stored under
    aliases: dict[str, str]


def write_weights(
    store: WeightStore,
    path: Path,
    names: Iterable[str] | None = None,
    advance: Callable[[int], None] | None = None,
) -> WeightsFile:
    """Write the named weights of `store` (all by default; tied names stored once) to a safetensors file at
    `path`; `advance(bytes)` is called after each tensor is written (progress bars)."""
    if sys.byteorder != "little":
        raise WeightError("safetensors files are little-endian; writing them on a big-endian host is not supported")
    names = list(store if names is None else names)
    stored_as: dict[str, str] = {}
    for group in store.tied_groups():
        present = sorted(name for name in group if name in set(names))
        stored_as.update({alias: present[0] for alias in present[1:]})
    # sorted: the file depends on the weights alone, not on the order a source listed them in; a weight's parts
    # (`x.mxfp6`, `x.mxscale`) stay adjacent, so a streaming store computes their recipe once
    order = sorted(name for name in names if name not in stored_as)
    header: dict[str, dict] = {}
    start = 0
    for name in order:
        spec = store[name]
        if spec.dtype not in _DTYPE_NAMES:
            raise WeightError(f"weight {name!r} has dtype {spec.dtype}, which safetensors cannot store here")
        offsets = [start, start + spec.nbytes]
        header[name] = {"dtype": _DTYPE_NAMES[spec.dtype], "shape": list(spec.shape), "data_offsets": offsets}
        start += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % _ALIGNMENT)
    data_start = 8 + len(encoded)
    with path.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in order:
            tensor = store.tensor(name).contiguous()
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            if advance is not None:
                advance(tensor.nbytes)
            del tensor
    release_evaluated()
    tensors = {
        name: StoredTensor(data_start + entry["data_offsets"][0], entry["data_offsets"][1] - entry["data_offsets"][0])
        for name, entry in header.items()
    }
    tensors.update({alias: tensors[target] for alias, target in stored_as.items()})
    return WeightsFile(path, tensors, stored_as)
