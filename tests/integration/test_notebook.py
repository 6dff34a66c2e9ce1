"""notebooks/compare_ablations.ipynb runs headless (nbclient) on a tiny real MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests.integration.test_compare import ARM_SHIFT, expected_records, make_store

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "notebooks" / "compare_ablations.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_executes_against_a_tiny_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = make_store(tmp_path, experiment="ablation")
    monkeypatch.setenv("CAUSALNEG_TRACKING_URI", uri)
    monkeypatch.setenv("CAUSALNEG_EXPERIMENT", "ablation")
    monkeypatch.setenv("CAUSALNEG_N_BOOTSTRAP", "200")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1
    table = tables[0]
    for arm in ARM_SHIFT:
        values = [r.metrics["test/ndcg@10"] for r in expected_records() if r.arm == arm]
        row = next(line for line in table.splitlines() if line.startswith(f"| {arm} | 2 |"))
        assert f"| {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} [" in row
    assert table.index("| mined_only |") < table.index("| causalneg |")  # baseline first
    assert "| causalneg | test/ndcg@10 | 40 | +0.05" in table
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # nDCG bar chart and shortcut panels (the fixture runs log no MI history)
