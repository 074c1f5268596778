"""Every code block of README.md and docs/*.md runs, or is checked against the real CLI.

- `python` blocks run, in order, one namespace per page (a later block continues an earlier one), in a temporary
  working directory. To stay in the test-time budget they run with four documented speed-ups that change no
  result shape: `qc.compile` skips the per-pass numeric re-checks unless the block passes `verify`
  (tests/test_pipeline.py covers them), `qc.evaluate` / `qc.calibrate` read at most 512 text tokens, and
  `CompiledModel.generate` makes at most 8 new tokens.
  The placeholder model directories `path/to/mpt` and `path/to/mpt-dir` become the shipped model's directory.
- `bash` / `sh` blocks: every `qeffc ...` command (split at `&&`) is parsed by the real typer/click command with
  type conversion, without running it (compiles, tunes and 7B work take minutes; the command lines are what the
  docs promise). Other commands are not run: README's set-up lines (`python3 -m venv`, `pip install`,
  `python -m pytest`) are the ones CI runs (tests/test_readme.py), and `sh out/qaic/compile.sh` needs the Cloud AI
  100 SDK. `curl` and the openai client blocks talk to a running `qeffc serve`, and `ray start` starts a cluster
  node: tests/test_serve.py starts a server (and a local Ray instance) and makes those calls.
- `text` and `json` blocks are output and file formats, not code.
- A block opts out only with a first line `# doc-test: skip (reason)`; `OPTED_OUT` lists every such block, so a
  new opt-out fails here until it is listed.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

import qeff_compiler as qc
from qeff_compiler.cli.main import app
from qeff_compiler.data import TINY_MPT
from qeff_compiler.passes import registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
SKIP = "# doc-test: skip"
#: (page, marker line) of every block that opts out
OPTED_OUT = {
    (
        "docs/qaic.md",
        "# doc-test: skip (a template: [...] marks optional flags; the SDK's compiler is not on this machine)",
    ),
    ("README.md", "# doc-test: skip (needs a running `qeffc serve`; tests/test_serve.py makes these client calls against a live server)"),
    ("docs/serving.md", "# doc-test: skip (needs a running `qeffc serve`; tests/test_serve.py makes these client calls against a live server)"),
}
PLACEHOLDERS = ("path/to/mpt-dir", "path/to/mpt")
#: shell commands of the docs that are not qeffc and are not run here (see the module docstring)
NOT_RUN = (
    "python3 -m venv", "pip install", "python -m pytest", "sh out/qaic/compile.sh", ". .venv/bin/activate",
    "curl ", "ray start",
)
TEXT_TOKENS, NEW_TOKENS = 512, 8


def blocks(page: Path, languages: tuple[str, ...]) -> list[str]:
    return [m["code"] for m in BLOCK.finditer(page.read_text()) if m["lang"] in languages]


def _opted_out(page: Path, code: str) -> bool:
    lines = code.splitlines()
    if not lines[0].startswith(SKIP):
        return False
    assert (str(page.relative_to(ROOT)), lines[0]) in OPTED_OUT, f"unlisted opt-out in {page}: {lines[0]}"
    return True


def test_every_opt_out_is_listed_and_exists() -> None:
    found = {
        (str(page.relative_to(ROOT)), code.splitlines()[0])
        for page in PAGES
        for code in blocks(page, ("python", "bash", "sh"))
        if code.startswith(SKIP)
    }
    assert found == OPTED_OUT


PYTHON_PAGES = [page for page in PAGES if any(not _opted_out(page, c) for c in blocks(page, ("python",)))]


@pytest.mark.e2e
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _speed_ups(monkeypatch)
    passes = dict(registry._PASSES)  # a page may register an example pass; the registry is restored after
    module = types.ModuleType(f"doc_{page.stem}")  # a real module: a dataclass in a block looks its module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    try:
        for number, code in enumerate(blocks(page, ("python",)), 1):
            if _opted_out(page, code):
                continue
            for placeholder in PLACEHOLDERS:
                code = code.replace(f'"{placeholder}"', repr(str(TINY_MPT)))
            exec(compile(code, f"{page.name} python block {number}", "exec"), namespace)  # noqa: S102
    finally:
        registry._PASSES.clear()
        registry._PASSES.update(passes)


def _speed_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented speed-ups: see the module docstring."""
    compile_model, evaluate, calibrate, generate = qc.compile, qc.evaluate, qc.calibrate, qc.CompiledModel.generate

    @functools.wraps(compile_model)
    def fast_compile(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("verify", False)
        return compile_model(*args, **kwargs)

    @functools.wraps(evaluate)
    def short_evaluate(*args: Any, max_tokens: int | None = None, **kwargs: Any) -> Any:
        return evaluate(*args, max_tokens=min(max_tokens or TEXT_TOKENS, TEXT_TOKENS), **kwargs)

    @functools.wraps(calibrate)
    def short_calibrate(*args: Any, max_tokens: int = TEXT_TOKENS, **kwargs: Any) -> Any:
        return calibrate(*args, max_tokens=min(max_tokens, TEXT_TOKENS), **kwargs)

    @functools.wraps(generate)
    def short_generate(self: Any, input_ids: Any, max_new_tokens: int = 32, **kwargs: Any) -> Any:
        return generate(self, input_ids, min(max_new_tokens, NEW_TOKENS), **kwargs)

    monkeypatch.setattr(qc.CompiledModel, "generate", short_generate)
    monkeypatch.setattr(qc, "compile", fast_compile)
    monkeypatch.setattr(qc, "evaluate", short_evaluate)
    monkeypatch.setattr(qc, "calibrate", short_calibrate)


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of every shell block, split at `&&` and line continuations."""
    commands = []
    for page in PAGES:
        for code in blocks(page, ("bash", "sh")):
            if _opted_out(page, code):
                continue
            for line in code.replace("\\\n", " ").splitlines():
                line = line.split("  #", 1)[0].strip()
                commands += [(page.name, part.strip()) for part in line.split("&&") if part.strip()]
    return commands


@pytest.mark.parametrize(("page", "command"), shell_commands())
def test_shell_commands_parse_against_the_cli(page: str, command: str) -> None:
    if not command.startswith("qeffc "):
        assert command.startswith(NOT_RUN), f"{page}: {command!r} is neither a qeffc command nor listed as not run"
        return
    group = get_command(app)
    args = shlex.split(command)[1:]
    with group.make_context("qeffc", list(args)) as context:  # parses, converts and checks every option value
        name, subcommand, rest = group.resolve_command(context, args)
        assert subcommand is not None and name is not None, command
        subcommand.make_context(name, rest, parent=context)


def test_readme_and_docs_have_python_and_shell_blocks() -> None:
    """The extraction sees the blocks (a changed fence style would silently test nothing)."""
    assert len(PYTHON_PAGES) >= 8
    assert sum(command.startswith("qeffc ") for _, command in shell_commands()) >= 4
