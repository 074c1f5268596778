"""Every row of docs/errors.md's catalogue is triggered here, and the table cannot drift from the code.

The catalogue (docs/errors.md, "Catalogue") lists each user error with an id, its exception class, the `qeffc` exit
code and an example message. For every row, `TRIGGERS[id]` provokes the error on a tiny model and the test checks
the class, the exit code, that the message names the offending value, and that the message is the documented one
(`…` in the table stands for any text; temporary paths are written as /tmp/x). Rows reached through `qeffc` also run
in-process through `run(argv)` and must print exactly one line on stderr.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MptConfig
from typer._click import exceptions as click_errors

import qeff_compiler as qc
from qeff_compiler import QEFFAutoModelForCausalLM, artifact, errors
from qeff_compiler.backends.ai100.devices import MAX_DEVICES
from qeff_compiler.calibration import calibrate, save_calibration
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.cli import main as cli
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import QeffError
from qeff_compiler.passes import PassManager
from qeff_compiler.passes.base import Pass
from qeff_compiler.runtime.proposers import PromptLookup
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from qeff_compiler.runtime.slot_proposers import StatelessSlots
from qeff_compiler.runtime.workload import PoissonWorkload, load_workload
from tests.conftest import TinyArtifact, random_model, tiny_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
#: temporary paths in messages are shown as this in the table
TMP = "/tmp/x"
#: classes in errors.py that no user input reaches (internal consistency checks); documented as such
NOT_USER_TRIGGERABLE = {
    "QeffError": "the root: never raised itself",
    "CaptureError": "torch.export met an input kind HF's MPT never produces",
    "PartitionError": "the partitioner met an op the compiler's own passes never emit",
}


@dataclass(frozen=True)
class Row:
    id: str
    condition: str
    cls: str
    exit_code: int
    message: str


def catalogue() -> list[Row]:
    """The rows of the catalogue table in docs/errors.md."""
    section = DOCS.read_text().split("\n## Catalogue\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        ident, condition, cls, code, message = cells
        rows.append(Row(ident.strip("`"), condition, cls.strip("`"), int(code), message.strip("`")))
    return rows


ROWS = catalogue()


# shared state: one tiny model directory, compiled model and artifact per module --------------------------------
@dataclass
class Env:
    root: Path
    shared: TinyArtifact
    meta: qc.CompiledModel
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    @property
    def model_dir(self) -> Path:
        return self.shared.model_dir

    @property
    def compiled(self) -> qc.CompiledModel:
        return self.shared.compiled

    @property
    def artifact(self) -> Path:
        return self.shared.artifact

    def fresh(self, name: str) -> Path:
        """A new path under the root (not created)."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def model_copy(self, name: str) -> Path:
        target = self.fresh(name)
        shutil.copytree(self.model_dir, target)
        return target

    def artifact_copy(self, name: str) -> Path:
        target = self.fresh(name)
        shutil.copytree(self.artifact, target)
        return target

    def normalized(self, text: str) -> str:
        """`text` with the temporary directories written as TMP, on one line."""
        for root in (self.root, self.shared.root):
            text = text.replace(str(root), TMP)
        return " ".join(text.split())


@pytest.fixture(scope="module")
def module_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, qc.CompiledModel]:
    return tmp_path_factory.mktemp("errors"), qc.compile(tiny_config(), precision="fp32", ctx_len=24, prefill_len=8)


@pytest.fixture
def env(
    module_state: tuple[Path, qc.CompiledModel],
    tiny_artifact: TinyArtifact,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Env:
    root, meta = module_state
    return Env(root, tiny_artifact, meta, monkeypatch, capsys)


# triggers ----------------------------------------------------------------------------------------------------------
Trigger = Callable[[Env], object]
TRIGGERS: dict[str, Trigger] = {}
#: rows reached through `qeffc`: id -> argv builder (the trigger runs it through the typer app)
CLI_ROWS: dict[str, Callable[[Env], list[str]]] = {}


def trigger(ident: str) -> Callable[[Trigger], Trigger]:
    def register(function: Trigger) -> Trigger:
        TRIGGERS[ident] = function
        return function

    return register


def cli_row(ident: str, argv: Callable[[Env], list[str]]) -> None:
    CLI_ROWS[ident] = argv
    TRIGGERS[ident] = lambda env: cli.app(args=argv(env), prog_name="qeffc", standalone_mode=False)


def rewritten(directory: Path, name: str, text: str) -> Path:
    """`directory` with its file `name` replaced by `text`."""
    (directory / name).write_text(text)
    return directory


def without(directory: Path, name: str) -> Path:
    """`directory` with its file `name` deleted."""
    (directory / name).unlink()
    return directory


def config_row(ident: str, **overrides: object) -> None:
    TRIGGERS[ident] = lambda env: qc.capture(tiny_config(**overrides))


def compile_row(ident: str, **options: object) -> None:
    TRIGGERS[ident] = lambda env: qc.compile(tiny_config(), **{"precision": "fp32", "ctx_len": 24, "prefill_len": 8, **options})


def pipeline_row(ident: str, pipeline: str) -> None:
    TRIGGERS[ident] = lambda env: PassManager(pipeline)


def generate_row(ident: str, *args: object, **kwargs: object) -> None:
    TRIGGERS[ident] = lambda env: env.compiled.generate(*args, **kwargs)


# model sources
@trigger("model-type")
def _(env: Env) -> object:
    return qc.compile(42)


@trigger("not-mpt-object")
def _(env: Env) -> object:
    return qc.capture(torch.nn.Linear(2, 2))


@trigger("model-directory-missing")
def _(env: Env) -> object:
    return qc.capture(env.root / "no-such-model")


@trigger("config-json-missing")
def _(env: Env) -> object:
    directory = env.fresh("no-config")
    directory.mkdir()
    return qc.capture(directory)


TRIGGERS["config-json-invalid"] = lambda env: qc.capture(rewritten(env.model_copy("bad-config"), "config.json", '{"model_type": "mpt", '))
TRIGGERS["not-mpt-directory"] = lambda env: qc.capture(rewritten(env.model_copy("llama"), "config.json", '{"model_type": "llama"}'))


@trigger("unknown-preset")
def _(env: Env) -> object:
    return preset_config("mpt-1t")


config_row("config-prefix-lm", attn_config={"prefix_lm": True})
config_row("config-qk-ln", attn_config={"qk_ln": True})
config_row("config-flash-sequence-id", attn_config={"attn_uses_sequence_id": True})
config_row("config-attn-impl", attn_config={"attn_impl": "xformers"})
config_row("config-attn-type", attn_config={"attn_type": "multiquery_attention"})
config_row("config-alibi-off", attn_config={"alibi": False})
config_row("config-no-bias", no_bias=False)
config_row("config-expansion-ratio", expansion_ratio=2)
config_row("config-norm-type", norm_type="rmsnorm")
config_row("config-size", n_layers=0)
config_row("config-heads", d_model=30)


# weights
def _tensors(env: Env) -> dict[str, torch.Tensor]:
    return load_file(str(env.model_dir / "model.safetensors"))


def _with_tensors(env: Env, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    directory = env.model_copy(name)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


TRIGGERS["weights-missing"] = lambda env: qc.capture(without(env.model_copy("no-weights"), "model.safetensors"))


@trigger("weights-pickle-only")
def _(env: Env) -> object:
    directory = env.model_copy("pickle-only")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    return qc.capture(directory)


@trigger("weight-missing-key")
def _(env: Env) -> object:
    tensors = _tensors(env)
    del tensors["transformer.blocks.1.ffn.up_proj.weight"]
    return qc.capture(_with_tensors(env, "missing-key", tensors))


@trigger("weight-unexpected-key")
def _(env: Env) -> object:
    return qc.capture(_with_tensors(env, "extra-key", {**_tensors(env), "transformer.blocks.9.extra": torch.zeros(2)}))


@trigger("weight-shape")
def _(env: Env) -> object:
    tensors = _tensors(env)
    tensors["transformer.blocks.0.attn.Wqkv.weight"] = torch.zeros(96, 16)
    return qc.capture(_with_tensors(env, "bad-shape", tensors))


@trigger("weight-dtype")
def _(env: Env) -> object:
    tensors = _tensors(env)
    tensors["transformer.norm_f.weight"] = tensors["transformer.norm_f.weight"].to(torch.int32)
    return qc.capture(_with_tensors(env, "bad-dtype", tensors))


@trigger("safetensors-corrupt-header")
def _(env: Env) -> object:
    directory = env.model_copy("corrupt-header")
    data = bytearray((directory / "model.safetensors").read_bytes())
    data[8:20] = b"not json at!"
    (directory / "model.safetensors").write_bytes(bytes(data))
    return qc.capture(directory)


@trigger("safetensors-truncated")
def _(env: Env) -> object:
    directory = env.model_copy("truncated-weights")
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    return qc.capture(directory)


@trigger("sharded-index-invalid")
def _(env: Env) -> object:
    directory = env.model_copy("bad-index")
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    return qc.capture(directory)


@trigger("shard-missing")
def _(env: Env) -> object:
    directory = env.model_copy("missing-shard")
    (directory / "model.safetensors").unlink()
    index = {"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return qc.capture(directory)


# pipelines
pipeline_row("pipeline-syntax", "patch-attention,kv-cache{ctx_len=16")
pipeline_row("pipeline-trailing-comma", "patch-attention,")
pipeline_row("pipeline-nested-brace", "dce{a={b}}")
pipeline_row("pass-unknown", "patch-attention,lower-fp8")
pipeline_row("pass-option-unknown", "kv-cache{context=16}")
pipeline_row("pass-option-type", "kv-cache{ctx_len=sixteen}")
pipeline_row("pass-option-repeated", "kv-cache{ctx_len=16 ctx_len=32}")
pipeline_row("pass-option-value", "kv-cache{ctx_len=16,dtype=int4}")
pipeline_row("pass-option-range", "lower-fp16,lower-w8a8{alpha=1.5}")


@trigger("pass-order")
def _(env: Env) -> object:
    return PassManager("kv-cache{ctx_len=16},patch-attention").run(qc.capture(tiny_config()))


@trigger("pass-repeated")
def _(env: Env) -> object:
    return PassManager("patch-attention,lower-fp16,lower-fp16").run(qc.capture(tiny_config()))


@trigger("print-ir-after-unknown")
def _(env: Env) -> object:
    return PassManager("patch-attention", print_ir_after={"kv-cache"})


@trigger("pipeline-not-stateful")
def _(env: Env) -> object:
    return qc.compile(tiny_config(), precision="fp32", ctx_len=24, prefill_len=8, passes="strip-export-noise,patch-attention")


class _ScaleLmHead(Pass):
    """A deliberately wrong pass: changes the lm_head weights by 1% (the numeric check must catch it)."""

    name = "test-errors-scale-lm-head"
    summary = "a broken pass for tests"

    def transform(self, program: qc.Program) -> qc.Program:
        weight = program.weights.tensor("lm_head.weight")
        return program.evolve(weights=program.weights.with_tensors({"lm_head.weight": weight * 1.01}))


@trigger("pass-numerics")
def _(env: Env) -> object:
    return PassManager([_ScaleLmHead()]).run(qc.capture(random_model(tiny_config())))


# compile options
compile_row("precision-unknown", precision="fp8")
compile_row("kv-cache-dtype-unknown", kv_cache_dtype="int4")
compile_row("ctx-len-not-positive", ctx_len=0)
compile_row("ctx-len-too-long", ctx_len=64)
compile_row("prefill-len-too-long", ctx_len=64, prefill_len=48)
compile_row("ctx-len-below-prefill", ctx_len=8, prefill_len=16)
compile_row("batch-size-not-positive", batch_size=0)
compile_row("batch-size-too-large", batch_size=10**9)
compile_row("device-unknown", device="ai100-max")
compile_row("num-cores-range", num_cores=15)
compile_row("num-devices-range", num_devices=MAX_DEVICES + 1)
compile_row("p2p-format-unknown", num_devices=2, p2p_format="bf16")
compile_row("w8a8-without-calibration", precision="w8a8")
compile_row("calibration-missing", precision="w8a8", calibration="/tmp/x/no-such-table.safetensors")


@trigger("calibration-foreign-file")
def _(env: Env) -> object:
    return qc.compile(tiny_config(), ctx_len=24, prefill_len=8, precision="w8a8", calibration=env.model_dir / "model.safetensors")


@trigger("model-does-not-fit")
def _(env: Env) -> object:
    # passes the estimate from parameter counts (the lm_head fits) but not the plan (with the untied embedding)
    huge = MptConfig(d_model=4096, n_heads=32, n_layers=1, vocab_size=1_500_000, max_seq_len=64, tie_word_embeddings=False)
    return qc.compile(huge, precision="fp16", ctx_len=16, prefill_len=8)


@trigger("model-does-not-fit-early")
def _(env: Env) -> object:
    return qc.compile(preset_config("mpt-30b"), precision="mxfp6", ctx_len=24, prefill_len=8)


@trigger("threads-invalid")
def _(env: Env) -> object:
    return env.compiled.generate([[1, 2]], 2, threads=0)


@trigger("facade-qefficient-argument")
def _(env: Env) -> object:
    return qc.QEFFAutoModelForCausalLM.from_pretrained(env.model_dir).compile(kv_cache_batch_size=3)


@trigger("fp16-overflow")
def _(env: Env) -> object:
    model = random_model(tiny_config())
    with torch.no_grad():
        model.transformer.blocks[1].ffn.up_proj.weight.mul_(1e5)
    return qc.compile(model, precision="fp16", ctx_len=24, prefill_len=8)


@trigger("meta-weights-run")
def _(env: Env) -> object:
    return env.meta.generate([[1, 2, 3]], 2)


# generation
generate_row("prompt-empty", [[1, 2], []], 4)
generate_row("token-out-of-vocab", [[5, 2048, 3]], 4)
generate_row("prompt-not-ids", [["def", "f"]], 4)
generate_row("input-ids-dtype", torch.ones(1, 3), 4)
generate_row("prompts-too-many", [[1], [2], [3]], 4)
generate_row("prompt-too-long", [list(range(20))], 8)
generate_row("max-new-tokens", [[1, 2]], 0)
generate_row("sampling-temperature", [[1, 2]], 4, do_sample=True, temperature=0.0)
generate_row("sampling-top-p", [[1, 2]], 4, do_sample=True, top_p=1.5)
generate_row("sampling-options-without-sampling", [[1, 2]], 4, top_k=5)
generate_row("unknown-engine", [[1, 2]], 4, engine="cuda")
generate_row("unknown-trace-detail", [[1, 2]], 2, trace="unused.json", trace_detail="ops")


@trigger("estimate-too-long")
def _(env: Env) -> object:
    return env.compiled.estimate(prompt_len=20, generation_len=10)


@trigger("estimate-other-batch")
def _(env: Env) -> object:
    return env.compiled.estimate(prompt_len=8, generation_len=8, batch_size=4)


@trigger("program-inputs")
def _(env: Env) -> object:
    return env.compiled.host_executors()[1]({"input_ids": torch.zeros(2, 1, dtype=torch.int64)})


@trigger("calibration-text-unreadable")
def _(env: Env) -> object:
    return calibrate(TINY_MPT, env.root / "no-such-text.txt")


@trigger("calibration-text-too-short")
def _(env: Env) -> object:
    return calibrate(TINY_MPT, "def f(): pass")


@trigger("calibration-table-empty")
def _(env: Env) -> object:
    return save_calibration({}, env.fresh("empty.safetensors"))


# the qeffc command line
cli_row("cli-usage", lambda env: ["compile", "-o", str(env.fresh("out")), "--ctx-len", "many"])
cli_row("cli-prompt-and-token-ids", lambda env: ["run", str(env.artifact)])
cli_row(
    "cli-draft-and-prompt-lookup",
    lambda env: ["run", str(env.artifact), "--token-ids", "1", "--draft", str(env.artifact), "--prompt-lookup"],
)
cli_row("cli-token-ids", lambda env: ["run", str(env.artifact), "--token-ids", "1,2,x"])
cli_row("cli-no-tokenizer", lambda env: ["run", str(without(env.artifact_copy("no-tokenizer"), "tokenizer.json")), "--prompt", "def f("])
cli_row("cli-serve-no-tokenizer", lambda env: ["serve", str(without(env.artifact_copy("no-tokenizer-serve"), "tokenizer.json"))])
cli_row("cli-serve-port-taken", lambda env: ["serve", str(env.artifact), "--port", str(_listening_port())])
cli_row("cli-serve-max-queue", lambda env: ["serve", str(env.artifact), "--max-queue", "0"])
cli_row("cli-serve-drain-timeout", lambda env: ["serve", str(env.artifact), "--drain-timeout", "-1"])
cli_row("cli-serve-ray-options", lambda env: ["serve", str(env.artifact), "--replicas", "2"])
cli_row("cli-serve-replicas", lambda env: ["serve", str(env.artifact), "--ray", "--replicas", "0"])


def _without_ray(env: Env) -> list[str]:
    env.monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is absent
    return ["serve", str(env.artifact), "--ray"]


cli_row("cli-serve-ray-missing", _without_ray)
_LISTENING: list[socket.socket] = []


def _listening_port() -> int:
    """A loopback port a socket of this process listens on (opened once, kept open)."""
    if not _LISTENING:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        _LISTENING.append(sock)
    return int(_LISTENING[0].getsockname()[1])


cli_row("cli-preset-needs-directory", lambda env: ["calibrate", "mpt-7b", "-o", str(env.fresh("calib.safetensors"))])
cli_row("cli-estimate-w8a8", lambda env: ["estimate", "mpt-125m", "--precision", "w8a8"])
cli_row("cli-preset-compile", lambda env: ["compile", "mpt-7b", "-o", str(env.fresh("mpt-7b"))])
cli_row("cli-estimate-ctx-len", lambda env: ["estimate", "mpt-7b", "--ctx-len", "8192"])
cli_row("output-exists", lambda env: ["compile", str(env.model_dir), "-o", str(env.artifact)])


def _not_an_artifact(env: Env) -> list[str]:
    directory = env.fresh("notes")
    directory.mkdir()
    (directory / "notes.txt").write_text("keep me")
    return ["compile", str(env.model_dir), "-o", str(directory), "--force"]


cli_row("output-not-an-artifact", _not_an_artifact)


def _a_file(env: Env) -> Path:
    """A regular file: nothing can be created below it (unlike chmod, this stops root too)."""
    (env.root / "a-file").write_text("")
    return env.root / "a-file"


cli_row("output-unwritable", lambda env: ["compile", str(env.model_dir), "-o", str(_a_file(env) / "artifact")])
cli_row("trace-unwritable", lambda env: ["run", str(env.artifact), "--token-ids", "1", "--trace", str(_a_file(env) / "t.json")])


@trigger("disk-full")
def _(env: Env) -> object:
    from qeff_compiler.backends import onnx_export

    def full_disk(program: qc.Program, path: Path, *args: object, **kwargs: object) -> None:
        path.write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves one
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    env.monkeypatch.setattr(onnx_export, "export_onnx", full_disk)
    output = env.fresh("full")
    try:
        return env.compiled.save(output)
    finally:
        assert not output.exists() and not list(env.root.glob(".full.*")), "nothing is left behind"


def _signalled_compile(env: Env, name: str, signal_exception: type[BaseException]) -> _Interrupted:
    """`qeffc compile` with `signal_exception` raised while the artifact is being written, as the signal handler
    raises it."""
    from qeff_compiler.backends import onnx_export

    def interrupt(program: qc.Program, path: Path, *args: object, **kwargs: object) -> None:
        raise signal_exception

    env.monkeypatch.setattr(sys.modules["qeff_compiler.compiler"], "compile", lambda *args, **kwargs: env.compiled)
    env.monkeypatch.setattr(onnx_export, "export_onnx", interrupt)
    output = env.fresh(name)
    env.capsys.readouterr()
    code = cli.run(["compile", str(env.model_dir), "-o", str(output)])
    err = env.capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not output.exists() and not list(env.root.glob(f".{name}.*")), "nothing is left behind"
    return _Interrupted(code, err.removeprefix("qeffc: error: "), signal_exception.__name__)


@trigger("interrupted")
def _(env: Env) -> object:
    return _signalled_compile(env, "interrupted", KeyboardInterrupt)  # as Ctrl-C


@trigger("terminated")
def _(env: Env) -> object:
    return _signalled_compile(env, "terminated", cli.Terminated)  # as SIGTERM


class _Interrupted(Exception):
    """What `qeffc` reports for a signal (KeyboardInterrupt, Terminated): its exit code and its line on stderr."""

    def __init__(self, code: int, message: str, signal_class: str) -> None:
        super().__init__(message)
        self.exit_code = code
        self.signal_class = signal_class


@trigger("output-raced")
def _(env: Env) -> object:
    import qeff_compiler.artifact as artifact_module

    output = env.fresh("raced")
    write_weights = artifact_module.write_weights

    def write_then_someone_creates_the_output(*args: object, **kwargs: object) -> object:
        written = write_weights(*args, **kwargs)
        output.mkdir()
        (output / "theirs.txt").write_text("theirs")
        return written

    env.monkeypatch.setattr(artifact_module, "write_weights", write_then_someone_creates_the_output)
    try:
        return env.compiled.save(output)
    finally:
        assert (output / "theirs.txt").read_text() == "theirs" and not list(env.root.glob(".raced.*"))


cli_row("output-name-too-long", lambda env: ["compile", str(env.model_dir), "-o", str(env.root / ("a" * 256))])


# artifacts
@trigger("artifact-missing")
def _(env: Env) -> object:
    return qc.load_compiled(env.root / "no-such-artifact")


@trigger("artifact-no-manifest")
def _(env: Env) -> object:
    directory = env.model_copy("not-an-artifact")
    return qc.load_compiled(directory)


TRIGGERS["artifact-manifest-invalid"] = lambda env: qc.load_compiled(
    rewritten(env.artifact_copy("bad-json"), "manifest.json", '{"format": "qeff-compiled-model", "format_ver')
)
TRIGGERS["artifact-not-a-manifest"] = lambda env: qc.load_compiled(
    rewritten(env.artifact_copy("other-json"), "manifest.json", '{"format": "onnx-bundle"}')
)


def _edit_manifest(env: Env, name: str, **changes: object) -> Path:
    directory = env.artifact_copy(name)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return directory


@trigger("artifact-version")
def _(env: Env) -> object:
    return qc.load_compiled(_edit_manifest(env, "old-version", format_version=1))


@trigger("artifact-manifest-modified")
def _(env: Env) -> object:
    return qc.load_compiled(_edit_manifest(env, "edited", pipeline="strip-export-noise,patch-attention,kv-cache{ctx_len=24}"))


TRIGGERS["artifact-file-missing"] = lambda env: qc.load_compiled(without(env.artifact_copy("missing-file"), "decode.onnx"))


@trigger("artifact-file-truncated")
def _(env: Env) -> object:
    directory = env.artifact_copy("truncated")
    data = (directory / "weights.safetensors").read_bytes()
    (directory / "weights.safetensors").write_bytes(data[:-10])
    return qc.load_compiled(directory)


@trigger("artifact-file-modified")
def _(env: Env) -> object:
    directory = env.artifact_copy("modified")
    data = bytearray((directory / "program.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (directory / "program.onnx").write_bytes(bytes(data))
    return qc.load_compiled(directory)


# issue 23: wrong JSON types, absurd sizes, non-finite numbers, sampling and text arguments, files read late
def _config_copy(env: Env, name: str, **fields: object) -> Path:
    """A copy of the tiny model directory whose config.json has `fields` set."""
    directory = env.model_copy(name)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **fields}))
    return directory


def _sharded_copy(env: Env, name: str) -> tuple[Path, dict[str, str]]:
    """A copy of the tiny model directory with its weights in two shards, and its weight map."""
    directory = env.model_copy(name)
    tensors = _tensors(env)
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard), metadata={"format": "pt"})
    return directory, {k: shard for shard, keys in shards.items() for k in keys}


def _index_row(ident: str, name: str, edit: Callable[[dict[str, str]], None]) -> None:
    def provoke_index(env: Env) -> object:
        directory, weight_map = _sharded_copy(env, name)
        edit(weight_map)
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return qc.capture(directory)

    TRIGGERS[ident] = provoke_index


TRIGGERS["config-field-type"] = lambda env: qc.capture(_config_copy(env, "typed", expansion_ratio=4.0))
TRIGGERS["config-torch-dtype"] = lambda env: qc.capture(_config_copy(env, "dtype", dtype="float77"))


@trigger("config-json-not-utf8")
def _(env: Env) -> object:
    directory = env.model_copy("not-utf8")
    (directory / "config.json").write_bytes(b'{"model_type": "mpt", "x": "\xff"}')
    return qc.capture(directory)


config_row("config-size-bound", n_layers=10**9)
config_row("config-parameters-bound", d_model=2**16, n_heads=64, n_layers=64)
TRIGGERS["capture-batch-bound"] = lambda env: qc.capture(tiny_config(), batch_size=10**12, seq_len=8)
config_row("config-epsilon", layer_norm_epsilon=float("nan"))
config_row("config-dropout", resid_pdrop=2.0)
config_row("config-attention-scale", attn_config={"softmax_scale": float("inf")})
TRIGGERS["tokenizer-invalid"] = lambda env: qc.capture(
    rewritten(env.model_copy("bad-tokenizer"), "tokenizer.json", '{"added_tokens": [], "model": {"type": "Nonsense"}}')
)
TRIGGERS["tokenizer-added-tokens"] = lambda env: qc.capture(
    rewritten(env.model_copy("no-added-tokens"), "tokenizer.json", '{"version": "1.0", "model": {"type": "BPE"}}')
)


class _Evil:
    """Unpickling this would run code (here: create a file)."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("/tmp/qeff-test-errors-pwned"),))


@trigger("weights-pickle-blocked")
def _(env: Env) -> object:
    directory = env.model_copy("evil-pickle")
    (directory / "model.safetensors").unlink()
    torch.save({"x": _Evil()}, directory / "pytorch_model.bin")
    return qc.compile(directory, precision="fp32", ctx_len=24, prefill_len=8, allow_pickle=True)


@trigger("weight-non-finite")
def _(env: Env) -> object:
    tensors = _tensors(env)
    tensors["transformer.blocks.1.ffn.down_proj.weight"][3, 5] = float("nan")
    return qc.compile(_with_tensors(env, "nan-weight", tensors), precision="fp32", ctx_len=24, prefill_len=8)


_index_row("sharded-index-entry", "index-entry", lambda weight_map: weight_map.update({"lm_head.weight": 3}))
_index_row("sharded-index-path", "index-path", lambda weight_map: weight_map.update({"lm_head.weight": "../outside.safetensors"}))


@trigger("shard-duplicate-weight")
def _(env: Env) -> object:
    directory, weight_map = _sharded_copy(env, "duplicate-weight")
    name = "transformer.wte.weight"
    other = next(s for s in sorted(set(weight_map.values())) if s != weight_map[name])
    save_file({**load_file(str(directory / other)), name: _tensors(env)[name]}, str(directory / other))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return qc.capture(directory)


@trigger("fp16-overflow-nan")
def _(env: Env) -> object:
    program = qc.capture(random_model(tiny_config()), seq_len=8)
    poisoned = program.weights.tensor("transformer.blocks.0.ffn.up_proj.weight").clone()
    poisoned[0, 0] = float("nan")
    program = program.evolve(weights=program.weights.with_tensors({"transformer.blocks.0.ffn.up_proj.weight": poisoned}))
    return PassManager("patch-attention,lower-fp16", verify=False).run(program)


@functools.cache
def _speculative_compile(config: tuple[tuple[str, int], ...], options: tuple[tuple[str, int], ...]) -> qc.CompiledModel:
    return qc.compile(tiny_config(**dict(config)), **{"ctx_len": 24, "prefill_len": 8, **dict(options)})


def _speculative(config: dict[str, int] | None = None, **options: int) -> qc.CompiledModel:
    """Config-only compiles for the speculative-decoding rows (cached: several rows share them)."""
    return _speculative_compile(tuple(sorted((config or {}).items())), tuple(sorted(options.items())))


def _draft_row(ident: str, draft: Callable[[Env], object], length: int = 4) -> None:
    TRIGGERS[ident] = lambda env: _speculative(num_speculative_tokens=2).generate(
        [[1, 2]], length, draft=draft(env)
    )


TRIGGERS["speculative-tokens-low"] = lambda env: qc.compile(tiny_config(), ctx_len=24, prefill_len=8, num_speculative_tokens=0)
TRIGGERS["speculative-tokens-room"] = lambda env: qc.compile(tiny_config(), ctx_len=24, prefill_len=8, num_speculative_tokens=23)
TRIGGERS["speculative-passes"] = lambda env: qc.compile(
    tiny_config(), ctx_len=24, prefill_len=8, num_speculative_tokens=2, passes="patch-attention,kv-cache{ctx_len=24}"
)
TRIGGERS["draft-needs-target"] = lambda env: env.meta.generate([[1, 2]], 4, draft="prompt-lookup")
_draft_row("draft-type", lambda env: "medusa")
_draft_row("draft-vocabulary", lambda env: _speculative(config={"vocab_size": 50}))
_draft_row("draft-batch", lambda env: _speculative(batch_size=2))
_draft_row("draft-context", lambda env: _speculative(config={"max_seq_len": 16}, ctx_len=16), length=18)
_draft_row("draft-speculative", lambda env: _speculative(num_speculative_tokens=2))
TRIGGERS["draft-slots"] = lambda env: _speculative(num_speculative_tokens=2, full_batch_size=2).generate(
    [[1, 2]], 4, draft=_speculative()
)
TRIGGERS["draft-slots-context"] = lambda env: _speculative(num_speculative_tokens=2, full_batch_size=2).generate(
    [[1, 2]], 4, draft=_speculative(config={"max_seq_len": 16}, ctx_len=16, full_batch_size=2)
)
TRIGGERS["scheduler-proposer"] = lambda env: ContinuousBatchScheduler(
    env.compiled, proposer=StatelessSlots(PromptLookup())
)


TRIGGERS["facade-qaic-config"] = lambda env: qc.QEFFAutoModelForCausalLM.from_pretrained(
    env.model_dir, qaic_config={"ccl_enabled": True}
)
TRIGGERS["facade-speculative-target"] = lambda env: qc.QEFFAutoModelForCausalLM.from_pretrained(env.model_dir).compile(
    num_speculative_tokens=3
)


@trigger("draft-tokenizer")
def _(env: Env) -> object:
    target = _speculative(num_speculative_tokens=2)
    other = env.model_copy("other-tokenizer")
    content = json.loads((other / "tokenizer.json").read_text())
    vocab = content["model"]["vocab"]
    first, second = list(vocab)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(content))
    draft = _speculative()
    env.monkeypatch.setattr(target, "source_directory", env.model_dir)
    env.monkeypatch.setattr(draft, "source_directory", other)
    return target.generate([[1, 2]], 4, draft=draft)


generate_row("sampling-top-k-type", [[1, 2]], 4, do_sample=True, top_k=True)
generate_row("sampling-seed", [[1, 2]], 4, do_sample=True, seed=1.5)
generate_row("sampling-do-sample-type", [[1, 2]], 4, do_sample="yes")
generate_row("eos-token-id-type", [[1, 2]], 4, eos_token_id=1.5)


@trigger("logits-non-finite")
def _(env: Env) -> object:
    model = random_model(tiny_config())
    with torch.no_grad():
        model.transformer.blocks[0].ffn.up_proj.weight.mul_(1e37)
    return qc.compile(model, precision="fp32", ctx_len=24, prefill_len=8, verify=False).generate([[1, 2, 3]], 4)


cli_row("cli-prompt-not-utf8", lambda env: ["run", str(env.artifact), "--prompt", "def f(\udcff)"])


@trigger("stdout-full")
def _(env: Env) -> object:
    from qeff_compiler.cli.terminal import guarded_stdout

    with open("/dev/full", "w") as full:
        env.monkeypatch.setattr(sys, "stdout", full)
        try:
            with guarded_stdout():
                return cli.app(args=["run", str(env.artifact), "--token-ids", "1", "--max-new-tokens", "1"], prog_name="qeffc", standalone_mode=False)
        finally:
            os.dup2(os.open(os.devnull, os.O_WRONLY), full.fileno())  # what could not be written: dropped


@trigger("engine-file-changed")
def _(env: Env) -> object:
    directory = env.artifact_copy("changed")
    loaded = qc.load_compiled(directory)
    data = bytearray((directory / "program.onnx").read_bytes())
    data[len(data) // 2] ^= 0x10
    (directory / "program.onnx").write_bytes(bytes(data))
    return loaded.generate([[1, 2]], 2, engine="onnxruntime")

def _consistent_edit(env: Env, name: str, edit: Callable[[dict], object]) -> Path:
    """A copy of the artifact whose manifest `edit` changed, its checksum recomputed (a buggy writer, or an edit
    re-checksummed): only the schema and the consistency checks can refuse it."""
    directory = env.artifact_copy(name)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop(artifact.MANIFEST_CHECKSUM)
    edit(manifest)
    (directory / "manifest.json").write_text(artifact._manifest_text(manifest))
    return directory


def _load_edited(name: str, edit: Callable[[dict], object]) -> Trigger:
    return lambda env: qc.load_compiled(_consistent_edit(env, name, edit))


TRIGGERS["artifact-manifest-key-missing"] = _load_edited("key-missing", lambda m: m.pop("tied_weights"))
TRIGGERS["artifact-manifest-key-type"] = _load_edited("key-type", lambda m: m["files"].update({"program.onnx": "abc"}))
TRIGGERS["artifact-manifest-key-unknown"] = _load_edited("key-unknown", lambda m: m["options"].update(colour="red"))
TRIGGERS["artifact-manifest-file-name"] = _load_edited(
    "file-name", lambda m: m["files"].update({"../outside": {"sha256": "0" * 64, "bytes": 1}})
)
TRIGGERS["artifact-manifest-files-missing"] = _load_edited("files-missing", lambda m: m.update(files={}))
TRIGGERS["artifact-manifest-config"] = _load_edited("bad-config", lambda m: m["model_config"].update(resid_pdrop=None))
TRIGGERS["artifact-options-mismatch"] = _load_edited("ctx-mismatch", lambda m: m["options"].update(ctx_len=48))
TRIGGERS["artifact-precision-mismatch"] = _load_edited("precision-mismatch", lambda m: m["options"].update(precision="fp16"))
TRIGGERS["artifact-tied-weights"] = _load_edited(
    "tied", lambda m: m["tied_weights"].update({"lm_head.weight": "transformer.blocks.9.ffn.up_proj.weight"})
)
TRIGGERS["artifact-manifest-deep"] = lambda env: qc.load_compiled(
    rewritten(env.artifact_copy("deep"), "manifest.json", "[" * 100_000 + "]" * 100_000)
)


@trigger("artifact-manifest-directory")
def _(env: Env) -> object:
    directory = without(env.artifact_copy("manifest-dir"), "manifest.json")
    (directory / "manifest.json").mkdir()
    return qc.load_compiled(directory)


@trigger("artifact-file-symlink")
def _(env: Env) -> object:
    directory = env.artifact_copy("linked")
    outside = env.fresh("outside.safetensors")
    (directory / "weights.safetensors").rename(outside)
    (directory / "weights.safetensors").symlink_to(outside)
    return qc.load_compiled(directory)


@trigger("compile-host-memory")
def _(env: Env) -> object:
    env.monkeypatch.setattr("qeff_compiler.host_memory.available_bytes", lambda: 2**10)
    return qc.compile(env.model_dir, ctx_len=24, prefill_len=8, stream=False)


@trigger("artifact-plan-invalid")
def _(env: Env) -> object:
    """A plan file that is consistent with its checksum (a buggy writer, or an edit re-checksummed) but malformed."""
    directory = env.artifact_copy("bad-plan")
    plans = json.loads((directory / "partition_plan.json").read_text())
    plans["decode"]["num_cores"] = "fourteen"
    (directory / "partition_plan.json").write_text(json.dumps(plans))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["partition_plan.json"] = artifact._fingerprint(directory / "partition_plan.json")
    manifest.pop(artifact.MANIFEST_CHECKSUM)
    (directory / "manifest.json").write_text(artifact._manifest_text(manifest))
    return qc.load_compiled(directory)
# the Cloud AI 100 hand-off (qaic)
def _handoff(env: Env, **options: object) -> object:
    weight_dtype = options.pop("weight_dtype", "fp32")
    compiled = qc.compile(tiny_config(), **{"precision": "fp32", "ctx_len": 24, "prefill_len": 8, **options})
    return compiled.export_qaic(env.fresh("qaic"), weight_dtype=weight_dtype)


TRIGGERS["qaic-precision"] = lambda env: _handoff(env, precision="int8")
TRIGGERS["qaic-pipeline"] = lambda env: _handoff(env, passes="strip-export-noise,patch-attention,lower-fp16,kv-cache{ctx_len=24},dce")
TRIGGERS["qaic-p2p-format"] = lambda env: _handoff(env, precision="fp16", num_devices=2, p2p_format="mxint8")
TRIGGERS["qaic-weight-dtype"] = lambda env: _handoff(env, weight_dtype="bf16")


@trigger("qaic-pruned")
def _(env: Env) -> object:
    compiled = qc.compile(env.model_dir, precision="fp32", ctx_len=24, prefill_len=8, prune_ffn=0.25, verify=False)
    return compiled.export_qaic(env.fresh("qaic"))


@trigger("qaic-packed-weights")
def _(env: Env) -> object:
    qc.compile(env.model_dir, ctx_len=24, prefill_len=8, precision="mxfp6", verify=False).save(env.fresh("mxfp6"))
    return qc.load_compiled(env.root / "mxfp6").export_qaic(env.fresh("qaic"))


@trigger("qaic-compiler-missing")
def _(env: Env) -> object:
    from qeff_compiler.backends.qaic.command import run_compile

    env.monkeypatch.setenv("QAIC_SDK", str(env.root / "no-sdk"))
    return run_compile(env.root)


@trigger("qaic-compiler-failed")
def _(env: Env) -> object:
    from qeff_compiler.backends.qaic.command import run_compile

    sdk = env.fresh("sdk")
    (sdk / "exec").mkdir(parents=True)
    (sdk / "exec" / "qaic-compile").write_text("#!/bin/sh\necho 'error: unsupported op' >&2\nexit 3\n")
    (sdk / "exec" / "qaic-compile").chmod(0o755)
    env.monkeypatch.setenv("QAIC_SDK", str(sdk))
    env.meta.export_qaic(env.fresh("qaic"))
    return run_compile(env.root / "qaic")


#: the offending value each row's message must name (defaults: none beyond the documented message)
OFFENDING: dict[str, str] = {
    "model-type": "int",
    "not-mpt-object": "Linear",
    "model-directory-missing": "no-such-model",
    "config-json-missing": "no-config",
    "config-json-invalid": "bad-config/config.json",
    "not-mpt-directory": "'llama'",
    "unknown-preset": "'mpt-1t'",
    "config-prefix-lm": "prefix_lm=True",
    "config-qk-ln": "qk_ln=True",
    "config-flash-sequence-id": "attn_uses_sequence_id=True",
    "config-attn-impl": "'xformers'",
    "config-attn-type": "'multiquery_attention'",
    "config-alibi-off": "alibi=False",
    "config-no-bias": "no_bias=False",
    "config-expansion-ratio": "expansion_ratio=2",
    "config-norm-type": "'rmsnorm'",
    "config-size": "n_layers must be a positive integer, got 0",
    "config-heads": "(30)",
    "weights-missing": "no-weights",
    "weights-pickle-only": "pytorch_model",
    "weight-missing-key": "'transformer.blocks.1.ffn.up_proj.weight'",
    "weight-unexpected-key": "transformer.blocks.9.extra",
    "weight-shape": "[96, 16]",
    "weight-dtype": "I32",
    "safetensors-corrupt-header": "corrupt-header/model.safetensors",
    "safetensors-truncated": "truncated-weights/model.safetensors",
    "sharded-index-invalid": "model.safetensors.index.json",
    "shard-missing": "model-00001-of-00002.safetensors",
    "pipeline-syntax": "column 25",
    "pipeline-trailing-comma": "ends with ','",
    "pipeline-nested-brace": "column 7",
    "pass-unknown": "'lower-fp8'",
    "pass-option-unknown": "'context'",
    "pass-option-type": "'sixteen'",
    "pass-option-repeated": "'ctx_len'",
    "pass-option-value": "'int4'",
    "pass-option-range": "alpha=1.5",
    "pass-order": "kv-cache requires ['attention-patched']",
    "pass-repeated": "lower-fp16 twice",
    "print-ir-after-unknown": "['kv-cache']",
    "pipeline-not-stateful": "'strip-export-noise,patch-attention'",
    "pass-numerics": "test-errors-scale-lm-head",
    "precision-unknown": "'fp8'",
    "kv-cache-dtype-unknown": "'int4'",
    "ctx-len-not-positive": "got 0",
    "ctx-len-too-long": "ctx_len=64",
    "prefill-len-too-long": "prefill_len=48",
    "ctx-len-below-prefill": "ctx_len=8",
    "batch-size-not-positive": "got 0",
    "batch-size-too-large": "batch_size=1000000000",
    "device-unknown": "'ai100-max'",
    "num-cores-range": "got 15",
    "num-devices-range": f"got {MAX_DEVICES + 1}",
    "p2p-format-unknown": "'bf16'",
    "w8a8-without-calibration": "w8a8",
    "calibration-missing": "no-such-table.safetensors",
    "calibration-foreign-file": "tiny-mpt/model.safetensors",
    "model-does-not-fit": "needs",
    "fp16-overflow": "transformer.blocks.1.ffn.up_proj",
    "meta-weights-run": "weight 'transformer",
    "prompt-empty": "prompt 1",
    "token-out-of-vocab": "[2048]",
    "prompt-not-ids": "['def', 'f']",
    "input-ids-dtype": "torch.float32",
    "prompts-too-many": "got 3 prompts",
    "prompt-too-long": "20 tokens",
    "max-new-tokens": "got 0",
    "sampling-temperature": "got 0.0",
    "sampling-top-p": "got 1.5",
    "sampling-options-without-sampling": "top_k",
    "unknown-engine": "'cuda'",
    "unknown-trace-detail": "'ops'",
    "estimate-too-long": "prompt_len (20)",
    "estimate-other-batch": "batch_size=4",
    "program-inputs": "missing ['past_key.0'",
    "calibration-text-unreadable": "no-such-text.txt",
    "calibration-text-too-short": "got 4 tokens",
    "calibration-table-empty": "empty.safetensors",
    "cli-usage": "(got 'many')",
    "cli-prompt-and-token-ids": "--prompt",
    "cli-draft-and-prompt-lookup": "--prompt-lookup",
    "cli-token-ids": "'1,2,x'",
    "cli-no-tokenizer": "/tmp/x/no-tokenizer",
    "cli-serve-no-tokenizer": "/tmp/x/no-tokenizer-serve",
    "cli-serve-port-taken": "127.0.0.1:",
    "cli-serve-max-queue": "got 0",
    "cli-serve-drain-timeout": "got -1.0",
    "cli-serve-ray-options": "--replicas",
    "cli-serve-replicas": "got 0",
    "cli-serve-ray-missing": "--ray",
    "cli-preset-needs-directory": "'mpt-7b'",
    "cli-estimate-w8a8": "w8a8",
    "cli-preset-compile": "'mpt-7b'",
    "cli-estimate-ctx-len": "ctx_len=8192",
    "model-does-not-fit-early": "29.96 B",
    "threads-invalid": "got 0",
    "facade-qefficient-argument": "kv_cache_batch_size=3",
    "output-exists": "/tmp/x/artifact",
    "output-not-an-artifact": "/tmp/x/notes",
    "output-unwritable": "/tmp/x/a-file",
    "trace-unwritable": "/tmp/x/a-file",
    "disk-full": "/tmp/x/full",
    "interrupted": "interrupted",
    "terminated": "SIGTERM",
    "output-raced": "/tmp/x/raced",
    "output-name-too-long": "256 bytes",
    "artifact-missing": "no-such-artifact",
    "artifact-no-manifest": "not-an-artifact",
    "artifact-manifest-invalid": "bad-json/manifest.json",
    "artifact-not-a-manifest": "other-json/manifest.json",
    "artifact-version": "version 1",
    "artifact-manifest-modified": "edited/manifest.json",
    "artifact-file-missing": "decode.onnx",
    "artifact-file-truncated": "weights.safetensors",
    "artifact-file-modified": "program.onnx",
    "artifact-plan-invalid": "fourteen",
    "artifact-manifest-key-missing": "'tied_weights'",
    "artifact-manifest-key-type": "'abc'",
    "artifact-manifest-key-unknown": "'options.colour'",
    "artifact-manifest-file-name": "'../outside'",
    "artifact-manifest-files-missing": "'files'",
    "artifact-manifest-config": "resid_pdrop",
    "artifact-options-mismatch": "is 48",
    "artifact-precision-mismatch": "'fp16'",
    "artifact-tied-weights": "'transformer.blocks.9.ffn.up_proj.weight'",
    "artifact-manifest-deep": "deep/manifest.json",
    "artifact-manifest-directory": "manifest-dir/manifest.json",
    "artifact-file-symlink": "weights.safetensors",
    "compile-host-memory": "--stream",
    "qaic-precision": "'int8'",
    "qaic-pruned": "prune_ffn=0.25",
    "qaic-pipeline": "lower-fp16",
    "qaic-p2p-format": "p2p_format='mxint8'",
    "qaic-weight-dtype": "'bf16'",
    "qaic-packed-weights": "mxfp6",
    "qaic-compiler-missing": "/tmp/x/no-sdk",
    "qaic-compiler-failed": "unsupported op",
}


OFFENDING.update({
    "config-field-type": "config.expansion_ratio",
    "config-json-not-utf8": "byte 0xff",
    "config-torch-dtype": "'float77'",
    "config-size-bound": "n_layers=1000000000",
    "config-parameters-bound": "d_model=65536",
    "capture-batch-bound": "batch_size=1000000000000",
    "config-epsilon": "got nan",
    "config-dropout": "got 2.0",
    "config-attention-scale": "got inf",
    "tokenizer-invalid": "bad-tokenizer/tokenizer.json",
    "tokenizer-added-tokens": "got null",
    "weights-pickle-blocked": "evil-pickle/pytorch_model.bin",
    "weight-non-finite": "'transformer.blocks.1.ffn.down_proj.weight'",
    "sharded-index-entry": "got a number (3)",
    "sharded-index-path": "'../outside.safetensors'",
    "shard-duplicate-weight": "'transformer.wte.weight'",
    "fp16-overflow-nan": "produces NaN",
    "sampling-top-k-type": "got True",
    "speculative-tokens-low": "got 0",
    "speculative-tokens-room": "got 23",
    "speculative-passes": "passes=",
    "draft-slots": "has 1 slots",
    "draft-slots-context": "ctx_len=16",
    "scheduler-proposer": "num_speculative_tokens=K",
    "draft-needs-target": "num_speculative_tokens=K",
    "draft-type": "'medusa'",
    "draft-vocabulary": "has 50 tokens",
    "draft-tokenizer": "other-tokenizer/tokenizer.json",
    "draft-batch": "batch_size=2",
    "draft-context": "ctx_len=16",
    "draft-speculative": "num_speculative_tokens=2",
    "facade-qaic-config": "{'ccl_enabled': True}",
    "facade-speculative-target": "num_speculative_tokens=3",
    "sampling-seed": "got 1.5",
    "sampling-do-sample-type": "got 'yes'",
    "eos-token-id-type": "got 1.5",
    "logits-non-finite": "NaN logits",
    "cli-prompt-not-utf8": "byte 0xff",
    "stdout-full": "standard output",
    "engine-file-changed": "program.onnx",
})

def provoke(ident: str, env: Env) -> BaseException:
    """Run the row's trigger and return what it raised (it must raise)."""
    try:
        result = TRIGGERS[ident](env)
    except (QeffError, cli.UsageError, _Interrupted) as exc:
        return exc
    if isinstance(result, _Interrupted):
        return result
    raise AssertionError(f"row {ident}: the trigger raised nothing (returned {result!r})")


def message_of(exc: BaseException, env: Env) -> str:
    return env.normalized(exc.format_message() if isinstance(exc, cli.UsageError) else str(exc))


def class_name(exc: BaseException) -> str:
    return exc.signal_class if isinstance(exc, _Interrupted) else type(exc).__name__


def documented(message: str) -> re.Pattern[str]:
    """The table's example as a pattern: `…` stands for any text."""
    return re.compile(".*".join(re.escape(part) for part in message.split("…")), re.DOTALL)


# tests -------------------------------------------------------------------------------------------------------------


# continuous batching and context buckets -------------------------------------------------------------------------
compile_row("ccl-not-list", comp_ctx_lengths_decode=24)
compile_row("ccl-empty", comp_ctx_lengths_decode=[])
compile_row("ccl-values", comp_ctx_lengths_decode=[0, 24])
compile_row("ccl-not-ascending", comp_ctx_lengths_decode=[16, 8, 24])
compile_row("ccl-above-ctx-len", comp_ctx_lengths_prefill=[8, 32])
compile_row("ccl-not-covering", comp_ctx_lengths_decode=[8, 16])
compile_row("full-batch-size-not-positive", full_batch_size=0)
compile_row("full-batch-size-with-batch-size", batch_size=2, full_batch_size=4)
compile_row(
    "pipeline-lacks-serving-pass", full_batch_size=2, passes="strip-export-noise,patch-attention,kv-cache{ctx_len=24},dce"
)
compile_row("cb-pass-no-size", passes="strip-export-noise,patch-attention,kv-cache{ctx_len=24},continuous-batching")
compile_row(
    "cb-pass-too-few-slots",
    batch_size=2,
    passes="strip-export-noise,patch-attention,kv-cache{ctx_len=24},continuous-batching{full_batch_size=1}",
)


@functools.cache
def _bucketed() -> qc.CompiledModel:
    """A tiny model compiled with context buckets (8, 24), to call its programs directly."""
    return qc.compile(random_model(tiny_config()), ctx_len=24, prefill_len=8, comp_ctx_lengths_decode=[8, 24], verify=False)


def _bucketed_prefill(positions: list[int], bucket: int) -> object:
    prefill, _ = _bucketed().host_executors()
    caches = {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in _bucketed().prefill.inputs if s.role.startswith("past_")}
    inputs = {"input_ids": torch.ones(1, 8, dtype=torch.int64), "position_ids": torch.tensor([positions])}
    return prefill({**inputs, "comp_ctx_lengths": torch.zeros(bucket, dtype=torch.int64), **caches})


@trigger("ccl-position-outside-bucket")
def _(env: Env) -> object:
    return _bucketed_prefill([2, 3, 4, 5, 6, 7, 8, 9], 8)


@trigger("ccl-input-shape")
def _(env: Env) -> object:
    return _bucketed_prefill(list(range(8)), 25)


@trigger("ccl-simulated-bucket")
def _(env: Env) -> object:
    return env.meta.simulation.decode_call_s(0)


@trigger("facade-cb-needs-full-batch-size")
def _(env: Env) -> object:
    return QEFFAutoModelForCausalLM.from_pretrained(env.model_dir, continuous_batching=True).compile()


@trigger("facade-full-batch-size-needs-cb")
def _(env: Env) -> object:
    return QEFFAutoModelForCausalLM.from_pretrained(env.model_dir).compile(full_batch_size=4)


@trigger("facade-continuous-batching-type")
def _(env: Env) -> object:
    return QEFFAutoModelForCausalLM.from_pretrained(env.model_dir, continuous_batching="yes")


def request_row(ident: str, **fields: object) -> None:
    TRIGGERS[ident] = lambda env: Request(**{"request_id": "r0", "prompt_ids": (1, 2), "max_new_tokens": 4, **fields})


request_row("request-id-type", request_id=7)
request_row("request-prompt-ids", prompt_ids="def f")
request_row("request-prompt-empty", prompt_ids=())
request_row("request-max-new-tokens", max_new_tokens=0)
request_row("request-stop-sequence", stop_sequences=((),))
request_row("request-arrival", arrival_s=-1.0)


@trigger("request-type")
def _(env: Env) -> object:
    return ContinuousBatchScheduler(env.compiled).submit({"prompt": [1, 2]})  # type: ignore[arg-type]


@trigger("request-too-long")
def _(env: Env) -> object:
    return ContinuousBatchScheduler(env.compiled).submit(Request("r0", tuple(range(20)), 8))


@trigger("request-out-of-vocab")
def _(env: Env) -> object:
    return ContinuousBatchScheduler(env.compiled).submit(Request("r0", (1, 4096), 8))


@trigger("request-duplicate-id")
def _(env: Env) -> object:
    scheduler = ContinuousBatchScheduler(env.compiled)
    scheduler.submit(Request("r0", (1, 2), 4))
    return scheduler.submit(Request("r0", (3,), 4))


OFFENDING.update({
    "ccl-not-list": "got 24",
    "ccl-empty": "got []",
    "ccl-values": "[0, 24]",
    "ccl-not-ascending": "[16, 8, 24]",
    "ccl-above-ctx-len": "[8, 32]",
    "ccl-not-covering": "[8, 16]",
    "ccl-position-outside-bucket": "position 9",
    "ccl-input-shape": "[25]",
    "ccl-simulated-bucket": "bucket 0",
    "full-batch-size-not-positive": "got 0",
    "full-batch-size-with-batch-size": "batch_size=2",
    "pipeline-lacks-serving-pass": "continuous-batching",
    "cb-pass-no-size": "full_batch_size",
    "cb-pass-too-few-slots": "full_batch_size=1",
    "facade-cb-needs-full-batch-size": "continuous_batching=True",
    "facade-full-batch-size-needs-cb": "full_batch_size=4",
    "facade-continuous-batching-type": "'yes'",
    "request-id-type": "got 7",
    "request-prompt-ids": "'def f'",
    "request-prompt-empty": "'r0'",
    "request-max-new-tokens": "got 0",
    "request-stop-sequence": "'r0'",
    "request-arrival": "-1.0",
    "request-type": "dict",
    "request-too-long": "(20 tokens)",
    "request-out-of-vocab": "[4096]",
    "request-duplicate-id": "'r0'",
})


# workloads ---------------------------------------------------------------------------------------------------------
@trigger("scheduler-arrivals")
def _(env: Env) -> object:
    return ContinuousBatchScheduler(env.compiled, arrivals="wall")


def workload_row(ident: str, name: str, text: str, tokenize: bool = False) -> None:
    def provoke(env: Env) -> object:
        path = env.fresh(name)
        path.write_text(text)
        return load_workload(path, 2048, str.split if tokenize else None)  # type: ignore[arg-type]

    TRIGGERS[ident] = provoke


cli_row("workload-unreadable", lambda env: ["run", str(env.artifact), "--requests", str(env.fresh("no-such-workload.json"))])
workload_row("workload-not-json", "not-json.json", "")
workload_row("workload-shape", "shape.json", '{"x": 1}')
workload_row("workload-poisson-field", "poisson-field.json", '{"poisson": {"rate": 3}}')
workload_row("workload-poisson-missing", "poisson-missing.json", '{"poisson": {"num_requests": 2, "rate_per_s": 1, "prompt_len": [1, 2]}}')
workload_row("workload-request-fields", "request-fields.json", '{"requests": [{"prompt_text": "x"}]}')
workload_row("workload-prompt-or-ids", "prompt-or-ids.json", '{"requests": [{"prompt": "x", "token_ids": [1]}]}')
workload_row("workload-prompt-needs-tokenizer", "needs-tokenizer.json", '{"requests": [{"prompt": "def f("}]}')
TRIGGERS["workload-num-requests"] = lambda env: PoissonWorkload(0, 1.0, (1, 2), (1, 2))
TRIGGERS["workload-rate"] = lambda env: PoissonWorkload(2, -5, (1, 2), (1, 2))
TRIGGERS["workload-range"] = lambda env: PoissonWorkload(2, 1.0, (9, 3), (1, 2))  # type: ignore[arg-type]
cli_row("cli-requests-and-prompt", lambda env: ["run", str(env.artifact), "--requests", "w.json", "--prompt", "x"])
cli_row("cli-ccl-list", lambda env: ["compile", "-o", str(env.fresh("out")), "--comp-ctx-lengths-decode", "8,x"])

OFFENDING.update({
    "scheduler-arrivals": "'wall'",
    "workload-unreadable": "no-such-workload.json",
    "workload-not-json": "not-json.json",
    "workload-shape": "shape.json",
    "workload-poisson-field": "['rate']",
    "workload-poisson-missing": "'max_new_tokens'",
    "workload-num-requests": "got 0",
    "workload-rate": "-5",
    "workload-range": "[9, 3]",
    "workload-request-fields": "['prompt_text']",
    "workload-prompt-or-ids": "request 0",
    "workload-prompt-needs-tokenizer": "request 0",
    "cli-requests-and-prompt": "--requests",
    "cli-ccl-list": "'8,x'",
})



def test_every_row_has_a_trigger_and_an_offending_value() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids in docs/errors.md"
    assert set(ids) == set(TRIGGERS), f"rows without trigger: {set(ids) - set(TRIGGERS)}; triggers without row: {set(TRIGGERS) - set(ids)}"
    assert set(ids) == set(OFFENDING)


def test_every_error_class_is_in_the_catalogue_or_explained() -> None:
    classes = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, QeffError)}
    in_table = {row.cls for row in ROWS}
    for name in in_table - classes:  # besides QeffErrors: the CLI's usage errors (typer's click) and Ctrl-C
        assert name in ("KeyboardInterrupt", "Terminated") or issubclass(getattr(click_errors, name), cli.UsageError), name
    assert classes - in_table == set(NOT_USER_TRIGGERABLE), "every user-facing QeffError class needs a catalogue row"
    text = DOCS.read_text()
    for name in NOT_USER_TRIGGERABLE:
        assert f"`{name}`" in text


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_row(row: Row, env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    exc = provoke(row.id, env)
    message = message_of(exc, env)
    assert class_name(exc) == row.cls, f"{row.id}: raised {class_name(exc)}: {message}"
    assert getattr(exc, "exit_code", None) == row.exit_code
    if row.id in CLI_ROWS:  # the console script's path: exactly one line on stderr, the row's exit code
        capsys.readouterr()
        code = cli.run(CLI_ROWS[row.id](env))
        err = capsys.readouterr().err
        assert code == row.exit_code
        assert err.count("\n") == 1 and err.startswith("qeffc: error: ") and "Traceback" not in err, err
        message = env.normalized(err.removeprefix("qeffc: error: "))  # what the user reads
    assert OFFENDING[row.id] in message, f"{row.id}: the message does not name {OFFENDING[row.id]!r}: {message}"
    assert documented(row.message).fullmatch(message), f"{row.id}: docs/errors.md says\n  {row.message}\nthe code says\n  {message}"
