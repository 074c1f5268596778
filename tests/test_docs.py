"""docs/ matches the code: generated parts are current, every pass and CLI command is documented, links resolve."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import typer
from typer._click.core import Context

from qeff_compiler.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
#: Markdown links [text](target), not images; targets without spaces
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "tools" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/typing machinery looks modules up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _without_code_blocks(page.read_text()), flags=re.MULTILINE)
    return {_slug(h) for h in headings}


def _hand_written(text: str) -> str:
    return gen._REGION.sub("", text)


def test_generated_docs_are_up_to_date() -> None:
    stale = gen.stale_files()
    assert not stale, "generated docs are stale; run python tools/gen_cli_reference.py\n" + "\n\n".join(stale.values())


def test_the_check_detects_a_stale_page_and_write_repairs_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "cli.md").write_text((docs / "cli.md").read_text().replace("--ctx-len", "--context-length"))
    passes = docs / "passes.md"
    passes.write_text(passes.read_text().replace("### kv-cache\n", "### kv-cache (edited by hand)\n"))
    assert set(gen.stale_files(docs)) == {docs / "cli.md", passes}
    assert "--context-length" in gen.stale_files(docs)[docs / "cli.md"]
    assert set(gen.write(docs)) == {docs / "cli.md", passes}
    assert gen.stale_files(docs) == {}


def test_a_page_without_a_region_is_an_error(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "backend.md").write_text(gen._REGION.sub("", (docs / "backend.md").read_text()))
    with pytest.raises(gen.GenerationError, match="devices"):
        gen.expected_files(docs)


def test_every_registered_pass_has_a_section_with_options_and_ir_snippet() -> None:
    text = (DOCS / "passes.md").read_text()
    for name, cls in gen.product_passes().items():
        section = text.split(f"\n### {name}\n", 1)
        assert len(section) == 2, f"docs/passes.md has no section for pass {name}"
        body = section[1].split("\n### ", 1)[0]
        for field in getattr(cls.Options, "__dataclass_fields__", {}):
            assert f"`{field}`" in body, f"option {field} of {name} is not documented"
        _, snippet = gen.split_pass_docstring(sys.modules[cls.__module__])
        assert snippet.startswith("Before") and "After" in snippet, f"{cls.__module__} docstring lacks Before/After IR"
        assert snippet in body


def test_every_tolerance_a_pass_chooses_is_explained_by_hand() -> None:
    prose = _hand_written((DOCS / "passes.md").read_text())
    for name, cls in gen.product_passes().items():
        for attribute in vars(cls):
            if attribute.endswith("_tolerance"):
                assert f"`{attribute}`" in prose, f"{name}.{attribute} is not explained in docs/passes.md"


def test_every_cli_command_and_option_is_in_the_reference() -> None:
    text = (DOCS / "cli.md").read_text()
    root = typer.main.get_command(app)
    context = Context(root, info_name="qeffc")
    commands = gen._commands(root, context)
    assert {path.split()[-1] for path, _, _ in commands} >= set(root.list_commands(context))
    for path, command, ctx in commands:
        assert f"\n## {path}\n" in text, f"{path} is missing from docs/cli.md"
        for param in command.get_params(ctx):
            if not param.hidden and param.name != "help":
                assert f"`{param.get_help_record(ctx)[0]}`" in text, f"{path}: {param.name} is missing"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_point_to_existing_files_and_headings(page: Path) -> None:
    for target in LINK.findall(_without_code_blocks(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target!r} points to a missing file"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: link {target!r}: no such heading in {resolved.name}"


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"
