"""`export_qaic`: write the files Qualcomm's `qaic-compile` needs for a compiled model into one directory.

    DIR/model.onnx            the hand-off graph (`graph`): prefill and decode in one file, symbolic shapes
    DIR/model.onnx.data       its weights (fp32 by default, or fp16), raw external data
    DIR/specializations.json  the prefill and decode shapes (`specializations`)
    DIR/custom_io.yaml        the KV cache's device precision (`custom_io`)
    DIR/mdp_ts_<N>.json       with num_devices = N > 1: the tensor-sliced partition over the SoCs
    DIR/compile.sh            the qaic-compile command (`command`)

Precision is the device compiler's job, by flags: fp16 and fp32 compile with `-convert-to-fp16` (the device has no
fp32 path), mxfp6 adds `-mxfp6-matmul`, an mxint8 KV cache is custom_io.yaml entries. The graph is therefore built
from full-precision weights: the source the model was compiled from (a streamed checkpoint stays streamed), or,
for a loaded artifact, its own weights when they are fp32 or fp16. Requests the flags cannot express are refused:
int8 and w8a8 (no such device flag), pruning and hand-written pipelines (the graph is the full model's), and
MXINT8 inter-SoC traffic (no flag for it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qeff_compiler.atomic import atomic_directory
from qeff_compiler.backends.qaic.command import CompileFlags, compile_script
from qeff_compiler.backends.qaic.custom_io import custom_io, custom_io_yaml
from qeff_compiler.backends.qaic.graph import HandoffModel, LayerAttention, emit_handoff
from qeff_compiler.backends.qaic.specializations import mdp_partition, specializations
from qeff_compiler.errors import ArtifactExistsError, HandoffError
from qeff_compiler.ir.layers import LAYER
from qeff_compiler.ir.ops import ATTENTION_KV
from qeff_compiler.ir.weights import WeightStore

if TYPE_CHECKING:
    from qeff_compiler.compiler import CompiledModel

#: the hand-off's subdirectory of a compile output (`qeffc compile --qaic`, the facade's compile)
QAIC_DIRECTORY = "qaic"
ONNX = "model.onnx"
SPECIALIZATIONS = "specializations.json"
CUSTOM_IO = "custom_io.yaml"
SCRIPT = "compile.sh"
#: precision → does the compile command add -mxfp6-matmul
_MXFP6_MATMUL = {"fp32": False, "fp16": False, "mxfp6": True}
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class QaicOptions:
    """Choices of the hand-off files that the compiled model does not fix."""

    #: specializations.json in the named format (current SDKs) or the legacy list (older SDKs)
    named_specializations: bool = True
    #: dtype of the ONNX initializers: "fp32" (as QEfficient) or "fp16" (half the file; the device converts anyway)
    weight_dtype: str = "fp32"


def export_qaic(model: CompiledModel, directory: str | Path, options: QaicOptions = QaicOptions()) -> list[Path]:
    """Write the hand-off files of `model` into `directory`, atomically: it appears complete or not at all, and an
    existing one is replaced only when it holds nothing but hand-off files. Returns the files written."""
    check_handoff(model)
    if options.weight_dtype not in WEIGHT_DTYPES:
        raise HandoffError(f"weight_dtype {options.weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    directory = Path(directory)
    with atomic_directory(directory, _replaceable_handoff) as staging:
        names = [path.name for path in _write_handoff(model, staging, options)]
    return [directory / name for name in names]


def is_handoff_file(name: str) -> bool:
    """Whether `name` is one of the files a hand-off directory holds (an artifact's `qaic/` folder is ours)."""
    fixed = (ONNX, f"{ONNX}.data", SPECIALIZATIONS, CUSTOM_IO, SCRIPT)
    return name in fixed or re.fullmatch(r"mdp_ts_\d+\.json", name) is not None


def _replaceable_handoff(directory: Path) -> None:
    if directory.is_symlink() or not directory.is_dir():
        raise ArtifactExistsError(f"hand-off output {directory} exists and is not a directory; refusing to replace it")
    foreign = sorted(p.name for p in directory.iterdir() if not (p.is_file() and is_handoff_file(p.name)))
    if foreign:
        raise ArtifactExistsError(
            f"hand-off output {directory} holds {', '.join(foreign[:3])}, which is not a hand-off file; refusing to "
            "replace it: remove it or choose another directory"
        )


def _write_handoff(model: CompiledModel, directory: Path, options: QaicOptions) -> list[Path]:
    compiled = model.options
    emit_handoff(handoff_model(model, WEIGHT_DTYPES[options.weight_dtype]), directory / ONNX)
    written = [directory / ONNX, directory / f"{ONNX}.data"]
    shapes = specializations(
        compiled.batch_size,
        compiled.prefill_len,
        compiled.ctx_len,
        named=options.named_specializations,
        full_batch_size=compiled.full_batch_size,
        prefill_buckets=compiled.comp_ctx_lengths_prefill,
        decode_buckets=compiled.comp_ctx_lengths_decode,
        num_speculative_tokens=compiled.num_speculative_tokens,
    )
    written.append(_write_json(directory / SPECIALIZATIONS, shapes))
    kv_precision = "mxint8" if compiled.kv_cache_dtype == "mxint8" else "float16"
    (directory / CUSTOM_IO).write_text(custom_io_yaml(custom_io(model.config.n_layers, kv_precision)))
    written.append(directory / CUSTOM_IO)
    mdp = None
    cores = compiled.target.cores()
    if compiled.num_devices > 1:
        mdp = f"mdp_ts_{compiled.num_devices}.json"
        written.append(_write_json(directory / mdp, mdp_partition(compiled.num_devices, cores)))
    flags = CompileFlags(ONNX, cores, _MXFP6_MATMUL[compiled.precision], SPECIALIZATIONS, CUSTOM_IO, mdp)
    script = directory / SCRIPT
    script.write_text(compile_script(flags))
    script.chmod(0o755)
    return [*written, script]


def check_handoff(model: CompiledModel) -> None:
    """Refuse a compiled model whose hand-off the device's compiler flags cannot express."""
    options = model.options
    if options.precision not in _MXFP6_MATMUL:
        raise HandoffError(
            f"precision {options.precision!r} has no Cloud AI 100 compiler flag, so it cannot be handed off; "
            "compile with precision fp16 or mxfp6 (weights MXFP6 on the device), or keep the simulated artifact"
        )
    if options.prune_ffn or options.prune_heads:
        raise HandoffError(
            f"a pruned model (prune_ffn={options.prune_ffn}, prune_heads={options.prune_heads}) cannot be handed "
            "off: the hand-off graph is the full model; compile without pruning to hand off"
        )
    if not model.has_default_pipeline:
        raise HandoffError(
            f"pipeline {model.pipeline!r} is not the default of its options, and the device compiler only "
            "expresses those (precision and KV-cache flags); compile without passes= to hand off"
        )
    if options.p2p_format != "fp16":
        raise HandoffError(
            f"p2p_format={options.p2p_format!r} has no qaic-compile flag; hand off with p2p_format='fp16'"
        )


def handoff_model(model: CompiledModel, weight_dtype: torch.dtype = torch.float32) -> HandoffModel:
    """What the hand-off graph of `model` is built from."""
    weights, embedding, lm_head = handoff_weights(model)
    options = model.options
    return HandoffModel(
        model.config,
        weights,
        layer_attention(model),
        embedding,
        lm_head,
        weight_dtype,
        continuous_batching=options.full_batch_size is not None,
        context_buckets=options.comp_ctx_lengths_decode is not None,
        speculative=options.num_speculative_tokens is not None,
    )


def layer_attention(model: CompiledModel) -> list[LayerAttention]:
    """Every layer's attention settings, from the compiled program's fused cached-attention ops."""
    nodes = sorted(model.prefill.graph.find_nodes(op="call_function", target=ATTENTION_KV), key=lambda n: n.meta[LAYER])
    if [n.meta[LAYER] for n in nodes] != list(range(model.config.n_layers)):
        raise HandoffError(f"the compiled program has cached attention for layers {[n.meta[LAYER] for n in nodes]}")
    return [LayerAttention(n.kwargs["n_heads"], n.kwargs["softmax_scale"], n.kwargs["clip_qkv"]) for n in nodes]


def handoff_weights(model: CompiledModel) -> tuple[WeightStore, str, str]:
    """The full-precision weights (the compile's source, else the program's own) and the names of the embedding
    and the lm_head (one name when tied: a program keeps a tied pair under the lm_head's name only)."""
    store = model.source_weights if model.source_weights is not None else model.prefill.weights
    embedding = "transformer.wte.weight" if "transformer.wte.weight" in store else "lm_head.weight"
    tied = any({embedding, "lm_head.weight"} <= set(group) for group in store.tied_groups())
    lm_head = "lm_head.weight" if "lm_head.weight" in store and not tied else embedding
    for name in (embedding, lm_head, "transformer.norm_f.weight", "transformer.blocks.0.attn.Wqkv.weight"):
        if name not in store or not store[name].dtype.is_floating_point:
            found = store[name].dtype if name in store else "nothing"
            raise HandoffError(
                f"the hand-off needs full-precision weights; this model holds {found} for {name!r} "
                f"(a loaded {model.options.precision} artifact): compile from the model source to hand off"
            )
    return store, embedding, lm_head


def _write_json(path: Path, content: object) -> Path:
    """JSON as QEfficient writes it (sorted keys, indent 4)."""
    path.write_text(json.dumps(content, indent=4, separators=(",", ":"), sort_keys=True))
    return path
