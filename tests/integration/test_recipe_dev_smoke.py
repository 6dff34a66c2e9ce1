"""experiments/recipe_dev.py in its smoke mode (CI): tiny encoder, 8 queries, one arm, everything in a temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_recipe_dev_smoke(shared_data_dir: Path) -> None:
    env = dict(
        os.environ, CAUSALNEG_SHARED_DATA=str(shared_data_dir), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"
    )
    script = REPO / "experiments" / "recipe_dev.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--datasets", "scifact"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[recipe] scifact multi s0: dev ndcg@10" in done.stdout
    assert "| multi |" in done.stdout
