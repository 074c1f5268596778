"""README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands in README's 'Set up' section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands)


def test_ci_runs_readmes_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_dependencies_are_ranges_that_hold_the_tested_versions() -> None:
    """pyproject declares compatible ranges (no upper cap on Python below 3.13); constraints.txt pins the versions
    the suite runs with, each inside its range; README's install command keeps torch pinned to the CPU build."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains("3.12") and project["requires-python"].startswith(">=3.11")
    runtime = [Requirement(r) for r in project["dependencies"]]
    assert all(not any(s.operator == "==" for s in r.specifier) for r in runtime), runtime
    tested = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            tested[name] = version
    for requirement in [*runtime, *map(Requirement, project["optional-dependencies"]["test"])]:
        assert requirement.specifier.contains(tested[requirement.name]), (requirement, tested.get(requirement.name))
    assert "torch==2.13.0" in readme_commands()[0] and tested["torch"] == "2.13.0"
    assert "-c constraints.txt" in readme_commands()[1]
