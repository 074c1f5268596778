"""The installed `qeffc` console script: help, pass listing, opt with timing; one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import random_model, tiny_config

QEFFC = Path(sys.executable).with_name("qeffc")


def qeffc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(QEFFC), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-mpt")
    random_model(tiny_config()).save_pretrained(directory)
    return directory


def test_console_script_is_installed() -> None:
    assert QEFFC.is_file(), "install the package (pip install -e .) so the qeffc console script exists"


@pytest.mark.e2e
def test_help_lists_commands() -> None:
    result = qeffc("--help")
    assert result.returncode == 0
    for command in ("capture", "passes", "opt"):
        assert command in result.stdout


@pytest.mark.e2e
def test_passes_lists_registered_passes() -> None:
    result = qeffc("passes")
    assert result.returncode == 0
    assert "dce" in result.stdout and "strip-export" in result.stdout


@pytest.mark.e2e
def test_capture_prints_a_summary(model_dir: Path) -> None:
    result = qeffc("capture", str(model_dir))
    assert result.returncode == 0, result.stderr
    assert "aten.linear" in result.stdout and "parameters" in result.stdout


@pytest.mark.e2e
def test_opt_with_time_passes_and_print_ir(model_dir: Path) -> None:
    result = qeffc("opt", str(model_dir), "--passes", "strip-export-noise,dce", "--time-passes", "--print-ir-after", "dce")
    assert result.returncode == 0, result.stderr
    assert "// ----- IR after dce -----" in result.stdout
    timing_lines = [line for line in result.stdout.splitlines() if line.startswith(("strip-export-noise ", "dce "))]
    assert len(timing_lines) == 2


@pytest.mark.e2e
def test_opt_on_a_preset_runs_on_meta_weights() -> None:
    result = qeffc("opt", "mpt-125m", "--passes", "strip-export-noise,dce", "--time-passes")
    assert result.returncode == 0, result.stderr
    assert "meta" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("opt", "MODEL", "--passes", "dce,nope"), 2, "unknown pass 'nope'"),
        (("opt", "MODEL", "--passes", "dce{x=1}"), 2, "has no option 'x'"),
        (("opt", "MODEL", "--passes", "dce{"), 2, "'{' is never closed"),
        (("capture", "no-such-model"), 2, "unknown model preset 'no-such-model'"),
        (("opt", "MODEL"), 2, "Missing option"),
        (("frobnicate",), 2, "No such command"),
    ],
)
@pytest.mark.e2e
def test_user_errors_exit_with_one_line_and_no_traceback(model_dir: Path, args: tuple, code: int, message: str) -> None:
    result = qeffc(*(str(model_dir) if a == "MODEL" else a for a in args))
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.e2e
def test_failures_exit_1(tmp_path: Path) -> None:
    tiny_config().save_pretrained(tmp_path)  # a config without weights
    result = qeffc("capture", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no model.safetensors" in result.stderr


@pytest.mark.e2e
def test_compile_then_run_streams_tokens_and_prints_statistics(model_dir: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    result = qeffc("compile", str(model_dir), "-o", str(artifact), "--ctx-len", "32", "--prefill-len", "8")
    assert result.returncode == 0, result.stderr
    assert (artifact / "manifest.json").is_file() and (artifact / "program.onnx").is_file()
    again = qeffc("compile", str(model_dir), "-o", str(artifact))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    run = qeffc("run", str(artifact), "--token-ids", "1,2,3", "--max-new-tokens", "5")
    assert run.returncode == 0, run.stderr
    streamed = run.stdout.splitlines()[0].split(",")
    assert len(streamed) == 5 and all(t.isdigit() for t in streamed)
    assert "host TTFT" in run.stdout
    no_tokenizer = qeffc("run", str(artifact), "--prompt", "hello")
    assert no_tokenizer.returncode == 2 and "has no tokenizer" in no_tokenizer.stderr


@pytest.mark.e2e
def test_shipped_model_is_the_default_and_its_tokenizer_travels(tmp_path: Path) -> None:
    summary = qeffc("capture")
    assert summary.returncode == 0, summary.stderr
    assert "3,672,320" in summary.stdout  # the shipped model's parameter count (model card)
    artifact = tmp_path / "shipped"
    assert qeffc("compile", "-o", str(artifact), "--ctx-len", "64", "--prefill-len", "16").returncode == 0
    run = qeffc("run", str(artifact), "--prompt", "    def __init__(self", "--max-new-tokens", "12")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("    def __init__(self")


@pytest.mark.e2e
def test_eval_prints_the_accuracy_table(tmp_path: Path) -> None:
    from qeff_compiler.data import TINY_MPT_VALIDATION_TEXT

    text = tmp_path / "text.py"
    text.write_text(TINY_MPT_VALIDATION_TEXT.read_text()[:10_000])
    result = qeffc("eval", "--text", str(text), "--precision", "fp32", "--precision", "int8")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "100.00%" in rows[0] and all(row.rstrip("│ ").endswith("ok") for row in rows)
    preset = qeffc("eval", "mpt-7b")
    assert preset.returncode == 2 and "needs a model directory" in preset.stderr


@pytest.mark.e2e
def test_compile_streams_a_pickled_checkpoint_when_allowed_with_progress_bars(tmp_path: Path) -> None:
    import torch

    model = random_model(tiny_config())
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    result = qeffc(
        "compile", str(tmp_path / "bin"), "-o", str(tmp_path / "art"), "--ctx-len", "16", "--prefill-len", "4",
        "--precision", "fp16", "--allow-pickle", "--stream", "--progress",
    )
    assert result.returncode == 0, result.stderr
    for stage in ("compile prefill", "write weights", "checksum"):
        assert stage in result.stderr, result.stderr
    assert (tmp_path / "art" / "weights.safetensors").is_file()
