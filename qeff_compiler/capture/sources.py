"""Resolve what the user passed as a model into an MPT config and a weight store.

Three sources are accepted: an HF `MptForCausalLM` object (its tensors are used in place), a local HF directory
(config.json plus safetensors, read lazily), or an `MptConfig` alone (meta weights: shapes without memory).
Checkpoint weights are checked against the shapes the config implies before any tracing happens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import MptConfig, MptForCausalLM

from qeff_compiler.capture.config import validate_mpt_config
from qeff_compiler.errors import ModelSourceError, NotAnMptModelError, WeightError
from qeff_compiler.ir.weights import SafetensorsLocation, WeightStore

ModelSource = MptForCausalLM | MptConfig | str | Path

#: every program computes in fp32 at capture; lowering passes choose other precisions later
CAPTURE_DTYPE = torch.float32

_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}
#: what a compiled artifact may store besides: quantized codes (int8, packed uint8) and their scales
QUANTIZED_SAFETENSORS_DTYPES = {**_SAFETENSORS_DTYPES, "I8": torch.int8, "U8": torch.uint8}


@dataclass(frozen=True)
class ResolvedModel:
    """A validated config, the weights to run it with, and where they came from (for messages)."""

    config: MptConfig
    weights: WeightStore
    origin: str
    #: the HF directory the model came from (its tokenizer travels into compiled artifacts), if any
    directory: Path | None = None


def resolve_model(source: object) -> ResolvedModel:
    """Dispatch on the kind of model source; anything else is a `ModelSourceError` naming its type."""
    if isinstance(source, MptForCausalLM):
        return _from_module(source)
    if isinstance(source, MptConfig):
        config = validate_mpt_config(source)
        return ResolvedModel(config, meta_weights(config), origin="config (meta weights)")
    if isinstance(source, (str, Path)):
        return _from_directory(Path(source))
    if isinstance(source, torch.nn.Module) or hasattr(source, "model_type"):
        name = getattr(getattr(source, "config", source), "model_type", type(source).__name__)
        raise NotAnMptModelError(f"expected an MptForCausalLM, got {type(source).__name__} (model_type {name!r})")
    raise ModelSourceError(
        f"expected an MptForCausalLM, a model directory or an MptConfig, got {type(source).__name__}"
    )


def build_meta_model(config: MptConfig) -> MptForCausalLM:
    """HF's module with every parameter on the meta device: the structure to trace, no memory used."""
    with torch.device("meta"):
        model = MptForCausalLM(config).to(CAPTURE_DTYPE)
    return model.eval()


def meta_weights(config: MptConfig) -> WeightStore:
    return WeightStore.from_tensors(_named_parameters(build_meta_model(config)))


def _named_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All parameters and buffers by state-dict name, tied ones listed under each name (same object)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return named


def _from_module(model: MptForCausalLM) -> ResolvedModel:
    config = validate_mpt_config(model.config)
    tensors = {
        name: tensor if tensor.dtype == CAPTURE_DTYPE else tensor.to(CAPTURE_DTYPE)
        for name, tensor in _named_parameters(model).items()
    }
    if any(t.device.type == "meta" for t in tensors.values()):
        origin = "MptForCausalLM object (meta weights)"
    else:
        origin = "MptForCausalLM object"
    return ResolvedModel(config, WeightStore.from_tensors(tensors), origin)


def _from_directory(directory: Path) -> ResolvedModel:
    if not directory.is_dir():
        raise ModelSourceError(f"model directory {str(directory)!r} does not exist or is not a directory")
    config = validate_mpt_config(_read_config(directory))
    locations = _checkpoint_locations(directory)
    return ResolvedModel(config, _bind_checkpoint(config, locations, directory), str(directory), directory)


def _read_config(directory: Path) -> MptConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise ModelSourceError(f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelSourceError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type != "mpt":
        raise NotAnMptModelError(f"{path} has model_type {model_type!r}; qeff-compiler compiles MPT models ('mpt')")
    try:
        return MptConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not a valid MPT config: {exc}") from exc


def _checkpoint_locations(directory: Path) -> dict[str, SafetensorsLocation]:
    """Every tensor of the checkpoint (single file or sharded index) with its file, shape and stored dtype."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = _shards_from_index(index)
    elif any(directory.glob("pytorch_model*.bin")):
        raise WeightError(
            f"{directory} holds only pytorch_model*.bin weights; qeff-compiler reads safetensors only, because "
            "loading pickled .bin files can execute arbitrary code (convert the checkpoint to safetensors)"
        )
    else:
        raise WeightError(f"{directory} has no model.safetensors or model.safetensors.index.json")
    locations: dict[str, SafetensorsLocation] = {}
    for path in files:
        locations.update(read_safetensors_header(path))
    return locations


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightError(f"{index} is not a valid safetensors index (needs a 'weight_map' object): {exc}") from exc
    shards = sorted({index.parent / name for name in weight_map.values()})
    missing = [str(p.name) for p in shards if not p.is_file()]
    if missing:
        raise WeightError(f"{index} lists shard files that do not exist: {missing}")
    return shards


def read_safetensors_header(
    path: Path, allowed: Mapping[str, torch.dtype] = _SAFETENSORS_DTYPES
) -> dict[str, SafetensorsLocation]:
    """Name → location of every tensor in a safetensors file; a dtype outside `allowed` is a `WeightError`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
            found = {key: (tuple(s.get_shape()), s.get_dtype()) for key, s in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise WeightError(f"cannot read safetensors file {path}: {exc}") from exc
    locations = {}
    for key, (shape, dtype_name) in found.items():
        if dtype_name not in allowed:
            raise WeightError(f"weight {key!r} in {path.name} has dtype {dtype_name}; allowed: {sorted(allowed)}")
        locations[key] = SafetensorsLocation(path, key, shape, allowed[dtype_name])
    return locations


def _bind_checkpoint(
    config: MptConfig, locations: Mapping[str, SafetensorsLocation], directory: Path
) -> WeightStore:
    """Match checkpoint tensors to the parameters the config implies: names, shapes, tied groups."""
    expected = _named_parameters(build_meta_model(config))
    groups: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    bound: dict[str, SafetensorsLocation] = {}
    for names in groups.values():
        stored = next((locations[n] for n in names if n in locations), None)
        if stored is None:
            raise WeightError(f"checkpoint in {directory} is missing weight {names[0]!r}")
        shape = tuple(expected[names[0]].shape)
        if stored.shape != shape:
            raise WeightError(
                f"weight {stored.key!r} in {stored.path.name} has shape {list(stored.shape)}, "
                f"but the config implies {list(shape)}"
            )
        bound.update({name: stored for name in names})
    unexpected = sorted(set(locations) - set(expected))
    if unexpected:
        raise WeightError(
            f"checkpoint in {directory} has weights the MPT config does not use: {unexpected[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    return WeightStore.from_safetensors(bound, CAPTURE_DTYPE)
