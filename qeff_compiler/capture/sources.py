"""Resolve what the user passed as a model into an MPT config and a weight store.

Three sources are accepted: an HF `MptForCausalLM` object (its tensors are used in place), a local HF directory
(config.json plus safetensors, read lazily), or an `MptConfig` alone (meta weights: shapes without memory). A
string names a directory, the shipped model or a preset (`presets.named_model`).
Checkpoint weights are checked against the shapes the config implies before any tracing happens.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import MptConfig, MptForCausalLM

from qeff_compiler.capture.config import validate_mpt_config
from qeff_compiler.capture.config_fields import check_config_fields
from qeff_compiler.capture.finite import check_finite
from qeff_compiler.capture.json_files import read_json_object, read_weight_map
from qeff_compiler.capture.presets import named_model
from qeff_compiler.capture.tokenizer_files import check_tokenizer_files
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


def resolve_model(source: object, *, allow_pickle: bool = False) -> ResolvedModel:
    """Dispatch on the kind of model source; anything else is a `ModelSourceError` naming its type.

    `allow_pickle` lets a directory with only `pytorch_model*.bin` weights load; unpickling can run arbitrary
    code from the file, so it is off unless the user trusts the checkpoint and asks."""
    if isinstance(source, MptForCausalLM):
        return _from_module(source)
    if isinstance(source, MptConfig):
        config = validate_mpt_config(source)
        return ResolvedModel(config, meta_weights(config), origin="config (meta weights)")
    if isinstance(source, str):  # a directory, the shipped model's name or a preset's
        named = named_model(source)
        return resolve_model(named, allow_pickle=allow_pickle)
    if isinstance(source, Path):
        return _from_directory(source, allow_pickle)
    if isinstance(source, torch.nn.Module) or hasattr(source, "model_type"):
        name = getattr(getattr(source, "config", source), "model_type", type(source).__name__)
        raise NotAnMptModelError(f"expected an MptForCausalLM, got {type(source).__name__} (model_type {name!r})")
    raise ModelSourceError(
        f"expected an MptForCausalLM, a model directory or an MptConfig, got {type(source).__name__}"
    )


def build_meta_model(config: MptConfig) -> MptForCausalLM:
    """HF's module with every parameter on the meta device: the structure to trace, no memory used."""
    with torch.device("meta"):
        # transformers declares PreTrainedModel.to as @wraps(nn.Module.to), which mypy reads as taking a model
        model = MptForCausalLM(config).to(CAPTURE_DTYPE)  # type: ignore[arg-type]
    return model.eval()


def meta_weights(config: MptConfig) -> WeightStore:
    return WeightStore.from_tensors(_named_parameters(build_meta_model(config)))


def _named_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All parameters and buffers by state-dict name, tied ones listed under each name (same object)."""
    named: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
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
    return ResolvedModel(config, WeightStore.from_tensors(tensors).checked(check_finite), origin)


def _from_directory(directory: Path, allow_pickle: bool) -> ResolvedModel:
    if not directory.is_dir():
        raise ModelSourceError(f"model directory {str(directory)!r} does not exist or is not a directory")
    config = validate_mpt_config(_read_config(directory))
    check_tokenizer_files(directory)
    if _has_safetensors(directory) or not allow_pickle:
        locations = _checkpoint_locations(directory)
        bound = _bind_checkpoint(config, {k: loc.shape for k, loc in locations.items()}, directory)
        store = WeightStore.from_safetensors({name: locations[key] for name, key in bound.items()}, CAPTURE_DTYPE)
    else:
        tensors = _pickled_tensors(directory)
        bound = _bind_checkpoint(config, {k: tuple(t.shape) for k, t in tensors.items()}, directory)
        store = WeightStore.from_tensors({name: tensors[key] for name, key in bound.items()}, CAPTURE_DTYPE)
    return ResolvedModel(config, store.checked(check_finite), str(directory), directory)


def _has_safetensors(directory: Path) -> bool:
    return (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file()


def _pickled_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of `pytorch_model.bin` or of the shards its index lists, memory-mapped (the user opted in to
    unpickling; torch's weights-only unpickler still refuses anything but tensors and plain containers)."""
    index = directory / "pytorch_model.bin.index.json"
    if index.is_file():
        files = _shards_from_index(index)
    else:
        files = sorted(directory.glob("pytorch_model*.bin"))
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as exc:  # the weights-only unpickler refused a global (code to run)
            raise WeightError(
                f"refused to load {path}: it is not a plain state dict of tensors (the weights-only unpickler "
                f"blocked it: {str(exc).splitlines()[0]})"
            ) from exc
        except (RuntimeError, OSError, EOFError, ValueError) as exc:  # torch reports bad pickles as these
            raise WeightError(f"cannot read {path}: {exc}") from exc
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise WeightError(f"{path} does not hold a state dict of tensors")
        tensors.update(state)
    return tensors


def _read_config(directory: Path) -> MptConfig:
    from huggingface_hub.errors import StrictDataclassError

    path = directory / "config.json"
    if not path.is_file():
        raise ModelSourceError(f"{directory} has no config.json: not a Hugging Face model directory")
    raw = read_json_object(path, ModelSourceError)
    model_type = raw.get("model_type")
    if model_type != "mpt":
        raise NotAnMptModelError(f"{path} has model_type {model_type!r}; qeff-compiler compiles MPT models ('mpt')")
    try:
        return MptConfig.from_dict(check_config_fields(raw, path))
    except (TypeError, ValueError, StrictDataclassError) as exc:  # HF's own checks of the generic config fields
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
            f"{directory} holds only pytorch_model*.bin weights, which are Python pickles: loading one can execute "
            "arbitrary code. Convert the checkpoint to safetensors, or, if you trust it, opt in with "
            "allow_pickle=True (CLI: --allow-pickle)"
        )
    else:
        raise WeightError(f"{directory} has no model.safetensors or model.safetensors.index.json")
    locations: dict[str, SafetensorsLocation] = {}
    for path in files:
        found = read_safetensors_header(path)
        twice = sorted(set(found) & set(locations))
        if twice:
            raise WeightError(
                f"weight {twice[0]!r} is stored twice: in {locations[twice[0]].path.name} and {path.name}"
            )
        locations.update(found)
    return locations


def _shards_from_index(index: Path) -> list[Path]:
    shards = sorted({index.parent / name for name in read_weight_map(index).values()})
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


def _bind_checkpoint(config: MptConfig, found: Mapping[str, tuple[int, ...]], directory: Path) -> dict[str, str]:
    """Match checkpoint tensors (name → shape) to the parameters the config implies: names, shapes, tied
    groups. Returns parameter name → checkpoint key (every name of a tied group maps to the one stored key)."""
    expected = _named_parameters(build_meta_model(config))
    groups: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    bound: dict[str, str] = {}
    for names in groups.values():
        key = next((n for n in names if n in found), None)
        if key is None:
            raise WeightError(f"checkpoint in {directory} is missing weight {names[0]!r}")
        shape = tuple(expected[names[0]].shape)
        if found[key] != shape:
            raise WeightError(
                f"weight {key!r} in {directory} has shape {list(found[key])}, but the config implies {list(shape)}"
            )
        bound.update(dict.fromkeys(names, key))
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise WeightError(
            f"checkpoint in {directory} has weights the MPT config does not use: {unexpected[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    return bound
