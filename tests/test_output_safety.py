"""Writing an artifact never deletes what is not ours: `--force` replaces only an artifact or an empty directory;
a path that appears (or changes) during the write is left as it is and the writer fails; of two writers to one
output exactly one wins; a killed writer's staging directory is removed by the next write; long names work."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import qeff_compiler as qc
import qeff_compiler.artifact as artifact_module
from qeff_compiler.atomic import NAME_MAX
from qeff_compiler.cli.main import run as qeffc
from qeff_compiler.errors import ArtifactExistsError
from tests.conftest import TinyArtifact


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file below `path` (or `path` itself) by relative name, with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def compiled(tiny_artifact: TinyArtifact) -> qc.CompiledModel:
    return tiny_artifact.compiled


# --force ---------------------------------------------------------------------------------------------------------
def _web_app(path: Path) -> None:
    path.mkdir()
    (path / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (path / "index.html").write_text("<html></html>")


def _artifact_plus_file(path: Path, source: Path) -> None:
    shutil.copytree(source, path)
    (path / "notes.txt").write_text("mine")


def _artifact_plus_folder(path: Path, source: Path) -> None:
    shutil.copytree(source, path)
    (path / "results").mkdir()
    (path / "results" / "run1.json").write_text("{}")


def _artifact_plus_empty_folder(path: Path, source: Path) -> None:
    shutil.copytree(source, path)
    (path / "keep").mkdir()


def _link_to_artifact(path: Path, source: Path) -> None:
    path.symlink_to(source, target_is_directory=True)


def _plain_file(path: Path) -> None:
    path.write_text("a file")


FOREIGN: dict[str, Callable[..., None]] = {
    "web-app-manifest": lambda path, source: _web_app(path),
    "artifact-plus-file": _artifact_plus_file,
    "artifact-plus-folder": _artifact_plus_folder,
    "artifact-plus-empty-folder": _artifact_plus_empty_folder,
    "link-to-artifact": _link_to_artifact,
    "file": lambda path, source: _plain_file(path),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_force_refuses_anything_but_an_artifact(kind: str, compiled: qc.CompiledModel, tiny_artifact: TinyArtifact,
                                                tmp_path: Path) -> None:
    output = tmp_path / "out"
    FOREIGN[kind](output, tiny_artifact.artifact)
    before = snapshot(output)

    with pytest.raises(ArtifactExistsError, match="is not a compiled-model directory"):
        compiled.save(output, overwrite=True)
    assert snapshot(output) == before and leftovers(tmp_path) == []
    assert snapshot(tiny_artifact.artifact)  # a link's target is untouched too


def test_force_through_qeffc_names_what_is_there(tiny_artifact: TinyArtifact, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "site"
    _web_app(output)
    code = qeffc(["compile", str(tiny_artifact.model_dir), "-o", str(output), "--force", "--ctx-len", "24"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "index.html" in err and "manifest.json" in err and (output / "index.html").is_file()


@pytest.mark.parametrize("kind", ["empty", "artifact"])
def test_force_replaces_an_artifact_or_an_empty_directory(kind: str, compiled: qc.CompiledModel,
                                                          tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir() if kind == "empty" else shutil.copytree(tiny_artifact.artifact, output)
    compiled.save(output, overwrite=True)
    qc.load_compiled(output)
    assert leftovers(tmp_path) == []


# races -----------------------------------------------------------------------------------------------------------
def _during_the_write(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` after the artifact's weights are staged, before the final rename."""
    write_weights = artifact_module.write_weights

    def write_then_act(*args: object, **kwargs: object) -> object:
        written = write_weights(*args, **kwargs)
        action()
        return written

    monkeypatch.setattr(artifact_module, "write_weights", write_then_act)


APPEARS = {
    "folder-with-file": lambda path: (path.mkdir(), (path / "photo.jpg").write_bytes(b"\xff\xd8")),
    "empty-folder": lambda path: path.mkdir(),
    "file": lambda path: path.write_text("data"),
}


@given(overwrite=st.booleans(), appears=st.sampled_from(sorted(APPEARS)))
def test_a_path_created_during_the_write_is_never_replaced(overwrite: bool, appears: str, compiled: qc.CompiledModel,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("race")
    output = root / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _during_the_write(monkeypatch, lambda: APPEARS[appears](output))
        with pytest.raises(ArtifactExistsError, match="created or replaced by another process while this one was writing"):
            compiled.save(output, overwrite=overwrite)
    after = snapshot(output) if output.exists() else None
    assert after is not None and "manifest.json" not in after  # what appeared is still there, unchanged
    assert leftovers(root) == []


def test_an_artifact_swapped_during_a_forced_write_is_left_alone(compiled: qc.CompiledModel, tiny_artifact: TinyArtifact,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    shutil.copytree(tiny_artifact.artifact, output)

    def swap() -> None:  # another process replaces the artifact this writer was allowed to replace
        shutil.rmtree(output)
        shutil.copytree(tiny_artifact.artifact, output)
        (output / "theirs.txt").write_text("theirs")

    _during_the_write(monkeypatch, swap)
    with pytest.raises(ArtifactExistsError, match="while this one was writing"):
        compiled.save(output, overwrite=True)
    assert (output / "theirs.txt").read_text() == "theirs" and leftovers(tmp_path) == []


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import qeff_compiler as qc
    import qeff_compiler.artifact as artifact
    from qeff_compiler.errors import ArtifactExistsError
    model_dir, output, signals, overwrite = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
    manifest = artifact._manifest
    def staged_then_wait(*args, **kwargs):  # every file is staged: wait for the other writer, then publish
        (signals / f"ready-{sys.argv[5]}").touch()
        while not (signals / "go").exists():
            time.sleep(0.01)
        return manifest(*args, **kwargs)
    artifact._manifest = staged_then_wait
    compiled = qc.compile(model_dir, precision="fp32", ctx_len=24, prefill_len=8, batch_size=2, verify=False)
    try:
        compiled.save(output, overwrite=overwrite)
    except ArtifactExistsError as error:
        print(error)
        sys.exit(3)
""")


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "forced-over-an-artifact"])
def test_two_concurrent_writers_one_wins(existing: bool, tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    """Two processes stage all their files before either publishes, then race to the final rename."""
    output, signals = tmp_path / "out", tmp_path / "signals"
    signals.mkdir()
    if existing:
        shutil.copytree(tiny_artifact.artifact, output)
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tiny_artifact.model_dir), str(output), str(signals),
                          str(int(existing)), str(index)], stdout=subprocess.PIPE, text=True)
        for index in range(2)
    ]
    deadline = time.monotonic() + 240
    while len(list(signals.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        assert all(racer.poll() is None for racer in racers), [racer.communicate() for racer in racers]
        time.sleep(0.05)
    (signals / "go").touch()
    results = sorted((racer.wait(timeout=120), racer.communicate()[0]) for racer in racers)
    assert [code for code, _ in results] == [0, 3], results
    assert "while this one was writing" in results[1][1]
    qc.load_compiled(output)
    assert leftovers(tmp_path) == []


# leftovers -------------------------------------------------------------------------------------------------------
SLOW_SAVE = textwrap.dedent("""
    import sys, time
    import qeff_compiler as qc
    import qeff_compiler.artifact as artifact
    write_weights = artifact.write_weights
    def slow(*args, **kwargs):
        written = write_weights(*args, **kwargs)
        print("staged", flush=True)
        time.sleep(120)
        return written
    artifact.write_weights = slow
    qc.compile(sys.argv[1], precision="fp32", ctx_len=24, prefill_len=8, verify=False).save(sys.argv[2], overwrite=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_write_is_cleaned_by_the_next_one(signum: int, compiled: qc.CompiledModel, tiny_artifact: TinyArtifact,
                                                   tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(tiny_artifact.model_dir), str(output)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "staged"
    os.kill(child.pid, signum)
    child.wait(timeout=60)
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and str(child.pid) in stale[0] and not output.exists()

    compiled.save(output)
    assert leftovers(tmp_path) == [] and qc.load_compiled(output)
    assert f"process {child.pid} no longer exists" in caplog.text


def test_a_live_writers_staging_is_left_alone(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        staging = tmp_path / f".out.partial-{alive.pid}-0123abcd"
        staging.mkdir()
        compiled.save(tmp_path / "out")
        assert staging.is_dir()
    finally:
        alive.kill()
        alive.wait()


def test_sigterm_during_qeffc_compile_is_one_line_and_leaves_nothing(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    output = tmp_path / "out"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("qeffc")), "compile", str(tiny_artifact.model_dir), "-o", str(output),
         "--ctx-len", "24", "--prefill-len", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        staging = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
        if staging and any(staging[0].iterdir()):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if output.exists():  # it finished before the signal: then it must be complete
        qc.load_compiled(output)
        pytest.skip("the compile finished before SIGTERM arrived")
    assert process.returncode == 143 and err == "qeffc: error: terminated (SIGTERM); no output was left half-written\n"
    assert leftovers(tmp_path) == []


# names -----------------------------------------------------------------------------------------------------------
def test_a_long_legal_output_name_works(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    output = tmp_path / ("a" * NAME_MAX)
    compiled.save(output)
    assert qc.load_compiled(output) and leftovers(tmp_path) == []


def test_a_name_too_long_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / ("a" * (NAME_MAX + 1))
    started = time.monotonic()
    assert qeffc(["compile", "-o", str(output)]) == 1
    assert f"its name is {NAME_MAX + 1} bytes, the limit is {NAME_MAX}" in capsys.readouterr().err
    assert time.monotonic() - started < 5  # refused before capture, not after the compile
