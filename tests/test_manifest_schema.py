"""A manifest edited consistently (its own checksum recomputed) is validated, not trusted.

hypothesis mutates the manifest of a saved tiny artifact structurally — drops, renames or retypes a key anywhere
in the tree, adds file entries (names leaving the artifact, unknown files, the manifest itself), nests a value
deeply — and writes it back with a correct `manifest_sha256`. Loading must then either refuse it with an
`ArtifactError`, or give a model that generates exactly the tokens of the original artifact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qeff_compiler as qc
from qeff_compiler import artifact
from qeff_compiler.errors import ArtifactError, ArtifactPathError
from tests.conftest import TinyArtifact

PROMPTS = [[1, 2, 3, 4], [5, 6]]
NEW_TOKENS = 4
#: values of every JSON type, to retype a field with
OTHER_VALUES = st.sampled_from([None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}])
FILE_NAMES = st.sampled_from(
    ["../outside", "/etc/passwd", "sub/weights.safetensors", "extra.bin", "manifest.json", "..", "", "weights.safetensors/"]
)


@pytest.fixture(scope="module")
def original(tiny_artifact: TinyArtifact, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """A private copy of the artifact, its manifest without the checksum, and the original tokens."""
    directory = tmp_path_factory.mktemp("manifest-schema") / "artifact"
    shutil.copytree(tiny_artifact.artifact, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop(artifact.MANIFEST_CHECKSUM)
    tokens = qc.load_compiled(directory).generate(PROMPTS, NEW_TOKENS).new_tokens
    return directory, manifest, tokens


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) to a value inside the JSON tree, the root included."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            paths += _paths(item, (*prefix, index))
    return paths


def _parent(tree: Any, path: tuple) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


@st.composite
def mutations(draw: st.DrawFn, manifest: dict) -> tuple[Any, tuple | None, int]:
    """The manifest with one structural change (a deep copy: the original is untouched), and where to nest a
    value how deep (built when written: hypothesis would print a 200,000-deep value by recursion)."""
    tree = json.loads(json.dumps(manifest))
    kind = draw(st.sampled_from(["drop", "rename", "retype", "add-file", "nest"]))
    if kind == "add-file":
        name = draw(FILE_NAMES)
        tree["files"][name] = {"sha256": "0" * 64, "bytes": draw(st.integers(0, 10))}
        return tree, None, 0
    path = draw(st.sampled_from(_paths(tree)))
    if kind == "nest":
        return tree, path, draw(st.sampled_from([30, 3000, 200_000]))
    if kind == "retype":
        return _replace(tree, path, draw(OTHER_VALUES)), None, 0
    if path:
        parent = _parent(tree, path)
        if isinstance(parent, list) or kind == "drop":
            del parent[path[-1]]
        else:
            parent[draw(st.sampled_from(["renamed", path[-1] + "_", path[-1].upper(), ""]))] = parent.pop(path[-1])
    return tree, None, 0


def _replace(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _parent(tree, path)[path[-1]] = value
    return tree


MARKER = "@nested@"


def _write(directory: Path, tree: Any, nest: tuple | None, depth: int) -> None:
    """The manifest as `save_artifact` writes one, checksum recomputed; a value nested too deep for the JSON
    encoder is spliced into the text (the checksum then covers the marker: the depth must be refused first)."""
    if nest is not None:
        tree = _replace(tree, nest, MARKER)
    if nest is not None and depth <= 500:
        tree = json.loads(json.dumps(tree).replace(f'"{MARKER}"', "[" * depth + "]" * depth))
    text = artifact._manifest_text(tree) if isinstance(tree, dict) else json.dumps(tree, indent=2)
    (directory / "manifest.json").write_text(text.replace(f'"{MARKER}"', "[" * depth + "]" * depth))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_structurally_mutated_manifest_is_refused_or_changes_nothing(
    original: tuple[Path, dict, list], data: st.DataObject
) -> None:
    directory, manifest, tokens = original
    mutated, nest, depth = data.draw(mutations(manifest))
    _write(directory, mutated, nest, depth)
    try:
        loaded = qc.load_compiled(directory)
    except ArtifactError:
        return
    assert loaded.generate(PROMPTS, NEW_TOKENS).new_tokens == tokens


def test_a_listed_file_that_is_a_symbolic_link_is_refused(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    directory = tmp_path / "artifact"
    shutil.copytree(tiny_artifact.artifact, directory)
    outside = tmp_path / "outside.safetensors"
    (directory / "weights.safetensors").rename(outside)
    (directory / "weights.safetensors").symlink_to(outside)
    with pytest.raises(ArtifactPathError, match="weights.safetensors .* is a symbolic link"):
        qc.load_compiled(directory)
