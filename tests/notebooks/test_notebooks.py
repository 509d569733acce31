"""Every notebook in examples/ runs top to bottom against the emulator; each asserts its
own key results in its cells, so a notebook that stops teaching the truth fails here."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.optional import require_those_used_by

EXAMPLES = Path(__file__).parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_assertions_hold(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DASHSCOPE_"):
            monkeypatch.delenv(name)
    require_those_used_by(path.read_text(encoding="utf-8"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if "service_or_emulator" in path.read_text(encoding="utf-8"):
        first = next(o for o in outputs if o.output_type == "stream")
        assert "using the local emulator" in first.text  # never the real service in tests
