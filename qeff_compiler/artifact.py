"""The compiled-model directory: written atomically, verified by checksum and format version when loaded.

    DIR/manifest.json          format version, compiler version, model config, options, pipeline,
                               specializations with their I/O, the precision and stored tensors of every
                               weight, tied weights, SHA-256 and size of every file
    DIR/weights.safetensors    the compiled programs' weight store (tied weights stored once)
    DIR/program.onnx           prefill specialization, runnable by ONNX Runtime as it is; its initializers are
                               external data pointing into weights.safetensors (each weight stored once)
    DIR/decode.onnx            decode specialization, the same way
    DIR/tokenizer*.json        copied from the source model directory, when it has them
    DIR/calibration.safetensors the calibration table of a w8a8 compile (its recorded pipeline names it)
    DIR/partition_plan.json    the partition plan of each specialization over the target's cores and SoCs
                               (the manifest holds the target, the memory plan per SoC and the cost model's
                               step times; shard lists of a 7B model run to hundreds of KB, so they get a file)
    DIR/programs.json          both lowered programs without their weights (`ir.serialize`): graph, I/O specs,
                               properties, and the shape and dtype of every weight each reads

Loading compiles nothing: it reads the programs, binds the saved weights by name (every name, shape and dtype
must match), re-derives the graphs' shapes, and reads the saved plans (checked field by field, then validated
against the programs). `load_artifact` returns the contents; `qc.load_compiled` makes a `CompiledModel` of them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import MptConfig

from qeff_compiler._version import __version__
from qeff_compiler.atomic import atomic_directory
from qeff_compiler.backends import onnx_export
from qeff_compiler.backends.ai100.partition import PartitionPlan
from qeff_compiler.backends.ai100.simulator import SimulatedDevice
from qeff_compiler.backends.qaic.handoff import QAIC_DIRECTORY, is_handoff_file
from qeff_compiler.calibration.table import save_calibration
from qeff_compiler.capture.sources import QUANTIZED_SAFETENSORS_DTYPES, read_safetensors_header
from qeff_compiler.errors import (
    ArtifactError,
    ArtifactExistsError,
    ArtifactIntegrityError,
    ArtifactMismatchError,
    ArtifactPathError,
    ArtifactVersionError,
    InvalidArgumentError,
    PipelineError,
    VerificationError,
)
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.ir.serialize import GraphFormatError, program_from_dict, program_to_dict
from qeff_compiler.ir.validate import propagate_shapes
from qeff_compiler.ir.weights import WeightStore, should_stream
from qeff_compiler.manifest_schema import (
    CALIBRATION_TABLE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ONNX_FILES,
    PLAN,
    PROGRAMS,
    SPECIALIZATIONS,
    TOKENIZER_FILES,
    WEIGHTS,
    Manifest,
    parse_manifest,
)
from qeff_compiler.options import CompileOptions
from qeff_compiler.passes.pipeline import pipeline_text
from qeff_compiler.pipelines import compile_pipeline
from qeff_compiler.plan_schema import plans_from_json
from qeff_compiler.precision import PRECISIONS, weight_precisions
from qeff_compiler.progress import NO_PROGRESS, Progress
from qeff_compiler.weights_file import write_weights

#: a manifest larger than this is not one of ours (a 7B artifact's is a few hundred KB)
MAX_MANIFEST_BYTES = 64 << 20
#: the manifest field holding the SHA-256 of the rest of the manifest
MANIFEST_CHECKSUM = "manifest_sha256"
#: the program property each precision's lowering ensures (fp32: none of them)
_LOWERED = {"fp16": "fp16-activations", "int8": "int8-weights", "mxfp6": "mxfp6-weights", "w8a8": "w8a8"}


class SavableModel(Protocol):
    """What `save_artifact` reads of a compiled model (`CompiledModel` has it all)."""

    options: CompileOptions
    pipeline: str
    prefill: Program
    decode: Program
    origin: str
    source_directory: Path | None
    calibration_table: dict[str, torch.Tensor] | None
    simulation: SimulatedDevice

    @property
    def config(self) -> MptConfig: ...


@dataclass(frozen=True)
class ArtifactContents:
    """A verified artifact's contents, ready to run: what `qc.load_compiled` turns into a `CompiledModel`."""

    options: CompileOptions
    pipeline: str
    prefill: Program
    decode: Program
    #: the partition plan of each specialization, as saved
    plans: Mapping[str, PartitionPlan]
    directory: Path
    #: the artifact directory when it holds a tokenizer, else None
    tokenizer_directory: Path | None
    #: size and SHA-256 of every file, as verified (files read later are checked against them)
    files: Mapping[str, Mapping[str, Any]]


def save_artifact(
    model: SavableModel, path: Path, *, overwrite: bool = False, progress: Progress = NO_PROGRESS
) -> None:
    """Write the compiled model to `path`; the directory appears complete or not at all. Weights are written
    one at a time (a streamed compile computes each from the checkpoint now), and both ONNX files read them
    from weights.safetensors, so each is stored once."""
    path = Path(path)
    with atomic_directory(path, functools.partial(check_output, overwrite=overwrite)) as staging:
        with progress.stage("write weights", model.prefill.weights.nbytes()) as advance:
            weights = write_weights(model.prefill.weights, staging / WEIGHTS, advance=advance)
        tied = weights.aliases
        for name, program in (("prefill", model.prefill), ("decode", model.decode)):
            with progress.stage(f"export {ONNX_FILES[name]}", None):
                onnx_export.export_onnx(program, staging / ONNX_FILES[name], weights)
        plans = {name: plan.to_dict() for name, plan in model.simulation.plans.items()}
        (staging / PLAN).write_text(json.dumps(plans))
        programs = {
            name: _program_entry(program) for name, program in (("prefill", model.prefill), ("decode", model.decode))
        }
        (staging / PROGRAMS).write_text(json.dumps(programs))
        if model.calibration_table is not None:
            save_calibration(model.calibration_table, staging / CALIBRATION_TABLE)
        if model.source_directory is not None:
            for name in TOKENIZER_FILES:
                if (model.source_directory / name).is_file():
                    shutil.copyfile(model.source_directory / name, staging / name)
        (staging / MANIFEST).write_text(_manifest_text(_manifest(model, tied, staging, progress)))


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing `path` unless `overwrite`, and even then anything but an empty directory or a directory
    that is a compiled model: a manifest of ours and no file or folder beyond the files it lists (so `--force`
    cannot delete a directory that holds anything else, a web app's `manifest.json` included)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise ArtifactExistsError(f"output directory {path} exists; pass --force (overwrite=True) to replace it")
    foreign = _foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ArtifactExistsError(
            f"output {path} exists and is not a compiled-model directory (it holds {shown}, which no {FORMAT} "
            "manifest lists); refusing to replace it: remove it or choose another output"
        )


def _foreign_entries(path: Path) -> list[str]:
    """What in `path` is not part of a compiled model: `path` itself when it is a file or a link, else every file,
    link or empty folder below it that its manifest does not list (all of them when it has no manifest of ours)."""
    if path.is_symlink() or not path.is_dir():
        return ["a file" if not path.is_symlink() else "a symbolic link"]
    listed = _listed_files(path)
    foreign = []
    for root, folders, files in os.walk(path):
        here = Path(root).relative_to(path)
        for name in folders:
            if (Path(root) / name).is_symlink() or not any((Path(root) / name).iterdir()):
                foreign.append(f"{here / name}/")
        foreign.extend(
            str(here / name) for name in files if not _ours(here / name, listed) or (Path(root) / name).is_symlink()
        )
    return sorted(foreign)


def _ours(relative: Path, listed: set[str]) -> bool:
    """A file the manifest lists, or a file of the Cloud AI 100 hand-off folder `qaic/` (written beside it)."""
    if str(relative) in listed:
        return True
    return relative.parent == Path(QAIC_DIRECTORY) and is_handoff_file(relative.name)


def _listed_files(path: Path) -> set[str]:
    """The files a manifest of ours in `path` lists (with the manifest itself); empty when there is none."""
    manifest_file = path / MANIFEST
    try:
        if manifest_file.is_symlink() or manifest_file.stat().st_size > MAX_MANIFEST_BYTES:
            return set()
        manifest = json.loads(manifest_file.read_bytes())
    except (OSError, ValueError):
        return set()
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None
    return {MANIFEST, *files} if isinstance(files, dict) else set()


def load_artifact(path: Path, *, stream: bool | None = None) -> ArtifactContents:
    """Read and verify a compiled-model directory written by `save_artifact`; `stream` (None: by size) leaves
    the weights in the file, read as ops need them."""
    path = Path(path)
    manifest = _read_manifest(path)
    files = {name: record.model_dump() for name, record in manifest.files.items()}
    for name, expected in files.items():  # sizes first: cheap, and they catch truncation
        _verify_size(path / name, expected)
    for name, expected in files.items():
        _verify_checksum(path / name, expected)
    config = manifest.mpt_config()
    options = manifest.compile_options()
    weights = _load_weights(path / WEIGHTS, manifest.tied_weights, stream, path / MANIFEST)
    stored = _read_json(path / PROGRAMS)
    programs = {name: _load_program(stored, name, weights, config, path) for name in SPECIALIZATIONS}
    _check_consistent(manifest, options, programs, path / MANIFEST)
    plans = plans_from_json(_read_json(path / PLAN), SPECIALIZATIONS, PLAN)
    tokenizer_dir = path if (path / "tokenizer.json").is_file() else None
    return ArtifactContents(
        options, manifest.pipeline, programs["prefill"], programs["decode"], plans, path, tokenizer_dir, files
    )


# writing ---------------------------------------------------------------------------------------------------------
def _manifest(model: SavableModel, tied: dict[str, str], staging: Path, progress: Progress) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qeff_compiler_version": __version__,
        "created_unix": int(time.time()),
        "source": model.origin,
        "model_config": model.config.to_dict(),
        "options": asdict(model.options),
        "pipeline": model.pipeline,
        "specializations": [
            {"name": name, "onnx": ONNX_FILES[name], "inputs": _specs(p.inputs), "outputs": _specs(p.outputs)}
            for name, p in (("prefill", model.prefill), ("decode", model.decode))
        ],
        "weights": weight_precisions(model.prefill),
        "target": model.options.target.to_dict(),
        "memory_plan": model.simulation.memory.to_dict(),
        "simulated_step_seconds": {name: step.seconds for name, step in model.simulation.steps.items()},
        "tied_weights": tied,
        "files": _fingerprints(sorted(f for f in staging.iterdir() if f.is_file()), progress),
    }


def _manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as stored: canonical JSON (sorted keys, 2-space indent) plus the SHA-256 of that JSON without
    the checksum field, so a loader detects any change to the manifest itself."""
    return _canonical({**manifest, MANIFEST_CHECKSUM: _sha256_text(_canonical(manifest))})


def _canonical(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _program_entry(program: Program) -> dict[str, Any]:
    """The program without weight data, plus the shape and dtype of each weight it reads (checked on load)."""
    read = sorted(set(program.weight_placeholders().values()))
    weights = {
        name: {"shape": list(program.weights[name].shape), "dtype": _dtype(program.weights[name].dtype)}
        for name in read
    }
    return {**program_to_dict(program), "weights": weights}


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _specs(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "shape": list(s.shape), "dtype": _dtype(s.dtype)} for s in specs]


def _fingerprints(files: list[Path], progress: Progress) -> dict[str, dict[str, Any]]:
    with progress.stage("checksum", sum(f.stat().st_size for f in files)) as advance:
        return {f.name: _fingerprint(f, advance) for f in files}


def _fingerprint(file: Path, advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return {"sha256": digest.hexdigest(), "bytes": file.stat().st_size}


# reading ---------------------------------------------------------------------------------------------------------
def _read_manifest(path: Path) -> Manifest:
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a compiled-model directory (it does not exist or is a file)")
    file = path / MANIFEST
    if file.is_symlink():
        raise ArtifactPathError(f"{file} is a symbolic link; an artifact's files are its own")
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactIntegrityError(f"{file} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest of ours")
        text = file.read_text()
        manifest = json.loads(text)
        canonical = _canonical(manifest)
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no {MANIFEST}: not a qeff-compiler artifact") from None
    except OSError as exc:  # a directory named manifest.json, unreadable permissions
        raise ArtifactError(f"{file} cannot be read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"{file} is not valid JSON (truncated or modified?): {exc}") from exc
    except RecursionError:
        raise ArtifactIntegrityError(f"{file} nests JSON deeper than Python can read: not a manifest of ours") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactVersionError(
            f"{path} has artifact format version {version!r} (written by qeff-compiler "
            f"{manifest.get('qeff_compiler_version', '?')}); this qeff-compiler reads version {FORMAT_VERSION}: "
            "recompile"
        )
    content = {key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM}
    if text != canonical or manifest.get(MANIFEST_CHECKSUM) != _sha256_text(_canonical(content)):
        raise ArtifactIntegrityError(f"{file} does not match its own SHA-256 ({MANIFEST_CHECKSUM}): modified")
    return parse_manifest(manifest, str(file))


def _verify_size(file: Path, expected: dict[str, Any]) -> None:
    if file.is_symlink():
        raise ArtifactPathError(
            f"artifact file {file.name} in {file.parent} is a symbolic link; an artifact's files are its own"
        )
    if not file.is_file():
        raise ArtifactIntegrityError(f"artifact file {file.name} is missing from {file.parent}")
    size = file.stat().st_size
    if size != expected["bytes"]:
        raise ArtifactIntegrityError(
            f"artifact file {file.name} has {size} bytes, the manifest records {expected['bytes']} (truncated?)"
        )


def _verify_checksum(file: Path, expected: dict[str, Any]) -> None:
    if _fingerprint(file)["sha256"] != expected["sha256"]:
        raise ArtifactIntegrityError(f"artifact file {file.name} does not match its SHA-256 in the manifest (modified)")


def _load_weights(file: Path, tied: dict[str, str], stream: bool | None, where: Path) -> WeightStore:
    locations = read_safetensors_header(file, QUANTIZED_SAFETENSORS_DTYPES)
    for alias, stored in tied.items():
        if stored not in locations or alias in locations:
            raise ArtifactMismatchError(
                f"{where}: field 'tied_weights.{alias}': {stored!r} must be a weight {file.name} stores, "
                f"and {alias!r} one it does not"
            )
    locations.update({alias: locations[stored] for alias, stored in tied.items()})
    store = WeightStore.from_safetensors(locations)
    return store.streamed() if should_stream(stream, store) else store.materialized()


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"artifact file {file.name} is missing from {file.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"{file} is not valid JSON: {exc}") from exc


def _load_program(stored: Any, name: str, weights: WeightStore, config: MptConfig, path: Path) -> Program:
    """The saved `name` specialization bound to `weights`, its shapes derived again."""
    where = f"{path / PROGRAMS} ({name})"
    entry = stored.get(name) if isinstance(stored, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("weights"), dict):
        raise ArtifactIntegrityError(f"{where}: field {name!r} with its 'weights' is missing")
    try:
        program = program_from_dict(entry, weights, config)
    except GraphFormatError as exc:
        raise ArtifactIntegrityError(f"{where}: {exc}") from exc
    for weight in program.weight_placeholders().values():
        if weight not in weights:
            raise ArtifactIntegrityError(f"{path / WEIGHTS} lacks weight {weight!r} that the compiled program reads")
        expected = entry["weights"].get(weight)
        actual = {"shape": list(weights[weight].shape), "dtype": _dtype(weights[weight].dtype)}
        if actual != expected:
            raise ArtifactIntegrityError(
                f"weight {weight!r} in {path / WEIGHTS} is {actual}, the program expects {expected}"
            )
    try:
        propagate_shapes(program, after=f"loading {where}")
    except VerificationError as exc:
        raise ArtifactIntegrityError(str(exc)) from exc
    return program


def _check_consistent(manifest: Manifest, options: CompileOptions, programs: dict[str, Program], where: Path) -> None:
    """Refuse a manifest whose options, model config, I/O or weight precisions contradict the saved programs."""
    prefill, decode = programs["prefill"], programs["decode"]
    cache = next((s.shape for s in prefill.inputs if s.role == "past_key"), None)
    logits = next((s.shape for s in prefill.outputs if s.name == "logits"), None)
    ids = {name: next(s.shape for s in p.inputs if s.name == "input_ids") for name, p in programs.items()}
    config = manifest.hf_config
    expected = {
        "options.batch_size": (options.batch_size, ids["prefill"][0]),
        "options.prefill_len": (options.prefill_len, ids["prefill"][1]),
        "options.ctx_len": (options.ctx_len, cache[2] if cache else None),
        "model_config.n_layers": (config.n_layers, sum(s.role == "past_key" for s in prefill.inputs)),
        "model_config.n_heads": (config.n_heads, cache[1] if cache and not options.prune_heads else config.n_heads),
        "model_config.vocab_size": (config.vocab_size, logits[-1] if logits else None),
    }
    for field, (recorded, actual) in expected.items():
        if recorded != actual:
            raise ArtifactMismatchError(f"{where}: field {field!r} is {recorded!r}, the saved programs have {actual!r}")
    for spec, program in zip(manifest.specializations, (prefill, decode), strict=True):
        if [i.model_dump() for i in spec.inputs] != _specs(program.inputs):
            raise ArtifactMismatchError(
                f"{where}: field 'specializations.{spec.name}.inputs' differs from the program's"
            )
        if [o.model_dump() for o in spec.outputs] != _specs(program.outputs):
            raise ArtifactMismatchError(
                f"{where}: field 'specializations.{spec.name}.outputs' differs from the program's"
            )
    if {k: v.model_dump(exclude_none=True) for k, v in manifest.weights.items()} != weight_precisions(prefill):
        raise ArtifactMismatchError(
            f"{where}: field 'weights' does not match the precisions of the saved program's weights"
        )
    if manifest.target != options.target.to_dict():
        raise ArtifactMismatchError(f"{where}: field 'target' does not match the options' device, cores and SoCs")
    defaults_of = [
        p for p in PRECISIONS if _default_pipeline(dataclasses.replace(options, precision=p)) == manifest.pipeline
    ]
    if defaults_of and options.precision not in defaults_of:
        raise ArtifactMismatchError(
            f"{where}: field 'options.precision' is {options.precision!r}, the saved pipeline is the default one of "
            f"precision {defaults_of[0]!r}"
        )
    if defaults_of:  # a custom pipeline's precision is what its passes made, whatever the options say
        lowered = {precision for precision, prop in _LOWERED.items() if prop in prefill.properties}
        if not {options.precision} - {"fp32"} <= lowered or (options.precision == "fp32" and lowered):
            raise ArtifactMismatchError(
                f"{where}: field 'options.precision' is {options.precision!r}, the saved programs are lowered to "
                f"{sorted(lowered) or ['fp32']}"
            )


def _default_pipeline(options: CompileOptions) -> str | None:
    """The pipeline text a compile with `options` and no `passes` records; None for options no compile takes."""
    try:
        options.check()
        passes = compile_pipeline(options, Path(CALIBRATION_TABLE) if options.needs_calibration else None)
    except (InvalidArgumentError, PipelineError):
        return None
    return pipeline_text(passes)
