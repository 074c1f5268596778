"""Ctrl-C during `qeffc compile`: the output directory is absent or complete, no staging sibling is left, and the
exit is one line with code 130 (typer's code for an interrupt), never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qeff_compiler as qc

QEFFC = Path(sys.executable).with_name("qeffc")
#: seconds the compile may take to reach its output staging (the shipped model, on a loaded 2-core machine)
STAGING_TIMEOUT = 240


@pytest.mark.e2e
def test_sigint_while_writing_leaves_no_partial_artifact(tmp_path: Path) -> None:
    output = tmp_path / "shipped"
    process = subprocess.Popen(
        # fp32: the largest weights of the shipped model, so the write lasts long enough to be interrupted
        [str(QEFFC), "compile", "-o", str(output), "--precision", "fp32", "--ctx-len", "32", "--prefill-len", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + STAGING_TIMEOUT
    staging: list[Path] = []
    while process.poll() is None and time.monotonic() < deadline:
        staging = list(tmp_path.glob(".shipped.partial-*"))
        if staging and any(staging[0].iterdir()):  # writing has begun: the first file is in the staging directory
            break
        time.sleep(0.005)
    assert staging, f"the compile never staged its output: {process.communicate()}"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (process.returncode, err)
    assert err.strip().count("\n") == 0 and err.startswith("qeffc: error: interrupted"), err
    assert "Traceback" not in out + err
    assert not list(tmp_path.glob(".shipped.*")), "a staging or retired directory was left behind"
    print(f"interrupted {'after' if output.exists() else 'before'} the rename; stderr: {err.strip()}")
    if output.exists():  # the signal came after the rename: then the artifact must be complete
        qc.load_compiled(output)
