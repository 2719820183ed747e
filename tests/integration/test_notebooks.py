"""Shipped notebooks run end to end on CPU with their default (small, shipped) models.

The issue's budget is 5 minutes on 2 CPU cores; the time is printed, not asserted (timings are measured, never
asserted in tests), and a cell hanging for 10 minutes fails the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT_S = 600


@pytest.mark.parametrize("name", ["align_llava.ipynb"])
def test_notebook_executes(name, tmp_path, capsys):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    with capsys.disabled():
        print(f"\n{name}: executed in {time.monotonic() - start:.0f} s")
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "accuracy before:" in outputs and "accuracy after:" in outputs and "eval_rewards/accuracies" in outputs
    assert "shapes named after:" in outputs and "wrong -> right" in outputs  # what the accuracy change is made of
