"""The notebooks in notebooks/ run top to bottom in a fresh kernel on tiny data (each a minute or two on 2 CPU
cores), and are kept in git without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# What each notebook must show once run: text found in its outputs (a table's header, a metric's name).
EXPECTED = {
    "01_substructure_simulation_to_roc": ["macro AUC", "shipped", "model.safetensors"],
    "02_lens_finding_survey_metrics": ["TPR0", "TPR10", "confuser_kind", "image/png"],
    "03_bring_your_own_data": ["fits per band", "fine-tuned 1 epoch", "sha256"],
}


def test_every_notebook_is_listed_and_stored_without_outputs():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED)
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert code, path
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), \
            f"{path.name}: outputs committed; clear them (jupyter nbconvert --clear-output --inplace {path.name})"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev extra: pip install -e '.[dev]'")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    outputs = json.dumps([c.get("outputs", []) for c in notebook.cells if c.cell_type == "code"])
    for text in EXPECTED[path.stem]:
        assert text in outputs, f"{path.name}: {text!r} not in the outputs"
