"""Fuzzing the three entry points a user feeds text or files to, 500 hypothesis examples each.

- pipeline strings → `PassManager` (and, when one parses, a run on a captured tiny model): a `QeffError` or success;
- `qeffc` argument lists → `cli.run(argv)` in-process: exit code 0, 1 or 2, at most one line on stderr, never a
  traceback. The commands that do heavy work (capture, compile, calibrate, eval) stop at a stub once their
  arguments are parsed and checked, so each example stays cheap; `passes`, `inspect` and `run` run for real on a
  tiny artifact;
- byte-level corruptions (flip, truncate, insert) of any file of a saved artifact → `ArtifactError` from
  `load_compiled`, raised by the checks that run before any capture (the test makes capture itself fail).

Every example runs under an alarm, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer._click.core import Context

import qeff_compiler as qc
from qeff_compiler import artifact as artifact_module
from qeff_compiler.capture import resolve_model
from qeff_compiler.cli import main as cli
from qeff_compiler.errors import ArtifactError, QeffError
from qeff_compiler.options import CompileOptions
from qeff_compiler.passes import PassManager, registered_passes
from qeff_compiler.passes.pipeline import parse_pipeline
from tests.conftest import TinyArtifact, random_model, tiny_config

EXAMPLES = 500
#: seconds one example may take before it counts as a hang
HANG_SECONDS = 30
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@contextlib.contextmanager
def no_hang(what: object) -> Iterator[None]:
    """Fail with TimeoutError if the block runs longer than HANG_SECONDS (SIGALRM; pytest runs in the main thread)."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"hang: {what!r} ran longer than {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# pipeline strings ------------------------------------------------------------------------------------------------
PASS_NAMES = sorted(registered_passes())
OPTION_NAMES = sorted({f.name for cls in registered_passes().values() for f in dataclasses.fields(cls.Options)})
OPTION_VALUES = [
    "0", "1", "-1", "8", "16", "24", "4096", "99999999999", "1.5", "-0.5", "nan", "inf", "none", "true", "false",
    "auto", "fp16", "mxint8", "int4", "all", "last", "e2m3", "e3m2", "lm_head", "transformer.blocks.0.*",
    "lm_head|transformer.*", "/no/such/table.safetensors", "x",
]


@st.composite
def pipeline_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed pipelines of real passes with their own options (plausible and absurd values), sometimes
    made-up names, options or separators, and sometimes raw grammar characters."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(alphabet="abcdeklnoprstuvwx0123456789-_,{}=| \t", max_size=40))
    passes = []
    for _ in range(draw(st.integers(1, 5))):
        real = draw(st.integers(0, 9)) > 0
        name = draw(st.sampled_from(PASS_NAMES)) if real else draw(st.sampled_from(["lower-fp8", "kv_cache", "", "Dce"]))
        own = [f.name for f in dataclasses.fields(registered_passes()[name].Options)] if real else []
        keys = st.sampled_from(own) if own and draw(st.integers(0, 4)) else st.sampled_from([*OPTION_NAMES, "bogus"])
        options = dict(draw(st.lists(st.tuples(keys, st.sampled_from(OPTION_VALUES)), max_size=3)))
        block = "{" + draw(st.sampled_from([",", " "])).join(f"{k}={v}" for k, v in options.items()) + "}"
        passes.append(name + (block if options or not draw(st.integers(0, 5)) else ""))
    return draw(st.sampled_from([",", ",", ", ", ",,"])).join(passes)


@pytest.fixture(scope="module")
def program() -> qc.Program:
    return qc.capture(random_model(tiny_config(n_layers=1)), seq_len=8)


@FUZZ
@given(text=pipeline_texts())
def test_pipeline_strings_give_qeff_errors_only(program: qc.Program, text: str) -> None:
    with no_hang(text):
        try:
            manager = PassManager(text)
        except QeffError as error:
            event(f"refused: {type(error).__name__}")
            return
        if len(parse_pipeline(text)) > 4:  # long valid pipelines cost the most and add little
            event("parsed, not run")
            return
        try:
            manager.run(program)  # with verification, as users run it
        except QeffError as error:
            event(f"run refused: {type(error).__name__}")
        else:
            event("ran")


# qeffc argument lists --------------------------------------------------------------------------------------------
class Reached(QeffError):
    """A stub of a heavy step was reached: the arguments before it were accepted."""

    exit_code = 3


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: TinyArtifact) -> dict[str, Path]:
    """The shared tiny model (with the shipped tokenizer) and its artifact, and paths of every other kind."""
    root = tmp_path_factory.mktemp("cli-fuzz")
    (root / "a-file").write_text("not a directory")
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("keep")
    return {
        "root": root, "model": tiny_artifact.model_dir, "artifact": tiny_artifact.artifact, "file": root / "a-file",
        "below-file": root / "a-file" / "x", "notes": root / "notes", "fresh": root / "fresh" / "out",
    }


@pytest.fixture
def stubbed_cli(cli_files: dict[str, Path], tiny_artifact: TinyArtifact, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heavy steps become stubs after the cheap checks; `load_compiled` of the artifact returns the model it
    was saved from. The working directory is a scratch one: relative output paths (`--plot 0`) land there."""
    loaded = tiny_artifact.compiled
    scratch = cli_files["root"] / "cwd"
    scratch.mkdir(exist_ok=True)
    monkeypatch.chdir(scratch)

    def compile_stub(
        source: object, *, passes: str | None = None, calibration: object = None, verify: bool = True,
        stream: bool | None = None, allow_pickle: bool = False, progress: object = False, **options: object,
    ) -> None:
        CompileOptions(**options).check()
        resolve_model(source, allow_pickle=allow_pickle)
        if passes is not None:
            PassManager(passes)
        raise Reached("compile")

    def capture_stub(source: object, seq_len: int | None = None) -> None:
        resolve_model(source)
        raise Reached("capture")

    load_compiled = importlib.import_module("qeff_compiler.compiler").load_compiled  # the real one, before the stub

    def load_stub(path: Path, **kwargs: object) -> qc.CompiledModel:
        return loaded if Path(path) == cli_files["artifact"] else load_compiled(path, **kwargs)

    def plot_stub(simulation: object, path: Path) -> None:
        from qeff_compiler.atomic import atomic_write_text

        atomic_write_text(path, "png")

    # the commands import these when they run (`qeffc --help` loads none of them): stub them where they live
    modules = {name: importlib.import_module(f"qeff_compiler.{name}") for name in ("compiler", "evaluate", "tune")}
    monkeypatch.setattr(modules["compiler"], "compile", compile_stub)
    monkeypatch.setattr(sys.modules["qeff_compiler.capture"], "capture", capture_stub)
    monkeypatch.setattr(modules["compiler"], "load_compiled", load_stub)
    calibration = importlib.import_module("qeff_compiler.calibration")
    monkeypatch.setattr(calibration, "calibrate", lambda *args, **kwargs: (_ for _ in ()).throw(Reached("calibrate")))
    monkeypatch.setattr(modules["evaluate"], "Evaluator", lambda *args, **kwargs: (_ for _ in ()).throw(Reached("eval")))
    monkeypatch.setattr(modules["tune"], "tune", lambda *args, **kwargs: (_ for _ in ()).throw(Reached("tune")))
    monkeypatch.setattr(importlib.import_module("qeff_compiler.backends.ai100.plot"), "plot_simulation", plot_stub)
    # `qeffc serve` would listen until stopped (tests/test_serve.py runs the real server): stop where it would start
    for module, name in (("qeff_compiler.serve.server", "serve"), ("qeff_compiler.serve.ray_app", "run_ray")):
        monkeypatch.setattr(
            importlib.import_module(module), name, lambda *args, **kwargs: (_ for _ in ()).throw(Reached("serve"))
        )


def _command_params() -> dict[str, list[object]]:
    root = typer.main.get_command(cli.app)
    context = Context(root, info_name="qeffc")
    return {name: list(root.get_command(context, name).params) for name in root.list_commands(context)}


COMMAND_PARAMS = _command_params()
ALL_OPTIONS = sorted({o for ps in COMMAND_PARAMS.values() for p in ps for o in [*p.opts, *p.secondary_opts] if o.startswith("-")})
WORDS = [
    "tiny-mpt-pystdlib", "mpt-125m", "gpt-j-6b-shape", "no-such-model", "fp32", "fp16", "int8", "w8a8", "mxfp6",
    "mxint8", "none", "ai100-standard", "ai100-ultra", "ai100-max", "dce", "patch-attention,dce{x=1}",
    "kv-cache{ctx_len=16}", "1,2,3", "1,x", "def f(", "", " ", "-1", "0", "1", "2", "8", "24", "1e3", "0.5", "nan",
]
PATH_KEYS = ["model", "artifact", "file", "below-file", "notes", "fresh"]
Token = str | tuple[str]
JUNK = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)


def _value(param: object) -> st.SearchStrategy[Token]:
    """Values of the parameter's type: mostly plausible, sometimes absurd or of another type."""
    kind = param.bare_type()
    if kind == "int":
        typed = st.one_of(st.integers(-2, 40), st.integers(-(10**12), 10**12)).map(str)
    elif kind == "float":
        typed = st.one_of(st.floats(-1, 3, allow_nan=False).map(str), st.sampled_from(["0", "1", "nan", "inf", "-inf"]))
    elif kind == "Path":
        typed = st.sampled_from(PATH_KEYS).map(lambda key: (key,))
    else:
        typed = st.sampled_from([*WORDS, ("model",)])
    return st.one_of(*[typed] * 8, st.sampled_from(WORDS), JUNK)


@st.composite
def argument_lists(draw: st.DrawFn) -> list[Token]:
    """A command with (mostly) its positional argument and required options, some of its other options with
    values of their types, and now and then an option of another command, a wrong command or junk. Paths are
    placeholders `(key,)` filled from the fixture's files."""
    command = draw(st.sampled_from([*COMMAND_PARAMS, *COMMAND_PARAMS, *COMMAND_PARAMS, "frobnicate", "--help", ""]))
    tokens: list[Token] = [command] if command else []
    params = COMMAND_PARAMS.get(command, [])
    needed = [p for p in params if (p.param_type_name == "argument" or p.required) and draw(st.integers(0, 9))]
    optional = [p for p in params if p.param_type_name == "option" and not p.required]
    for param in needed + (draw(st.lists(st.sampled_from(optional), max_size=5)) if optional else []):
        if param.param_type_name == "argument":
            likely = ("artifact",) if param.name == "artifact" else draw(st.sampled_from([("model",), "mpt-125m"]))
            tokens.append(likely if draw(st.integers(0, 3)) else draw(_value(param)))
            continue
        tokens.append(draw(st.sampled_from([*param.opts, *param.secondary_opts])))
        if not param.is_flag:
            tokens.append(draw(_value(param)))
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 4)) == 0 else 0):
        tokens.insert(draw(st.integers(0, len(tokens))), draw(st.one_of(st.sampled_from(ALL_OPTIONS), JUNK)))
    return tokens


@FUZZ
@given(tokens=argument_lists())
def test_qeffc_arguments_exit_cleanly_with_one_line(
    tokens: list[Token], cli_files: dict[str, Path], stubbed_cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(cli_files[t[0]]) if isinstance(t, tuple) else t for t in tokens]
    capsys.readouterr()
    with no_hang(argv):
        code = cli.run(argv)
    out, err = capsys.readouterr()
    event(f"{tokens[0] if tokens else '(none)'}: exit {code}")
    assert code in (0, 1, 2, Reached.exit_code), (argv, code, err)
    assert "Traceback" not in out + err, argv
    assert err.count("\n") == (0 if code == 0 else 1), (argv, code, err)
    assert code == 0 or err.startswith("qeffc: error: "), (argv, err)
    assert cli_files["notes"].joinpath("keep.txt").is_file(), f"{argv} deleted a directory of other files"


# corrupted artifacts ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_artifact: TinyArtifact) -> tuple[Path, dict[str, bytes]]:
    """A copy of the shared artifact (this test changes its files) and the files' pristine bytes."""
    path = tmp_path_factory.mktemp("corrupt") / "artifact"
    shutil.copytree(tiny_artifact.artifact, path)
    qc.load_compiled(path)  # the pristine copy loads
    return path, {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@st.composite
def corruptions(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes]:
    """(file name, its corrupted content): one to three bit flips, a truncation, or an insertion."""
    name = draw(st.sampled_from(sorted(files)))
    data = bytearray(files[name])
    kind = draw(st.sampled_from(["flip", "truncate", "insert"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    else:
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return name, bytes(data)


def test_artifact_corruptions_are_refused_before_any_capture(
    saved_artifact: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, files = saved_artifact

    def decoding_reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("a corrupted artifact got past the checks to decoding its programs")

    # loading no longer captures: the first costly step after the checks is decoding the saved programs
    monkeypatch.setattr(artifact_module, "program_from_dict", decoding_reached)

    refused: list[str] = []

    @FUZZ
    @given(corruption=corruptions(files))
    def check(corruption: tuple[str, bytes]) -> None:
        name, data = corruption
        if data == files[name]:  # several flips can cancel out
            return
        (path / name).write_bytes(data)
        event(name)
        try:
            with no_hang(name), pytest.raises(ArtifactError):
                qc.load_compiled(path)
            refused.append(name)
        finally:
            (path / name).write_bytes(files[name])

    check()
    assert len(refused) >= 0.95 * EXAMPLES and set(refused) == set(files), (len(refused), sorted(set(refused)))
