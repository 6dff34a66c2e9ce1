"""Fixtures of the fault suite: a pre-migrated MLflow store (creating one costs 5-10 s on a busy machine)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
    return path


@pytest.fixture
def seed_mlflow(mlflow_template: Path) -> Callable[[Path], Path]:
    """``seed_mlflow(root)`` puts an empty, migrated store where ``paths.root_dir=<root>`` looks for it."""

    def seed(root: Path) -> Path:
        target = root / "mlruns" / "mlflow.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, target)
        return root

    return seed
