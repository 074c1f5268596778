"""The schema of an artifact's manifest.json: every key, its type, and the exact set of files a format version has.

A manifest whose own checksum matches can still be edited consistently (the checksum recomputed) or written
by a buggy writer. `parse_manifest` validates it with pydantic models in strict mode (no coercion: "128" is not
an int), unknown keys refused, before anything in it is used; every failure is an `ArtifactSchemaError` naming
the field (`files.weights.safetensors.sha256`, `options.ctx_len`). File names are checked against the format's
set (`REQUIRED_FILES` plus `OPTIONAL_FILES`), so no name can point outside the artifact (`../x`, `/etc/x`).
What the schema cannot see (options that contradict the programs) `artifact` checks once the programs are read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, get_type_hints

from huggingface_hub.errors import StrictDataclassError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from transformers import MptConfig

from qeff_compiler.capture.config import validate_mpt_config
from qeff_compiler.capture.config_fields import check_config_fields
from qeff_compiler.errors import ArtifactSchemaError, InvalidArgumentError, QeffError
from qeff_compiler.options import CompileOptions

FORMAT = "qeff-compiled-model"
#: 2: the manifest carries the SHA-256 of its own canonical content (`manifest_sha256`);
#: 3: the lowered programs are stored (programs.json) and loading reads them and the saved plans, compiling nothing
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
PLAN = "partition_plan.json"
PROGRAMS = "programs.json"
#: where an artifact keeps the calibration table of a w8a8 compile or an activation-scored pruning
CALIBRATION_TABLE = "calibration.safetensors"
SPECIALIZATIONS = ("prefill", "decode")
ONNX_FILES = {"prefill": "program.onnx", "decode": "decode.onnx"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: the files every artifact of FORMAT_VERSION has, and those it may have
REQUIRED_FILES = frozenset({WEIGHTS, PLAN, PROGRAMS, *ONNX_FILES.values()})
OPTIONAL_FILES = frozenset({CALIBRATION_TABLE, *TOKENIZER_FILES})

_STRICT = ConfigDict(strict=True, extra="forbid", protected_namespaces=())


class FileRecord(BaseModel):
    model_config = _STRICT
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class TensorRecord(BaseModel):
    model_config = _STRICT
    name: str
    shape: list[int]
    dtype: str


class SpecializationRecord(BaseModel):
    model_config = _STRICT
    name: Literal["prefill", "decode"]
    onnx: str
    inputs: list[TensorRecord]
    outputs: list[TensorRecord]


class UnquantizedCopy(BaseModel):
    """The fp16 weight an input embedding tied to a quantized lm_head keeps reading."""

    model_config = _STRICT
    precision: str
    stored_as: str


class WeightRecord(BaseModel):
    model_config = _STRICT
    precision: str
    stored_as: list[str]
    unquantized_copy: UnquantizedCopy | None = None


class ModelConfigRecord(BaseModel):
    """The fields of the HF config the compiled model reads (shapes, generation's token ids); HF's other fields
    are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")
    model_type: Literal["mpt"]
    d_model: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_seq_len: int = Field(gt=0)
    eos_token_id: int | list[int] | None
    pad_token_id: int | None
    bos_token_id: int | None


def _options_model() -> type[BaseModel]:
    """CompileOptions as a strict model: every field required (the writer stores them all), no other key."""
    hints = get_type_hints(CompileOptions)
    as_json = {tuple[int, ...] | None: list[int] | None}  # JSON stores a tuple (the context buckets) as a list
    types = {name: as_json.get(hint, hint) for name, hint in hints.items()}
    fields: dict[str, Any] = {field.name: (types[field.name], ...) for field in dataclasses.fields(CompileOptions)}
    return create_model("OptionsRecord", __config__=_STRICT, **fields)


OptionsRecord = _options_model()


class Manifest(BaseModel):
    model_config = _STRICT
    format: Literal["qeff-compiled-model"]
    format_version: Literal[3]
    qeff_compiler_version: str
    created_unix: int
    source: str
    hf_config: ModelConfigRecord = Field(alias="model_config")
    options: OptionsRecord  # type: ignore[valid-type]  # a model made at import, from CompileOptions
    pipeline: str
    specializations: list[SpecializationRecord] = Field(min_length=2, max_length=2)
    weights: dict[str, WeightRecord]
    target: dict[str, Any]
    memory_plan: dict[str, Any]
    simulated_step_seconds: dict[str, float]
    tied_weights: dict[str, str]
    files: dict[str, FileRecord]
    manifest_sha256: str

    def compile_options(self) -> CompileOptions:
        return CompileOptions(**self.options.model_dump())  # type: ignore[attr-defined]

    def mpt_config(self, where: str = MANIFEST) -> MptConfig:
        """The model config, checked as a model directory's config.json is (field types, what HF implements)."""
        raw = check_config_fields(self.hf_config.model_dump(), Path(where))
        return validate_mpt_config(MptConfig.from_dict(raw))


def parse_manifest(data: Any, where: str) -> Manifest:
    """The manifest of `where` (its decoded JSON) checked against the schema, its file set and its options."""
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "missing":
            problem = "is missing"
        elif error["type"] == "extra_forbidden":
            problem = f"is not a field of format version {FORMAT_VERSION}"
        else:
            problem = f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_short(error.get('input'))}"
        more = exc.error_count() - 1
        raise ArtifactSchemaError(
            f"{where}: field {field!r} {problem}" + (f" (and {more} more problems)" if more else "")
        ) from None
    _check_files(manifest, where)
    _check_specializations(manifest, where)
    try:
        manifest.compile_options().check()
    except InvalidArgumentError as exc:
        raise ArtifactSchemaError(f"{where}: field 'options': {exc}") from None
    try:
        manifest.mpt_config(where)
    except (QeffError, TypeError, ValueError, StrictDataclassError) as exc:  # ours, and HF's checks of its fields
        raise ArtifactSchemaError(f"{where}: field 'model_config': not a valid MPT config: {exc}") from None
    return manifest


def _check_files(manifest: Manifest, where: str) -> None:
    names = set(manifest.files)
    missing = sorted(REQUIRED_FILES - names)
    if missing:
        raise ArtifactSchemaError(
            f"{where}: field 'files' lacks {missing}, which format version {FORMAT_VERSION} requires"
        )
    unknown = sorted(names - REQUIRED_FILES - OPTIONAL_FILES)
    if unknown:
        raise ArtifactSchemaError(
            f"{where}: field 'files' names {_short(unknown)}, not a file of format version {FORMAT_VERSION} "
            f"(allowed: {sorted(REQUIRED_FILES | OPTIONAL_FILES)})"
        )


def _check_specializations(manifest: Manifest, where: str) -> None:
    names = [s.name for s in manifest.specializations]
    if names != list(SPECIALIZATIONS):
        raise ArtifactSchemaError(f"{where}: field 'specializations' must be {list(SPECIALIZATIONS)}, got {names}")
    for spec in manifest.specializations:
        if spec.onnx != ONNX_FILES[spec.name]:
            raise ArtifactSchemaError(
                f"{where}: field 'specializations.{spec.name}.onnx' must be {ONNX_FILES[spec.name]!r}, "
                f"got {spec.onnx!r}"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
