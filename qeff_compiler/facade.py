"""`QEFFAutoModelForCausalLM`: QEfficient's high-level API over this compiler and its simulated AI 100.

A notebook written for QEfficient's MPT example runs with one import changed:

    from qeff_compiler import QEFFAutoModelForCausalLM as AutoModelForCausalLM
    qeff_model = AutoModelForCausalLM.from_pretrained(model_dir)
    qeff_model.export()                                         # hand-off ONNX of the default fp16 compile
    qpc_path = qeff_model.compile(prefill_seq_len=32, ctx_len=128, num_cores=14, mxfp6_matmul=True)
    exec_info = qeff_model.generate(tokenizer, prompts=["My name is"])
    print(exec_info)                                            # TTFT, decode / total tok/s, E2E time

Signatures follow QEfficient's `QEFFAutoModelForCausalLM` (`from_pretrained(path, continuous_batching=False,
qaic_config=None, ...)`, `export(export_dir=None)`, `compile(onnx_path=None, compile_dir=None, *,
prefill_seq_len=32, ctx_len=128, batch_size=1, full_batch_size=None, num_devices=1, num_cores, mxfp6_matmul=False,
mxint8_kv_cache=False, num_speculative_tokens=None, ..., **compiler_options) -> Path`, `generate(tokenizer,
prompts, device_id=None, runtime_ai100=True, generation_len=None, write_io=False)`), and `generate` returns a
`CloudAI100ExecInfo` with QEfficient's fields (`batch_size`, `generated_texts`, `generated_ids`, `perf_metrics`:
prefill_time, decode_perf, total_perf, total_time). Every QEfficient argument is accepted at its default value;
one that would change the result here is refused or, when the result stays right but not everything asked for
happens, accepted with a warning (the tables below). Where this deviates:

- every figure is *simulated* (the cost model of `backends.ai100`; nothing runs on a card) and says so when printed;
- `compile` writes this compiler's artifact directory (manifest, ONNX, weights) and returns its path; its `qaic/`
  holds the hand-off files (`backends.qaic`), and where the Cloud AI 100 SDK is installed `compile.sh` builds the
  QPC into `qaic/qpc/` (else only the simulated device runs the model, and a warning says so). Without
  `compile_dir` it writes under the cache directory `$QEFFC_HOME` (default `$XDG_CACHE_HOME/qeffc`, else
  `~/.cache/qeffc`), as QEfficient writes under `$QEFF_HOME`;
- QEfficient's fp16 compile maps to precision "fp16", `mxfp6_matmul` to "mxfp6", `mxint8_kv_cache` to the MXINT8
  cache. The target is `qc.compile`'s default device, ai100-standard (14 cores); `num_cores` defaults to all the
  device's cores (QEfficient's 16 are an ai100-pro's: pass `device="ai100-pro"`). `compiler_options` takes this
  compiler's options (`device`, `precision`, `p2p_format`, `prune_*`, `verify`) and QEfficient's `qaic-compile`
  flags (`QAIC_COMPILER_FLAGS`), which tune the device binary: the simulated figures do not model them;
- `generate` runs the numerics on `engine` ("onnxruntime" by default, the fast one; "host": the reference
  executor) with `threads` CPU threads (default: from the machine's load); `write_io=True` writes no I/O files here;
- continuous batching is QEfficient's: `from_pretrained(..., continuous_batching=True)`, `compile(full_batch_size=F,
  comp_ctx_lengths_prefill=[...], comp_ctx_lengths_decode=[...])`, and `generate` runs every prompt through the F
  slots;
- speculative decoding as QEfficient spells it: `from_pretrained(..., qaic_config={"speculative_model_type":
  "target"})` then `compile(..., num_speculative_tokens=K)` compiles a target whose decode specialization verifies
  K+1 positions (`qc.compile(..., num_speculative_tokens=K)`); `self.compiled.generate(ids, draft=...)` runs it
  with a draft model or "prompt-lookup", and this `generate` decodes one token per verify call;
- `from_pretrained` takes a local MPT directory or an `MptForCausalLM` (no hub downloads, no HF kwargs);
- `device_id`, `runtime_ai100` and `compile`'s `device_group` are accepted and ignored: the simulated device is
  the compiled target; the older `compile(mxfp6=True)` of QEfficient's MPT notebook means `mxfp6_matmul=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, MptForCausalLM, PreTrainedTokenizerBase

from qeff_compiler.backends.qaic.command import run_compile, sdk_compiler
from qeff_compiler.backends.qaic.handoff import ONNX, QAIC_DIRECTORY, check_handoff
from qeff_compiler.compiler import CompiledModel, compile as compile_model
from qeff_compiler.errors import HandoffError, InvalidArgumentError
from qeff_compiler.options import DEFAULTS

logger = logging.getLogger(__name__)
#: `compile(**compiler_options)` keys that are this compiler's own options
COMPILER_OPTIONS = ("device", "precision", "p2p_format", "prune_ffn", "prune_heads", "prune_score", "verify")
#: QEfficient's `qaic-compile` flags (`compiler_options` it turns into `-flag`s) and their defaults: accepted; a
#: value other than the default is named in a warning, since it tunes the binary in ways the simulator does not model
QAIC_COMPILER_FLAGS: dict[str, object] = {
    "aic_enable_depth_first": False,
    "mos": -1,
    "mdts_mos": None,
    "allow_mxint8_mdp_io": False,
    "convert_to_fp16": True,
    "aic_perf_metrics": False,
    "stats_level": None,
}
#: QEfficient `compile` arguments accepted only at these (its default) values: each changes what is compiled in a
#: way this compiler does not do (yet), so another value is refused by name
QEFF_COMPILE_DEFAULTS: dict[str, object] = {
    "kv_cache_batch_size": None,
    "prefill_only": None,
    "enable_chunking": False,
    "retain_full_kv": None,
    "layerwise": False,
    "kv_cache_prefix": None,
}
#: QEfficient `compile` arguments that only change how it builds its files, never the model: accepted, no effect
QEFF_COMPILE_NO_EFFECT = (
    "use_onnx_subfunctions",
    "offload_pt_weights",
    "moe_prefill_packed_chunk_size",
    "layerwise_window_size",
    "device_group",
)
#: QEfficient `from_pretrained` arguments accepted only at these (its default) values
QEFF_LOAD_DEFAULTS: dict[str, object] = {
    "max_seq_len_cached": None,
    "layerwise": False,
}
#: environment variable naming the directory `compile` writes to when given no compile_dir (QEfficient: QEFF_HOME)
CACHE_VARIABLE = "QEFFC_HOME"


def cache_directory() -> Path:
    """Where `compile` writes without a compile_dir: `$QEFFC_HOME`, else `$XDG_CACHE_HOME/qeffc`, else
    `~/.cache/qeffc` (never the working directory)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qeffc"


@dataclass(frozen=True)
class PerfMetrics:
    """QEfficient's performance figures, from the simulated device: seconds and tokens/s per sequence."""

    #: mean simulated time to first token over the batches
    prefill_time: float
    #: simulated decode tokens/s per sequence
    decode_perf: float
    #: generated tokens per sequence / simulated E2E time
    total_perf: float
    #: simulated E2E time of every batch: prefill and decode
    total_time: float


@dataclass(frozen=True)
class CloudAI100ExecInfo:
    """The texts and ids `generate` produced and its simulated latency report (QEfficient's shape)."""

    batch_size: int
    generated_texts: list[str]
    generated_ids: list[np.ndarray]
    perf_metrics: PerfMetrics
    #: the simulated device the figures are for
    device: str = ""
    #: per figure ("decode", "prefill"): calibrated, validated or assumed, and why (`SimulatedDevice.provenance`)
    provenance: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        m, b = self.perf_metrics, self.batch_size
        return (
            f"Simulated on {self.device} (cost model, not hardware)\n"
            f"Average Prefill time a.k.a TTFT is= {m.prefill_time:.6f} sec\n"
            f"Decode is= {m.decode_perf * b:.2f} tokens/sec\n"
            f"Total is= {m.total_perf * b:.2f} tokens/sec\n"
            f"Total (E2E) inference time is= {m.total_time:.6f} sec"
        ) + "".join(f"\nsimulated {figure}: {text}" for figure, text in self.provenance.items())


class QEFFAutoModelForCausalLM:
    """An MPT to compile for the simulated AI 100 and generate text with, the way QEfficient users do."""

    def __init__(
        self, model: MptForCausalLM | Path, name: str, continuous_batching: bool = False, is_tlm: bool = False
    ) -> None:
        self.model = model
        #: a speculative-decoding target (QEfficient's name): compile needs num_speculative_tokens
        self.is_tlm = is_tlm
        self.model_name = name
        #: QEfficient's from_pretrained(continuous_batching=True): compile then needs full_batch_size
        self.continuous_batching = continuous_batching
        self.compiled: CompiledModel | None = None
        self.qpc_path: Path | None = None
        self.onnx_path: Path | None = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path | MptForCausalLM,
        continuous_batching: bool = False,
        **kwargs: object,
    ) -> QEFFAutoModelForCausalLM:
        """Wrap a local MPT directory or an `MptForCausalLM` object (no hub: give a directory).
        `continuous_batching=True` (QEfficient's argument) makes `compile` take `full_batch_size`; `qaic_config=
        {"speculative_model_type": "target"}` makes it a speculative-decoding target, as in QEfficient. QEfficient's
        other arguments (`QEFF_LOAD_DEFAULTS`) are accepted at their defaults; Hugging Face options are refused."""
        is_tlm = _speculative_target(kwargs.pop("qaic_config", None))
        qeff_arguments = {k: kwargs.pop(k) for k in QEFF_LOAD_DEFAULTS if k in kwargs}
        check_defaults("from_pretrained", qeff_arguments, QEFF_LOAD_DEFAULTS)
        if kwargs:
            raise InvalidArgumentError(f"from_pretrained takes no Hugging Face options here, got {sorted(kwargs)}")
        if not isinstance(continuous_batching, bool):
            raise InvalidArgumentError(f"continuous_batching must be True or False, got {continuous_batching!r}")
        source = pretrained_model_name_or_path
        if isinstance(source, MptForCausalLM):
            return cls(source, type(source).__name__, continuous_batching, is_tlm)
        if not isinstance(source, str | Path) or not Path(source).is_dir():
            raise InvalidArgumentError(
                f"from_pretrained needs a local MPT directory or an MptForCausalLM, got {source!r} (no hub downloads)"
            )
        return cls(Path(source), Path(source).name, continuous_batching, is_tlm)

    def __repr__(self) -> str:
        state = f"compiled to {self.qpc_path}" if self.qpc_path else "not compiled"
        return f"QEFFAutoModelForCausalLM({self.model_name}, {state})"

    def export(self, export_dir: str | Path | None = None, **kwargs: object) -> Path:
        """Compile at the defaults (fp16, prefill 32, ctx 128) and return the path of the hand-off ONNX (one graph
        for prefill and decode, QEfficient's I/O), which `qaic-compile` takes. QEfficient's export options
        (`prefill_seq_len`, `num_cores`, ...) are `compile`'s."""
        path = self.compile(compile_dir=export_dir, **kwargs)  # type: ignore[arg-type]
        self.onnx_path = path / QAIC_DIRECTORY / ONNX
        return self.onnx_path

    def compile(
        self,
        onnx_path: str | None = None,
        compile_dir: str | Path | None = None,
        *,
        prefill_seq_len: int = 32,
        ctx_len: int = 128,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        comp_ctx_lengths_prefill: Sequence[int] | None = None,
        comp_ctx_lengths_decode: Sequence[int] | None = None,
        num_devices: int = 1,
        num_cores: int | None = None,
        mxfp6_matmul: bool = False,
        mxint8_kv_cache: bool = False,
        mxfp6: bool = False,
        num_speculative_tokens: int | None = None,
        **compiler_options: object,
    ) -> Path:
        """Compile for the simulated device and write the artifact; returns its directory (QEfficient: the QPC).
        `mxfp6` is the older QEfficient spelling its MPT notebook uses for `mxfp6_matmul`. `full_batch_size`
        (continuous batching: from_pretrained(..., continuous_batching=True)) and the compute-context-length buckets
        `comp_ctx_lengths_prefill` / `comp_ctx_lengths_decode` are QEfficient's."""
        if self.is_tlm != (num_speculative_tokens is not None):
            raise InvalidArgumentError(
                f"num_speculative_tokens={num_speculative_tokens!r}: a speculative-decoding target needs it, and "
                "only a target takes it: from_pretrained(..., qaic_config={'speculative_model_type': 'target'}) "
                "then compile(..., num_speculative_tokens=K)"
            )
        check_continuous_batching(self.continuous_batching, full_batch_size)
        options = compile_options(
            onnx_path,
            prefill_seq_len=prefill_seq_len,
            ctx_len=ctx_len,
            batch_size=batch_size,
            full_batch_size=full_batch_size,
            comp_ctx_lengths_prefill=comp_ctx_lengths_prefill,
            comp_ctx_lengths_decode=comp_ctx_lengths_decode,
            num_devices=num_devices,
            num_cores=num_cores,
            mxfp6_matmul=mxfp6_matmul or mxfp6,
            mxint8_kv_cache=mxint8_kv_cache,
            **compiler_options,
        )
        if num_speculative_tokens is not None:
            options["num_speculative_tokens"] = num_speculative_tokens
        self.compiled = compile_model(self.model, **options)
        directory = Path(compile_dir) if compile_dir is not None else cache_directory() / self.model_name
        path = directory / f"qpc-{_options_hash(options)}"
        self.compiled.save(path, overwrite=True)
        hand_off(self.compiled, path / QAIC_DIRECTORY)
        self.qpc_path = path
        return path

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompts: Sequence[str] = (),
        device_id: Sequence[int] | None = None,
        runtime_ai100: bool = True,
        generation_len: int | None = None,
        *,
        write_io: bool = False,
        engine: str = "onnxruntime",
        threads: int | None = None,
    ) -> CloudAI100ExecInfo:
        """Greedy generation for `prompts`, `batch_size` at a time (compiled with `full_batch_size`: all of them
        through its slots, continuous batching); `generation_len` new tokens per prompt at most (default: up to the
        context length). `tokenizer` None uses the model directory's. `engine` and `threads` choose what runs the
        numerics on this CPU (`CompiledModel.generate`); the simulated figures do not depend on them."""
        del device_id, runtime_ai100  # the simulated device is the compiled target
        if self.compiled is None:
            raise InvalidArgumentError("generate needs a compiled model: call compile() first")
        if isinstance(prompts, str) or not prompts:
            raise InvalidArgumentError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        if write_io:
            logger.warning("write_io=True: the simulated runtime writes no per-step input/output files")
        tokenizer = tokenizer if tokenizer is not None else self._tokenizer()
        shapes = self.compiled.shapes
        ids = [tokenizer.encode(prompt) for prompt in prompts]
        if generation_len is None:
            generation_len = shapes.ctx_len - max(len(i) for i in ids)
        if self.compiled.options.full_batch_size is not None:
            return self._generate_in_slots(tokenizer, ids, generation_len, engine, threads)
        texts, generated, ttfts, steps, tokens, decode_s, total_s = [], [], [], 0, 0, 0.0, 0.0
        for start in range(0, len(ids), shapes.batch_size):
            batch = ids[start : start + shapes.batch_size]
            output = self.compiled.generate(batch, max_new_tokens=generation_len, engine=engine, threads=threads)
            stats = output.stats
            ttfts.append(stats.ttft_s)
            steps += len(stats.token_latencies_s)
            tokens += max(len(row) for row in output.new_tokens)  # per sequence: the rows decode in lockstep
            decode_s += stats.decode_s
            total_s += stats.ttft_s + stats.decode_s
            generated += [np.asarray(row, dtype=np.int64) for row in output.new_tokens]
            texts += [str(tokenizer.decode(list(row), skip_special_tokens=True)) for row in output.new_tokens]
        metrics = PerfMetrics(
            prefill_time=sum(ttfts) / len(ttfts),
            decode_perf=steps / decode_s if decode_s > 0 else float("nan"),
            total_perf=tokens / total_s,
            total_time=total_s,
        )
        simulation = self.compiled.simulation
        return CloudAI100ExecInfo(
            shapes.batch_size, texts, generated, metrics, simulation.device, simulation.provenance
        )

    def _generate_in_slots(
        self,
        tokenizer: PreTrainedTokenizerBase,
        ids: list[list[int]],
        generation_len: int,
        engine: str,
        threads: int | None,
    ) -> CloudAI100ExecInfo:
        """Every prompt through the continuous batch at once; figures per sequence as QEfficient reports them
        (its repr multiplies by the slots): tokens decoded per slot-second, mean prefill per prompt."""
        compiled = self.compiled
        if compiled is None or compiled.options.full_batch_size is None:
            raise InvalidArgumentError("continuous-batching generation needs a model compiled with full_batch_size")
        slots = compiled.options.full_batch_size
        output = compiled.generate(ids, max_new_tokens=generation_len, engine=engine, threads=threads)
        stats = output.stats
        generated = sum(len(row) for row in output.new_tokens)
        total_s = stats.prefill_s + stats.decode_s
        metrics = PerfMetrics(
            prefill_time=stats.prefill_s / len(ids),
            decode_perf=(generated - len(ids)) / stats.decode_s / slots if stats.decode_s > 0 else float("nan"),
            total_perf=generated / total_s / slots,
            total_time=total_s,
        )
        texts = [str(tokenizer.decode(list(row), skip_special_tokens=True)) for row in output.new_tokens]
        generated_ids = [np.asarray(row, dtype=np.int64) for row in output.new_tokens]
        simulation = compiled.simulation
        return CloudAI100ExecInfo(slots, texts, generated_ids, metrics, simulation.device, simulation.provenance)

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        if not isinstance(self.model, Path):
            raise InvalidArgumentError("pass a tokenizer: the model was given as an object, without a directory")
        return AutoTokenizer.from_pretrained(self.model)


def compile_options(
    onnx_path: str | None,
    *,
    prefill_seq_len: int,
    ctx_len: int,
    batch_size: int,
    full_batch_size: int | None = None,
    num_devices: int,
    num_cores: int | None,
    mxfp6_matmul: bool,
    mxint8_kv_cache: bool,
    comp_ctx_lengths_prefill: Sequence[int] | None = None,
    comp_ctx_lengths_decode: Sequence[int] | None = None,
    **compiler_options: object,
) -> dict[str, Any]:
    """QEfficient's compile arguments as `qc.compile` keyword arguments. QEfficient's other arguments are sorted
    out here, each by its table: accepted at their default (`QEFF_COMPILE_DEFAULTS`), without effect
    (`QEFF_COMPILE_NO_EFFECT`), or as device-compiler flags (`QAIC_COMPILER_FLAGS`); anything else is refused."""
    if onnx_path is not None:
        raise InvalidArgumentError(f"onnx_path={onnx_path!r}: this compiler compiles from the model, not from ONNX")
    given = dict(compiler_options)
    check_defaults("compile", {k: given.pop(k) for k in QEFF_COMPILE_DEFAULTS if k in given}, QEFF_COMPILE_DEFAULTS)
    for name in QEFF_COMPILE_NO_EFFECT:
        given.pop(name, None)
    flags = {k: given.pop(k) for k in QAIC_COMPILER_FLAGS if k in given}
    changed = sorted(k for k, value in flags.items() if value != QAIC_COMPILER_FLAGS[k])
    if changed:
        logger.warning("qaic-compile flags %s tune the device binary; the simulated figures do not model them", changed)
    unknown = sorted(set(given) - set(COMPILER_OPTIONS))
    if unknown:
        raise InvalidArgumentError(
            f"unsupported compiler options {unknown}; supported: {', '.join(COMPILER_OPTIONS)} and the qaic-compile "
            f"flags {', '.join(QAIC_COMPILER_FLAGS)}"
        )
    return {
        "precision": "mxfp6" if mxfp6_matmul else "fp16",
        "kv_cache_dtype": "mxint8" if mxint8_kv_cache else None,
        "device": DEFAULTS.device,
        "prefill_len": prefill_seq_len,
        "ctx_len": ctx_len,
        "batch_size": batch_size,
        "full_batch_size": full_batch_size,
        "comp_ctx_lengths_prefill": comp_ctx_lengths_prefill,
        "comp_ctx_lengths_decode": comp_ctx_lengths_decode,
        "num_cores": num_cores,
        "num_devices": num_devices,
        **given,
    }


def _speculative_target(qaic_config: object) -> bool:
    """QEfficient's `qaic_config` of from_pretrained: only {"speculative_model_type": "target"} has a meaning here."""
    if qaic_config is None:
        return False
    if qaic_config != {"speculative_model_type": "target"}:
        raise InvalidArgumentError(
            f"qaic_config={qaic_config!r}: only {{'speculative_model_type': 'target'}} (a speculative-decoding "
            "target) is supported"
        )
    return True
def check_continuous_batching(continuous_batching: bool, full_batch_size: int | None) -> None:
    """QEfficient's rule: full_batch_size goes with from_pretrained(continuous_batching=True), and back."""
    if continuous_batching and full_batch_size is None:
        raise InvalidArgumentError(
            "full_batch_size is required when continuous_batching=True: pass compile(full_batch_size=N)"
        )
    if full_batch_size is not None and not continuous_batching:
        raise InvalidArgumentError(
            f"full_batch_size={full_batch_size!r} needs from_pretrained(..., continuous_batching=True)"
        )


def check_defaults(method: str, given: dict[str, object], defaults: dict[str, object]) -> None:
    """Refuse, by name, a QEfficient argument given at another value than the default this facade supports."""
    for name, value in given.items():
        if value != defaults[name]:
            raise InvalidArgumentError(
                f"{method}({name}={value!r}) is not supported here; only its default {defaults[name]!r} is"
            )


def hand_off(compiled: CompiledModel, directory: Path) -> None:
    """Write the qaic hand-off files and build the device binary with them when the SDK is installed; otherwise
    (or for a precision the device has no flag for) say that only the simulated device runs the model."""
    try:
        check_handoff(compiled)
    except HandoffError as error:
        logger.warning("no qaic hand-off written: %s", error)
        return
    compiled.export_qaic(directory)
    if sdk_compiler() is None:
        logger.warning(
            "qaic-compile not found: wrote the hand-off to %s; figures come from the simulated device", directory
        )
    else:
        logger.info("built the Cloud AI 100 binary %s", run_compile(directory))


def _options_hash(options: dict[str, object]) -> str:
    """A short stable name for a compile's options (QEfficient suffixes its QPC directories the same way)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]
