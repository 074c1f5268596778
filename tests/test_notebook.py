"""notebooks/mpt_walkthrough.ipynb runs top to bottom (nbclient) and generates the token ids stored in it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "mpt_walkthrough.ipynb"
_TOKEN_IDS = re.compile(r"^token ids: (\[[0-9, ]*\])$", re.MULTILINE)


#: an absolute path of two or more components (`/home/me/x`, `/tmp/a/b`) at the start of a word
_ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=:])(/[\w.+-]+/[\w.+/-]*)")


def _output_texts(notebook: nbformat.NotebookNode) -> list[str]:
    texts = []
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        for output in cell.outputs:
            texts.append(output.get("text", "") + "".join(map(str, output.get("data", {}).values())))
            texts.append("\n".join(output.get("traceback", [])))
    return texts


def _absolute_paths(notebook: nbformat.NotebookNode) -> list[str]:
    """Machine paths in a notebook's outputs: where it was run must not be stored in the repository."""
    return [match for text in _output_texts(notebook) for match in _ABSOLUTE_PATH.findall(text)]


def test_stored_outputs_hold_no_absolute_paths() -> None:
    assert _absolute_paths(nbformat.read(NOTEBOOK, as_version=4)) == []
    leaked = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "stream", name="stderr", text="/home/me/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning")])])
    assert _absolute_paths(leaked) == ["/home/me/.venv/lib/python3.11/site-packages/tqdm/auto.py"]


def _token_ids(notebook: nbformat.NotebookNode) -> list[str]:
    texts = [o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    return [match for text in texts for match in _TOKEN_IDS.findall(text)]


@pytest.mark.e2e
def test_walkthrough_runs_and_reproduces_its_stored_token_ids(tmp_path: Path) -> None:
    stored = nbformat.read(NOTEBOOK, as_version=4)
    expected = _token_ids(stored)
    assert len(expected) == 1 and len(expected[0]) > 10, "the stored notebook shows its generated token ids"
    fresh = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(fresh, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert _token_ids(fresh) == expected
    errors = [o for c in fresh.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert _absolute_paths(fresh) == []  # a re-run stores no machine path either
