"""The debug/ group: ``debug=default`` and ``debug=fdr`` compose over any arm and run the train and diagnose
stages quickly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest

from causalneg.artifacts import load_manifest
from causalneg.stages import dispatch
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("preset", ["mined_only", "grounded"])
def test_debug_composes_over_an_arm(preset: str, compose_cfg: Callable[..., Any]) -> None:
    cfg = compose_cfg([f"+experiment={preset}", "debug=fdr"])
    assert cfg.model.name == "tiny" and cfg.trainer.fast_dev_run is True and cfg.arm == preset
    assert cfg.data.max_train_queries == 32 and cfg.generation.limit == 4


def test_fast_dev_run_trains_and_evaluates(
    tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]
) -> None:
    overrides = [
        *tiny_overrides(tmp_path, tiny_beir),
        "debug=fdr",
        f"logger.tracking_uri=sqlite:///{tmp_path}/m.db",
    ]
    result = dispatch(compose_cfg(overrides))
    assert set(result["test"]) >= {"ndcg@10", "mrr@10"} and Path(result["model_dir"]).is_dir()
    # the run names the exact negatives it trained on: the fingerprints of the artifacts it read
    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db").get_run(result["run_id"]).data.tags
    mined = sorted((tmp_path / "artifacts" / "tiny" / "mined").iterdir())
    assert {tags["artifact.mined_train"], tags["artifact.mined_dev"]} == {
        load_manifest(d).fingerprint for d in mined
    }


def test_diagnose_embeds_without_an_optimizer(
    tmp_path: Path, tiny_beir: Path, compose_cfg: Callable[..., Any]
) -> None:
    """stage=diagnose builds an embedding-only system (the run's objective, no optimizer) on the debug settings."""
    overrides = [
        *tiny_overrides(tmp_path, tiny_beir),
        "debug=default",
        "stage=diagnose",
        f"logger.tracking_uri=sqlite:///{tmp_path}/m.db",
    ]
    result = dispatch(compose_cfg(overrides))
    assert isinstance(result["metrics"], dict)
    assert (tmp_path / "run" / "diagnostics.json").is_file()
