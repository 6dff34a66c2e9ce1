"""Config faults fail at start-up, before any model loads, naming the key: ``python run.py`` as a user runs it.

A missing required value (``???``) is caught by ``causalneg.config.check_required`` in ``dispatch`` before the
stage module is imported; an unknown preset, group option or key is refused by Hydra while composing. Either
way nothing is built: no MLflow store, no model cache, no artifacts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults import run_cli

pytestmark = pytest.mark.integration

CASES = {
    # name: (overrides, exit status, text that must appear on stderr)
    "missing_dataset_path": (
        ["dataset=beir"],
        2,
        "error: missing required config value(s): dataset.path (set them on the command line",
    ),
    "missing_generator_path": (
        ["stage=generate", "generation/model=hf"],
        2,
        "error: missing required config value(s): generation.model.path",
    ),
    "unknown_experiment": (["+experiment=nope"], 1, "Could not find 'experiment/nope'"),
    "unknown_model": (["model=nope"], 1, "Could not find 'model/nope'"),
    "unknown_key": (["data.batchsize=4"], 1, "Could not override 'data.batchsize'"),
    "unknown_stage": (["stage=nope"], 2, "error: unknown stage='nope'; choose one of: train, evaluate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_fault_fails_at_start_up_naming_the_key(case: str, tmp_path: Path) -> None:
    overrides, status, text = CASES[case]
    started = time.monotonic()
    done = run_cli(
        [f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", *overrides], timeout=120
    )
    elapsed = time.monotonic() - started
    assert done.returncode == status, done.stderr[-3000:]
    assert text in done.stderr
    assert "Traceback" not in done.stderr
    if status == 2:  # ours: exactly one line
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ")
    # Before any work: no MLflow store, no prepared model or cache, no artifacts (Hydra's run folder at most).
    assert {p.name for p in tmp_path.iterdir()} <= {"run"}
    # Start-up cost only (imports + composition; about 2-5 s on a quiet machine, generous for a busy one).
    assert elapsed < 60
