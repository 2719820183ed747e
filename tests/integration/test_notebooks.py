"""Shipped notebooks run end to end on CPU with their default (tiny) models, each within its time budget."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
#: notebook -> wall-clock budget in seconds
BUDGETS = {"align_llava.ipynb": 300}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_notebook_executes(name, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=BUDGETS[name], kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.monotonic() - start < BUDGETS[name]
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "accuracy before:" in outputs and "accuracy after:" in outputs and "eval_rewards/accuracies" in outputs
