"""One set of defaults and truthful what-ifs: every entry point shares `options.DEFAULTS` (fp16), `estimate` refuses
what `compile` refuses and says which shape its figures are for, presets resolve the same in Python and in `qeffc`,
and the small things a first run meets (thread counts, `--kv-cache-dtype none`, printed summaries) stay fixed."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from typer.models import OptionInfo

import qeff_compiler as qc
from qeff_compiler.backends.ai100.memory import weights_lower_bound
from qeff_compiler.cli import accuracy, build, device, generate, main as cli
from qeff_compiler.errors import InvalidArgumentError, ModelDoesNotFitError
from qeff_compiler.facade import QEFFAutoModelForCausalLM
from qeff_compiler.options import DEFAULTS
from qeff_compiler.precision import kv_cache_bits
from qeff_compiler.runtime import threads
from tests.conftest import TinyArtifact, tiny_config


def _option_defaults(command: object) -> dict[str, object]:
    defaults = {}
    for name, parameter in inspect.signature(command).parameters.items():  # type: ignore[arg-type]
        default = parameter.default
        defaults[name] = default.default if isinstance(default, OptionInfo) else default
    return defaults


def test_every_entry_point_has_the_same_defaults_and_fp16_is_the_precision() -> None:
    assert DEFAULTS.precision == "fp16"
    api = qc.compile.__kwdefaults__
    for command in (build.compile_command, device.estimate_command):
        cli_defaults = _option_defaults(command)
        for name in ("precision", "ctx_len", "prefill_len", "batch_size", "kv_cache_dtype", "device", "num_devices"):
            assert cli_defaults[name] == api[name] == getattr(DEFAULTS, name), (command.__name__, name)
    assert _option_defaults(accuracy.tune_command)["ctx_len"] == qc.tune.__kwdefaults__["ctx_len"] == DEFAULTS.ctx_len
    assert qc.evaluate.__defaults__[0] == DEFAULTS.precision  # and `qeffc eval` scores it when given no --precision
    facade = inspect.signature(QEFFAutoModelForCausalLM.compile).parameters
    assert (facade["prefill_seq_len"].default, facade["ctx_len"].default) == (DEFAULTS.prefill_len, DEFAULTS.ctx_len)


def test_plain_estimate_fits_the_default_model_and_names_its_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["estimate"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps a title wider than its table
    assert "ctx_len 128, prefill_len 32, batch 1); weights, KV cache in VTCM" in out  # the memory table's header
    assert "estimate: tiny-mpt-pystdlib fp16, ctx_len 128, prefill_len 32, batch 1, prompt 32, generate 96" in out


def test_estimate_refuses_a_ctx_len_beyond_the_model_as_compile_does(capsys: pytest.CaptureFixture[str]) -> None:
    """`estimate mpt-7b --ctx-len 8192` once reported a 2048-token KV cache silently."""
    assert cli.run(["estimate", "mpt-7b", "--precision", "mxfp6", "--ctx-len", "8192"]) == 2
    estimate_error = capsys.readouterr().err
    with pytest.raises(InvalidArgumentError) as compile_error:
        qc.compile("mpt-7b", precision="mxfp6", ctx_len=8192, prefill_len=128)
    assert estimate_error.strip() == f"qeffc: error: {compile_error.value}"
    assert "ctx_len=8192 exceeds the model's max_seq_len=2048" in estimate_error
    assert cli.run(["estimate", "--prompt-len", "100", "--generation-len", "100"]) == 2  # before compiling
    assert "prompt_len (100) + generation_len (100) exceeds ctx_len=128" in capsys.readouterr().err
    assert cli.run(["estimate", "--prompt-len", "0"]) == 2  # not read as "the default"
    assert "prompt_len must be a positive integer, got 0" in capsys.readouterr().err


def test_a_model_too_big_for_the_socs_is_refused_from_its_parameter_counts_before_tracing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_capture(*args: object, **kwargs: object) -> None:
        raise AssertionError("traced although the parameter counts already refuse the model")

    monkeypatch.setattr("qeff_compiler.compiler.capture_resolved", no_capture)
    with pytest.raises(ModelDoesNotFitError, match=r"29\.96 B matmul parameters.*num_devices=2 at mxfp6"):
        qc.compile("mpt-30b", precision="mxfp6", ctx_len=2048, prefill_len=128)


@pytest.mark.parametrize(
    ("precision", "kv_cache_dtype", "num_devices", "untied"),
    [("fp32", None, 1, False), ("fp16", "mxint8", 2, True), ("int8", None, 1, True), ("mxfp6", None, 2, False)],
)
def test_the_parameter_count_bound_never_exceeds_the_memory_plan(
    precision: str, kv_cache_dtype: str | None, num_devices: int, untied: bool
) -> None:
    """The early refusal is sound: its bytes per SoC are a lower bound of the plan's busiest SoC, so it never
    refuses a model that the memory plan accepts."""
    config = tiny_config(tie_word_embeddings=not untied)
    compiled = qc.compile(config, precision=precision, kv_cache_dtype=kv_cache_dtype, ctx_len=32, prefill_len=8,
                          batch_size=2, num_devices=num_devices, verify=False)
    bits = kv_cache_bits(precision, kv_cache_dtype)
    _, bound = weights_lower_bound(config, precision, 2, 32, bits, num_devices)
    busiest = max(soc.weight_bytes + soc.kv_cache_bytes for soc in compiled.simulation.memory.socs)
    assert 0.5 * busiest < bound <= busiest


def test_a_preset_name_means_the_same_in_python_and_a_weightless_artifact_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidArgumentError, match="max_seq_len=2048"):  # resolved to the preset's config
        qc.compile("mpt-125m", ctx_len=4096)
    assert cli.run(["compile", "mpt-125m", "-o", str(tmp_path / "out")]) == 2
    assert "config-only preset" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_kv_cache_dtype_none_means_the_default_in_compile_too(capsys: pytest.CaptureFixture[str]) -> None:
    """`none` passes the option checks (the next one, ctx_len, fails) instead of being refused as a dtype."""
    assert cli.run(["compile", "-o", "unused", "--kv-cache-dtype", "none", "--ctx-len", "0"]) == 2
    assert "ctx_len must be a positive integer, got 0" in capsys.readouterr().err
    assert cli.run(["compile", "-o", "unused", "--kv-cache-dtype", "int4"]) == 2
    assert "kv_cache_dtype 'int4' is not one of fp16, mxint8 (or None, 'none'" in capsys.readouterr().err


def test_run_validates_the_request_before_echoing_the_prompt(
    tiny_artifact: TinyArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt that with max_new_tokens overflows ctx_len: the error alone, not glued to the prompt's text."""
    prompt = "def f(x):\n    return x\n" * 2
    assert cli.run(["run", str(tiny_artifact.artifact), "--prompt", prompt, "--max-new-tokens", "20"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "exceeds ctx_len=24" in captured.err
    assert cli.run(["run", str(tiny_artifact.artifact), "--prompt", "def", "--max-new-tokens", "3",
                    "--engine", "onnxruntime", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def") and "onnxruntime engine on 1 thread here" in out


def test_default_threads_leave_busy_cpus_alone_and_respect_torchs_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.7, 0.0, 0.0))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 8)
    assert threads.default_threads() == 3  # 8 CPUs, 5 kept busy by others
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert threads.default_threads() == 1  # never zero
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    assert threads.default_threads() == 2  # OMP_NUM_THREADS / torch.set_num_threads cap it
    with pytest.raises(InvalidArgumentError, match="got 0"):
        threads.resolve_threads(0)
    with pytest.raises(InvalidArgumentError, match=r"threads must be 1\.\.8 .*got 9"):
        threads.resolve_threads(9)


def test_generate_runs_at_the_thread_count_asked_and_restores_torchs(tiny_artifact: TinyArtifact) -> None:
    seen = []
    before = threads.torch.get_num_threads()
    compiled = tiny_artifact.compiled
    count = min(2, threads.available_cpus())
    out = compiled.generate([[1, 2, 3]], 2, threads=count, streamer=lambda *_: seen.append(threads.torch.get_num_threads()))
    assert seen == [count, count] and threads.torch.get_num_threads() == before
    assert generate.run_command  # the CLI passes --threads through (test_run_validates_...)
    text = repr(out.stats)
    assert text.count("\n") == 1 and "simulated on ai100-standard" in text and "host: TTFT" in text
    assert repr(compiled).startswith(f"CompiledModel({tiny_artifact.model_dir}: fp32, ctx_len=24, prefill_len=8")
