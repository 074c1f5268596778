"""notebooks/mpt_walkthrough.ipynb runs top to bottom (nbclient) and generates the token ids stored in it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "mpt_walkthrough.ipynb"
_TOKEN_IDS = re.compile(r"^token ids: (\[[0-9, ]*\])$", re.MULTILINE)


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
