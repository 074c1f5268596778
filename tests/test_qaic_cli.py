"""`qeffc compile --qaic` writes OUTPUT/qaic next to the artifact and `qeffc inspect` lists it; a config-only MPT-7B
hands off without holding its weights (external data streamed: a sparse file of zeros), within a fixed memory bound.

Measured here (MiB of RssAnon): 279 after imports, 355 peak for the whole config-only 7B mxfp6 compile and hand-off
(the graph of 32 layers; 26.6 GB of fp32 external data written as a hole). The bound is 279 + 512.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from qeff_compiler.cli.main import app, run
from qeff_compiler.data import TINY_MPT

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_MB = 512
CHILD = """
import json, sys
from bench.rss import AnonPeak, status_kb
from qeff_compiler.cli.main import app, run

baseline = status_kb("RssAnon") / 1024
with AnonPeak() as peak:
    app(args=sys.argv[1:], prog_name="qeffc", standalone_mode=False)
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak.peak_mb}))
"""


def test_compile_qaic_writes_the_handoff_and_inspect_lists_it(tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "out"
    args = [
        "compile",
        str(TINY_MPT),
        "-o",
        str(output),
        "--precision",
        "mxfp6",
        "--ctx-len",
        "48",
        "--prefill-len",
        "8",
    ]
    result = runner.invoke(app, [*args, "--qaic"])
    assert result.exit_code == 0, result.output
    assert "wrote the qaic hand-off" in result.output
    files = sorted(p.name for p in (output / "qaic").iterdir())
    assert files == ["compile.sh", "custom_io.yaml", "model.onnx", "model.onnx.data", "specializations.json"]
    assert "-mxfp6-matmul" in (output / "qaic" / "compile.sh").read_text()
    assert (output / "manifest.json").is_file()  # the artifact is written as before

    listing = runner.invoke(app, ["inspect", str(output)])
    assert listing.exit_code == 0, listing.output
    assert f"qaic hand-off {output / 'qaic'}: compile.sh (" in " ".join(listing.output.split())

    again = runner.invoke(app, [*args, "--qaic", "--force"])  # an artifact with its hand-off folder is ours
    assert again.exit_code == 0, again.output
    (output / "qaic" / "notes.txt").write_text("mine")  # not a hand-off file: --force must not delete it
    refused = runner.invoke(app, [*args, "--qaic", "--force"])
    assert refused.exit_code != 0 and (output / "qaic" / "notes.txt").read_text() == "mine"


def test_compile_qaic_refuses_int8_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["compile", str(TINY_MPT), "-o", str(tmp_path / "out"), "--precision", "int8", "--qaic"]) == 2
    assert "precision 'int8' has no Cloud AI 100 compiler flag" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="RssAnon is read from Linux's /proc")
def test_config_only_mpt_7b_hands_off_in_bounded_memory(tmp_path: Path) -> None:
    output = tmp_path / "mpt-7b"
    args = ["compile", "mpt-7b", "-o", str(output), "--qaic", "--precision", "mxfp6", "--kv-cache-dtype", "mxint8"]
    args += ["--ctx-len", "2048", "--prefill-len", "128", "--no-progress"]
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["peak_mb"] < row["baseline_mb"] + OVERHEAD_MB, row

    onnx_file, data = output / "qaic" / "model.onnx", output / "qaic" / "model.onnx.data"
    onnx.checker.check_model(str(onnx_file))  # by path: the model is far over 2 GB with its data
    weights = onnx.load(str(onnx_file), load_external_data=False).graph.initializer
    external = [w for w in weights if w.data_location == onnx.TensorProto.EXTERNAL]
    fp32_bytes = sum(4 * _numel(w.dims) for w in external)
    assert 6.6e9 < fp32_bytes / 4 < 6.8e9  # MPT-7B's 6.65 B parameters, the tied embedding once
    assert data.stat().st_size >= fp32_bytes
    assert data.stat().st_blocks * 512 < 2**20  # a hole: nothing was read or held to write it
    assert not (output / "manifest.json").exists()  # no artifact without weights


def _numel(dims: list[int]) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count
