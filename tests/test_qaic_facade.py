"""The QEfficient facade hands off: `export()` returns the hand-off ONNX's path, `compile()` writes the qaic files and
runs `compile.sh` when the SDK's compiler exists (a stand-in compiler here), else says it only simulates."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest

from qeff_compiler import QEFFAutoModelForCausalLM
from tests.conftest import random_model, tiny_config

FAKE_COMPILER = """#!/bin/sh
# stands in for Qualcomm's qaic-compile: records its arguments and makes the binary directory it is asked for
echo "$@" > "$QAIC_SDK/arguments.txt"
for argument in "$@"; do
  case "$argument" in -aic-binary-dir=*) mkdir -p "${argument#-aic-binary-dir=}" && touch "${argument#-aic-binary-dir=}/programqpc.bin";; esac
done
"""


@pytest.fixture
def qeff_model() -> QEFFAutoModelForCausalLM:
    return QEFFAutoModelForCausalLM.from_pretrained(random_model(tiny_config(vocab_size=256, max_seq_len=128)))


def test_export_returns_the_handoff_onnx_and_says_it_simulates(
    qeff_model: QEFFAutoModelForCausalLM,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("QAIC_SDK", str(tmp_path / "no-sdk"))
    with caplog.at_level(logging.WARNING, logger="qeff_compiler.facade"):
        path = qeff_model.export(tmp_path)
    assert isinstance(path, Path) and path.name == "model.onnx" and path.parent.name == "qaic"
    assert [i.name for i in onnx.load(str(path), load_external_data=False).graph.input][:1] == ["input_ids"]
    assert "qaic-compile not found" in caplog.text and "simulated device" in caplog.text


def test_compile_runs_the_sdk_compiler_when_it_exists(
    qeff_model: QEFFAutoModelForCausalLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = tmp_path / "sdk"
    (sdk / "exec").mkdir(parents=True)
    (sdk / "exec" / "qaic-compile").write_text(FAKE_COMPILER)
    (sdk / "exec" / "qaic-compile").chmod(0o755)
    monkeypatch.setenv("QAIC_SDK", str(sdk))
    qpc = Path(
        qeff_model.compile(
            compile_dir=tmp_path, prefill_seq_len=8, ctx_len=32, num_cores=14, mxfp6_matmul=True, verify=False
        )
    )
    arguments = (sdk / "arguments.txt").read_text().split()
    assert arguments[:4] == ["-aic-hw", "-aic-hw-version=ai100", "-m=model.onnx", "-retained-state"]
    assert "-mxfp6-matmul" in arguments and "-aic-num-cores=14" in arguments
    assert (qpc / "qaic" / "qpc" / "programqpc.bin").is_file()


def test_compile_of_a_precision_without_device_flag_keeps_the_artifact(
    qeff_model: QEFFAutoModelForCausalLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="qeff_compiler.facade"):
        qpc = Path(
            qeff_model.compile(compile_dir=tmp_path, prefill_seq_len=8, ctx_len=32, precision="int8", verify=False)
        )
    assert (qpc / "manifest.json").is_file() and not (qpc / "qaic").exists()
    assert "no qaic hand-off written: precision 'int8' has no Cloud AI 100 compiler flag" in caplog.text
