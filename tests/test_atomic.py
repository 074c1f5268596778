"""Atomic writes: a failed or interrupted write leaves the old content (or nothing) and no staging sibling; real
write failures (a file-size limit makes the kernel refuse writes with EFBIG, which stops root too) become an
`ArtifactError` naming the destination, whichever library was writing (safetensors in Rust, onnx, matplotlib)."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.atomic import atomic_file, atomic_write_text
from qeff_compiler.calibration import load_calibration, save_calibration
from qeff_compiler.errors import ArtifactError
from tests.conftest import TinyArtifact


@pytest.fixture
def compiled(tiny_artifact: TinyArtifact) -> qc.CompiledModel:
    return tiny_artifact.compiled


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored) in this process, until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_a_failed_write_keeps_the_old_file_and_removes_the_sibling(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(ZeroDivisionError), atomic_file(target) as temp:
        temp.write_text("half")
        1 / 0  # noqa: B018 (the writer fails midway)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_artifact_save_past_a_file_size_limit_leaves_nothing(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    output = tmp_path / "artifact"
    with file_size_limit(4096), pytest.raises(ArtifactError, match=rf"cannot write {output}: .*File too large"):
        compiled.save(output)
    assert not output.exists() and leftovers(tmp_path) == []


def test_replacing_an_artifact_that_fails_keeps_the_old_one(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    output = tmp_path / "artifact"
    compiled.save(output)
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    with file_size_limit(4096), pytest.raises(ArtifactError, match="File too large"):
        compiled.save(output, overwrite=True)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before and leftovers(tmp_path) == []


def test_calibration_table_past_a_file_size_limit_keeps_the_old_table(tmp_path: Path) -> None:
    path = tmp_path / "calibration.safetensors"
    small = {"lm_head.weight": torch.ones(4)}
    save_calibration(small, path)
    with file_size_limit(4096), pytest.raises(ArtifactError, match=rf"cannot write {path}"):
        save_calibration({"lm_head.weight": torch.ones(100_000)}, path)
    assert torch.equal(load_calibration(path)["lm_head.weight"], small["lm_head.weight"]) and leftovers(tmp_path) == []


def test_trace_and_plot_writes_fail_cleanly(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    from qeff_compiler.backends.ai100.plot import plot_simulation

    (tmp_path / "a-file").write_text("")
    with pytest.raises(ArtifactError, match=r"a-file/trace.json: .*a-file is not a directory"):
        compiled.generate([[1, 2, 3]], 2, trace=tmp_path / "a-file" / "trace.json")
    with file_size_limit(1024), pytest.raises(ArtifactError, match=r"plot.png: File too large"):
        plot_simulation(compiled.simulation, tmp_path / "plot.png")
    with file_size_limit(1024), pytest.raises(ArtifactError, match=r"trace.json: File too large"):
        compiled.generate([[1, 2, 3]], 8, trace=tmp_path / "trace.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
